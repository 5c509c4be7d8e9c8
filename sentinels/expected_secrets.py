"""Start-up check that the Kubernetes Secrets a function was deployed with are there.

The chart references every Secret as optional, so a missing one does not leave the pod in
CreateContainerConfigError without a word from sentinels: the function stops at start with
one line naming the Secret, the key it wanted and what it is for. The chart lists what to
expect in SENTINELS_EXPECT_SECRETS (JSON: [{"secret", "key", "env" | "file"}]; "A|B" in
`env` and `key` means either one will do). Unset (the embedded default): nothing to check.
"""

import json
import sys
from collections.abc import Mapping
from pathlib import Path

VARIABLE = "SENTINELS_EXPECT_SECRETS"


def missing(env: Mapping[str, str]) -> list[str]:
    """One sentence per expected Secret value that is absent (`env`: the process environment,
    as sentinels.settings read it)."""
    raw = env.get(VARIABLE)
    if not raw:
        return []
    try:
        wanted = json.loads(raw)
        assert isinstance(wanted, list) and all(isinstance(w, dict) and w.get("secret") for w in wanted)
    except (ValueError, AssertionError):
        return [f"{VARIABLE} is not a JSON list of {{secret, key, env|file}} (the chart writes it)"]
    problems = []
    for w in wanted:
        keys = " or ".join(str(w.get("key", "?")).split("|"))
        if "file" in w:
            present = Path(w["file"]).is_file()
        else:
            present = any(env.get(name) for name in str(w.get("env", "")).split("|"))
        if not present:
            problems.append(f"Secret {w['secret']!r} (key {keys}) is missing or empty in this namespace")
    return problems


def check(component: str, env: Mapping[str, str]) -> None:
    """Exit with one line on stderr when an expected Secret is missing (called at start-up)."""
    problems = missing(env)
    if problems:
        print(f"{component}: cannot start: {'; '.join(problems)}; create it (see the chart's NOTES) "
              "or set its name to \"\" in the chart values to run without it", file=sys.stderr)
        raise SystemExit(2)
