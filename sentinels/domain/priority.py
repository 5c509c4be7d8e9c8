"""Priority configuration: classes with values, default-class rules, and per-role caps.

Parsed once at start (`PriorityConfig.from_dict`) so a bad file fails loudly then, never
at first use. `resolve()` picks the class a submission gets, or says why it may not.
"""

import fnmatch
import re
from dataclasses import dataclass

from .errors import ConfigError, Forbidden, InvalidSpec

CLASS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RULE_KEYS = ("user", "team", "experiment", "name")
DEFAULT = {
    "classes": {"critical": 1000, "high": 100, "normal": 10, "low": 1},
    "default": "normal",
    "rules": [],
    "roles": {"admin": "critical", "user": "high"},
}


@dataclass(frozen=True)
class Rule:
    match: dict  # subset of RULE_KEYS -> glob
    klass: str

    def applies(self, who: dict, spec: dict) -> bool:
        facts = {"user": who.get("user"), "team": who.get("team"),
                 "experiment": spec.get("experiment"), "name": spec.get("name")}
        return all(facts[k] is not None and fnmatch.fnmatchcase(str(facts[k]), g) for k, g in self.match.items())


@dataclass(frozen=True)
class PriorityConfig:
    classes: dict  # name -> value
    default: str
    rules: tuple
    roles: dict  # role -> highest class it may ask for

    @classmethod
    def from_dict(cls, raw) -> "PriorityConfig":
        if raw is None:
            raw = DEFAULT
        if not isinstance(raw, dict):
            raise ConfigError("priority configuration: expected a mapping with classes, default, rules, roles")
        unknown = set(raw) - {"classes", "default", "rules", "roles"}
        if unknown:
            raise ConfigError(f"priority configuration: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        classes = raw.get("classes", DEFAULT["classes"])
        if not isinstance(classes, dict) or not classes:
            raise ConfigError("priority configuration: classes must be a non-empty mapping of name: value")
        for name, value in classes.items():
            if not isinstance(name, str) or not CLASS_NAME.match(name) or len(name) > 32:
                raise ConfigError(f"priority configuration: class name {name!r} must be a lowercase DNS label of at most 32 characters")
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"priority configuration: class {name!r} needs an integer value, got {value!r}")
        if len(set(classes.values())) != len(classes):
            raise ConfigError("priority configuration: two classes share a value; values must be distinct")
        default = raw.get("default", "normal" if "normal" in classes else min(classes, key=lambda k: classes[k]))
        if default not in classes:
            raise ConfigError(f"priority configuration: default class {default!r} is not one of {', '.join(classes)}")
        rules = []
        for i, r in enumerate(raw.get("rules") or []):
            if not isinstance(r, dict) or "class" not in r:
                raise ConfigError(f"priority configuration: rules[{i}] needs a class and at least one of {', '.join(RULE_KEYS)}")
            match = {k: v for k, v in r.items() if k != "class"}
            bad = set(match) - set(RULE_KEYS)
            if bad or not match:
                raise ConfigError(f"priority configuration: rules[{i}] may match only on {', '.join(RULE_KEYS)}")
            if r["class"] not in classes:
                raise ConfigError(f"priority configuration: rules[{i}] names unknown class {r['class']!r}")
            rules.append(Rule({k: str(v) for k, v in match.items()}, r["class"]))
        roles = raw.get("roles", DEFAULT["roles"]) or {}
        if not isinstance(roles, dict):
            raise ConfigError("priority configuration: roles must map a role to its highest class")
        for role, cap in roles.items():
            if cap not in classes:
                raise ConfigError(f"priority configuration: role {role!r} is capped at unknown class {cap!r}")
        return cls(dict(classes), default, tuple(rules), dict(roles))

    def ordered(self) -> list:
        """Class names, highest value first."""
        return sorted(self.classes, key=lambda k: self.classes[k], reverse=True)

    def cap_for(self, role: str) -> str:
        if role == "admin" and "admin" not in self.roles:
            return self.ordered()[0]
        return self.roles.get(role, self.default)

    def check_allowed(self, klass: str, who: dict) -> None:
        if klass not in self.classes:
            raise InvalidSpec(f"priority: unknown class {klass!r} (classes: {', '.join(self.ordered())})", "priority")
        cap = self.cap_for(who.get("role", "user"))
        if self.classes[klass] > self.classes[cap]:
            raise Forbidden(f"priority: role {who.get('role', 'user')!r} may ask for at most {cap!r}, not {klass!r}", "priority")

    def resolve(self, requested: str | None, who: dict, spec: dict) -> str:
        """The class for a submission: the one asked for, else the first matching rule, else the default."""
        if requested:
            self.check_allowed(requested, who)
            return requested
        for rule in self.rules:
            if rule.applies(who, spec):
                klass = rule.klass
                break
        else:
            klass = self.default
        cap = self.cap_for(who.get("role", "user"))
        return klass if self.classes[klass] <= self.classes[cap] else cap
