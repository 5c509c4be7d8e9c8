"""The configuration module: every config.yaml section parsed once into its typed object,
all of them checked by `sentinels up` before it starts anything, the environment read there."""

import re
from pathlib import Path

import pytest
import yaml

from sentinels.domain.errors import ConfigError
from sentinels.domain.lifecycle import LifecycleConfig
from sentinels.domain.scheduler_config import SchedulerConfig
from sentinels.embedded import supervisor
from sentinels.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def settings(tmp_path, config=None, **env) -> Settings:
    if config is not None:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return Settings.load({"SENTINELS_HOME": str(tmp_path), **env})


def test_sections_are_typed_and_parsed_once(tmp_path):
    s = settings(tmp_path, {"scheduler": {"tick": "1m", "window": 50},
                            "lifecycle": {"max_attempts": 5, "outputs_root": "/outputs"}})
    sched, life = s.scheduler(), s.lifecycle()
    assert isinstance(sched, SchedulerConfig) and (sched.tick_seconds, sched.window) == (60.0, 50)
    assert isinstance(life, LifecycleConfig) and (life.policy.max_attempts, life.outputs_root) == (5, "/outputs")
    assert s.scheduler() is sched and s.lifecycle() is life and s.priorities() is s.priorities()
    assert s.tick() == 60.0
    s.validate()


@pytest.mark.parametrize("config, message", [
    ({"lifecycle": {"max_attempt": 5}}, "lifecycle: unknown key(s) max_attempt"),
    ({"lifecycle": {"max_attempts": "many"}}, "must be numbers"),
    ({"lifecycle": ["max_attempts"]}, "configuration: lifecycle must be a mapping"),
    ({"scheduler": {"tick": 0}}, "scheduler: tick must be more than 0 seconds"),
    ({"scheduler": {"tick": "often"}}, "scheduler: scheduler.tick: 'often' is not a duration"),
    ({"scheduler": {"strategy": "Fastest"}}, "scheduler: strategy must be one of"),
    ({"backend": "kubernetes", "kubernetes": {"namespace": "Bad_Name"}}, "kubernetes"),
    ({"limits": {"cpu": "lots"}}, "configuration: bad limits"),
])
def test_up_refuses_a_bad_section_before_starting(tmp_path, config, message):
    with pytest.raises(ConfigError) as caught:
        supervisor.check_config(settings(tmp_path, config))
    assert message in caught.value.message


def test_environment_is_read_through_the_settings(tmp_path):
    s = settings(tmp_path, {"nats_sync": "always"}, SENTINELS_TICK="2.5", K_SINK="http://broker/x",
                 SENTINELS_KNATIVE_DIR=str(tmp_path), SENTINELS_USER="carol", SLACK_WEBHOOK_URL="https://hooks/x",
                 SLACK_CHANNEL="#ops")
    assert (s.tick(), s.broker_url(), s.knative_dir(), s.user()) == (2.5, "http://broker/x", tmp_path, "carol")
    assert s.slack_env() == {"SLACK_WEBHOOK_URL": "https://hooks/x"}
    assert s.notify().default_channel == "#ops"
    assert s.nats_sync() == "always"
    with pytest.raises(ConfigError, match="SENTINELS_TICK"):
        settings(tmp_path, SENTINELS_TICK="soon").tick()


ENV_READERS = {  # modules that may touch os.environ, and why
    "sentinels/settings.py": "the configuration module itself",
    "sentinels/embedded/supervisor.py": "passes its environment on to the processes it starts",
    "sentinels/embedded/natsd.py": "passes its environment on to nats-server",
    "sentinels/adapters/jetstream.py": "the NATS credentials file the supervisor gives each process it starts",
    "sentinels/embedded/serve.py": "the stack's internal token file the supervisor gives each function",
    "sentinels/embedded/machine.py": "SENTINELS_RUN_AS: who runs the jobs, read where the capacity is built",
    "sentinels/embedded/kubelet.py": "passes PATH, HOME and the like on to local jobs",
    "sentinels/embedded/builder.py": "passes PATH, HOME and the like on to image builds",
    "sentinels/adapters/mlflow_tracker.py": "MLflow reads its HTTP timeout from the environment only",
    # NATS credentials and internal tokens handed to each child by the supervisor; to move into Settings
    "sentinels/adapters/jetstream.py": "the process's NATS credentials file (SENTINELS_NATS_CREDENTIALS)",
    "cli/client.py": "the CLI's NATS credentials file",
    "sentinels/embedded/serve.py": "the internal token file a function checks",
    "sentinels/embedded/router.py": "retry settings default to the process environment",
    "sentinels/embedded/machine.py": "the job user defaults to the process environment",
}


def test_no_other_module_reads_the_environment():
    readers = {str(p.relative_to(ROOT)) for d in ("sentinels", "functions", "cli") for p in (ROOT / d).rglob("*.py")
               if re.search(r"\bos\.(environ|getenv)\b|\bgetenv\(", p.read_text())}
    assert readers <= set(ENV_READERS), f"read the environment through sentinels.settings: {readers - set(ENV_READERS)}"
