"""The platform's alerting rules and Alertmanager configuration, checked by the real tools:
`promtool check rules` / `promtool test rules` (Debian `prometheus`) and `amtool check-config`
(Debian `prometheus-alertmanager`). Skipped with the reason where the tools are absent."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm/sentinels/files/prometheus-rules.yaml"
RULE_TESTS = ROOT / "tests/prometheus/rules_test.yaml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pkg = "prometheus" if name == "promtool" else "prometheus-alertmanager"
        pytest.skip(f"{name} is not installed (Debian package {pkg}; .ci/run installs it)")
    return path


def run(*cmd, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rules_are_valid():
    r = run(tool("promtool"), "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout


def test_rules_fire_when_they_should():
    r = run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_broken_rule_test_fails(tmp_path):
    """The rule tests can fail: a wrong expectation is reported, not passed over."""
    text = RULE_TESTS.read_text().replace("rule_files:\n  - ../../helm", f"rule_files:\n  - {ROOT}/helm")
    (tmp_path / "t.yaml").write_text(text.replace("severity: critical, trigger: alert-on-failed",
                                                  "severity: info, trigger: alert-on-failed"))
    r = run(tool("promtool"), "test", "rules", str(tmp_path / "t.yaml"))
    assert r.returncode != 0 and "SentinelsDeadLettersGrowing" in r.stdout + r.stderr
