"""The test map (tests/README.md) names a test for every module, and only tests that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_has_its_tests_listed():
    rows = [line for line in (ROOT / "tests" / "README.md").read_text().splitlines() if line.startswith("| `")]
    listed, tests = set(), set()
    for row in rows:
        modules, named = row.split("|")[1:3]
        listed |= set(re.findall(r"`([^`]+)`", modules))
        tests |= set(re.findall(r"`([^`]+)`", named))
    modules = {str(p.relative_to(ROOT)) for d in ("sentinels", "functions", "cli") for p in (ROOT / d).rglob("*.py")
               if p.name != "__init__.py"}
    assert modules <= listed, f"add to tests/README.md where these are tested: {sorted(modules - listed)}"
    assert listed <= modules, f"tests/README.md lists modules that are gone: {sorted(listed - modules)}"
    missing = sorted(t for t in tests if not (ROOT / "tests" / t).exists())
    assert not missing, f"tests/README.md names test files that do not exist: {missing}"
