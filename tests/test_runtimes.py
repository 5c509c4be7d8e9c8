"""The runtime port's choices and the engine command line: no engine needed."""

import pytest

from sentinels.domain import errors
from sentinels.embedded import engine, runtimes


def test_the_command_line_carries_limits_gpus_labels_and_no_values(tmp_path):
    """GPUs cannot be exercised here (no GPU): the flags each engine gets for them are checked."""
    launch = runtimes.Launch(job_id="ckkkkkkkkk", generation=2, attempt=1, spec={
        "image": "127.0.0.1:5000/exp:1", "command": ["python", "train.py"], "args": ["--lr", "0.1"],
        "resources": {"cpu_millis": 1500, "memory_bytes": 2**30, "gpu": 2}, "outputs": "/out", "data": "/datasets/x"},
        env={"SECRET": "value", "CUDA_VISIBLE_DEVICES": "1,3"}, host_env={}, gpus=[1, 3], job_dir=tmp_path,
        log=tmp_path / "l", result=tmp_path / "r")
    cfg = runtimes.RuntimeConfig(runtime="podman", engine_options=(), insecure_registries=("127.0.0.1:5000",))
    argv = engine.EngineRuntime("podman", cfg).argv(launch)
    joined = " ".join(argv)
    assert "--device nvidia.com/gpu=1 --device nvidia.com/gpu=3" in joined and "--cpus 1.5" in joined
    assert f"--memory {2**30}" in joined and "--label sentinels.io/attempt=2" in joined
    assert "--label sentinels.io/job-id=ckkkkkkkkk" in joined and "--tls-verify=false" in joined
    assert "-v /datasets/x:/datasets/x:ro" in joined and f"-v {tmp_path}/outputs:/out:rw" in joined
    assert argv[-6:] == ["--entrypoint", "python", "127.0.0.1:5000/exp:1", "train.py", "--lr", "0.1"]
    assert "value" not in joined and "--env SECRET" in joined and "CUDA_VISIBLE_DEVICES" not in joined
    docker = engine.EngineRuntime("docker", runtimes.RuntimeConfig(runtime="docker")).argv(launch)
    assert "--gpus device=1,3" in " ".join(docker) and "--tls-verify=false" not in docker


def test_naming_an_absent_engine_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    engine.probe.cache_clear()
    try:
        with pytest.raises(errors.ConfigError, match="local.runtime: docker does not answer"):
            runtimes.select(runtimes.RuntimeConfig(runtime="docker"))
        assert runtimes.select(runtimes.RuntimeConfig(runtime="auto")).name == "process"
    finally:
        engine.probe.cache_clear()
    assert runtimes.RuntimeConfig.from_dict({"runtime": "podman"}, env={}).runtime == "podman"
    assert runtimes.RuntimeConfig.from_dict({"runtime": "podman"}, env={"SENTINELS_RUNTIME": "process"}).runtime == "process"
    with pytest.raises(errors.ConfigError, match="local.runtime must be one of"):
        runtimes.RuntimeConfig.from_dict({"runtime": "lxc"}, env={})


def test_up_refuses_a_named_engine_that_is_not_there_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "config.yaml").write_text("local: {runtime: docker}\n")
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "PATH": os.path.dirname(sys.executable)}
    env.pop("SENTINELS_RUNTIME", None)
    r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "sentinels: up: local.runtime: docker does not answer (docker is not installed)"
    assert not (tmp_path / "run" / "up.pid").exists()
