"""The wheel as `pip install .` builds it: the router's trigger table ships inside the
package, Slack and the MLflow client are core dependencies."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                        str(ROOT)], capture_output=True, text=True, timeout=600, cwd=out)
    assert r.returncode == 0, r.stderr
    (path,) = out.glob("sentinels-*.whl")
    return zipfile.ZipFile(path)


def test_the_trigger_table_ships_in_the_package(wheel):
    names = set(wheel.namelist())
    for manifest in (ROOT / "knative").glob("*.yaml"):
        assert f"sentinels/knative/{manifest.name}" in names
        assert wheel.read(f"sentinels/knative/{manifest.name}") == manifest.read_bytes()
    from sentinels.embedded import triggers

    assert triggers.knative_dir().resolve() == (ROOT / "knative").resolve()
    assert {t.function for t in triggers.load()} >= {"schedule", "on_job_event", "alert"}


def test_slack_and_the_mlflow_client_are_core_dependencies(wheel):
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    requires = [line.split(":", 1)[1].strip() for line in wheel.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("slack-sdk") for r in core) and any(r.startswith("mlflow-skinny") for r in core)
    assert any(r.startswith("mlflow>") and 'extra == "mlflow"' in r for r in requires)
