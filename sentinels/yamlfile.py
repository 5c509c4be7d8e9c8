"""The one YAML reader for every file a user writes: job specs, `config.yaml`, priorities, tokens.

PyYAML speaks YAML 1.1, where a bare `on`, `off`, `yes` or `no` is a boolean, so the
README's own `notify: {on: [failed]}` became the key `True` and was refused. Here:

* booleans are YAML 1.2's (`true` / `false` in any of its three spellings) and `on`, `yes`…
  stay strings; timestamps stay strings too (a job's configuration travels as JSON);
* a key given twice in one mapping is an error (YAML says so; PyYAML lets the last win);
* tags that would construct objects (or bytes, sets) are refused: what is read is JSON's data;
* every error names the source, line and column, on one line.
"""

import re

import yaml

_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DROP = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"}
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class YamlError(ValueError):
    """A YAML text sentinels will not read; `message` is one line naming where and why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _where(source: str, mark) -> str:
    if mark is None:
        return source
    return f"{source}: line {mark.line + 1}, column {mark.column + 1}"


class _Loader(_BASE):  # type: ignore[misc, valid-type]
    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _DROP]
        for first, resolvers in _BASE.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (each key may appear once)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


for _first in "tTfF":
    _Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, [_first])


def _refuse(loader, node):
    raise yaml.constructor.ConstructorError(
        None, None, f"could not determine a constructor for the tag {node.tag!r}", node.start_mark)


for _tag in ("binary", "set", "omap", "pairs", "timestamp"):  # nothing JSON could carry on
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)


def _message(e: yaml.YAMLError, source: str) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        problem = e.problem or e.context or "syntax error"
        if "could not determine a constructor" in problem:
            tag = problem.split("tag", 1)[-1].strip().strip("'").replace("tag:yaml.org,2002:", "!!")
            problem = f"the tag {tag} would construct an object (YAML tags that construct objects are not allowed)"
        return f"{_where(source, e.problem_mark or e.context_mark)}: not valid YAML: {problem}"
    return f"{source}: not valid YAML ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def parse(text: str | bytes, source: str = "<yaml>"):
    """The one document in `text` as plain data (dict, list, str, int, float, bool, None)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise YamlError(_message(e, source)) from None
    except UnicodeDecodeError:
        raise YamlError(f"{source}: not a UTF-8 text file") from None


def parse_all(text: str | bytes, source: str = "<yaml>") -> list:
    """Every document in a multi-document text (`---` separated), Nones dropped."""
    try:
        return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as e:
        raise YamlError(_message(e, source)) from None
    except UnicodeDecodeError:
        raise YamlError(f"{source}: not a UTF-8 text file") from None


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter: six times faster


def dump(data) -> str:
    """`data` as YAML, keys in their order (the job config every launch writes: the C
    emitter when PyYAML has it, the same text as `yaml.safe_dump`)."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)
