"""Routing and Slack message building (sentinels.domain.notify): pure, no I/O."""

import pytest

from sentinels.domain import job, notify, spec, states
from sentinels.domain.errors import ConfigError
from tests.fake_slack import block_problems

T0 = "2026-11-28T05:10:00.000Z"


def record(state=states.SUCCEEDED, *, owner="alice", team="vision", raw_spec=None, **extra):
    """A record that went through the real state machine: queued 05:10, running 05:13, ended 06:15:30."""
    s = spec.validate(raw_spec or {"image": "ghcr.io/acme/resnet:1.4", "name": "resnet", "command": ["python"]})
    s["priority"] = "high"
    r = job.new_record(job_id="ab2cd3ef4g", spec=s, who={"user": owner, "team": team}, klass="high", now=T0,
                       queue_seq=1)
    if state == states.CANCELLED and extra.pop("never_ran", False):
        return {**states.transition(r, states.CANCELLED, now="2026-11-28T05:20:00.000Z", reason="cancelled by alice"), **extra}
    r = states.transition(r, states.SCHEDULED, now="2026-11-28T05:12:30.000Z", reason="placed", node="node-1")
    r = states.transition(r, states.RUNNING, now="2026-11-28T05:13:00.000Z", reason="running")
    reason = {states.SUCCEEDED: "completed", states.FAILED: "exit code 3 (retries spent)",
              states.CANCELLED: "cancelled by alice"}[state]
    r = states.transition(r, state, now="2026-11-28T06:15:30.000Z", reason=reason)
    return {**r, **extra}


# --- configuration ---------------------------------------------------------------------
def test_config_defaults_and_full():
    assert notify.NotifyConfig.from_dict(None) == notify.NotifyConfig()
    cfg = notify.NotifyConfig.from_dict({
        "default_channel": "#general", "teams": {"vision": "#vision"}, "experiments": {"resnet*": "#resnet"},
        "mute_success": ["bob"], "on": ["failed"], "kibana_url": "https://kibana.example/app?q={job}",
        "capacity": {"after": "20m", "threshold": 0.9}})
    assert cfg.default_channel == "#general" and cfg.teams == {"vision": "#vision"}
    assert cfg.experiments == (("resnet*", "#resnet"),) and cfg.mute_success == {"bob"} and cfg.on == {"failed"}
    assert cfg.capacity.after_seconds == 1200 and cfg.capacity.threshold == 0.9


@pytest.mark.parametrize("raw, words", [
    ({"channels": {}}, "unknown key(s) channels"),
    ({"default_channel": "not a channel!"}, "default_channel"),
    ({"teams": {"vision": "# bad"}}, "teams.vision"),
    ({"teams": ["#x"]}, "teams must map"),
    ({"on": ["finished"]}, "on must be a list of succeeded, failed, cancelled"),
    ({"mute_success": [1]}, "mute_success"),
    ({"kibana_url": "javascript:alert(1)"}, "kibana_url must be an http(s) URL"),
    ({"capacity": {"threshold": 2}}, "threshold must be a fraction"),
    ({"capacity": {"after": "soon"}}, "not a duration"),
    ("#general", "expected a mapping"),
])
def test_config_errors_are_clear(raw, words):
    with pytest.raises(ConfigError) as e:
        notify.NotifyConfig.from_dict(raw)
    assert words in e.value.message and e.value.message.startswith(("notify configuration", "capacity alert"))


# --- routing ---------------------------------------------------------------------------
CFG = notify.NotifyConfig.from_dict({"default_channel": "#general", "teams": {"vision": "#vision"},
                                     "experiments": {"resnet*": "#resnet", "bert*": "#nlp"}, "mute_success": ["bob"]})


def test_route_team_and_experiment_channels_then_default():
    assert notify.route(record(), CFG) == ["#vision", "#resnet"]
    assert notify.route(record(team="nlp"), CFG) == ["#resnet"]
    other = {"image": "python:3.11", "name": "etl", "command": ["python"]}
    assert notify.route(record(team=None, raw_spec=other), CFG) == ["#general"]
    assert notify.route(record(team=None, raw_spec=other), notify.NotifyConfig()) == [""]  # the webhook's own channel


def test_route_states_mutes_and_job_override():
    assert notify.route(record(states.CANCELLED), CFG) == []  # cancelled is off by default
    assert notify.route(record(states.FAILED, owner="bob"), CFG) == ["#vision", "#resnet"]
    assert notify.route(record(owner="bob"), CFG) == []  # bob muted successes
    own = {"image": "python:3.11", "name": "resnet", "command": ["python"],
           "notify": {"channel": "#mine", "on": ["cancelled", "failed"]}}
    assert notify.route(record(states.CANCELLED, raw_spec=own), CFG) == ["#mine"]
    assert notify.route(record(states.SUCCEEDED, raw_spec=own), CFG) == []
    assert notify.route(record(states.SUCCEEDED, owner="bob", raw_spec={**own, "notify": {"channel": "#mine"}}), CFG) == []
    on_all = notify.NotifyConfig.from_dict({"default_channel": "#general", "on": ["cancelled"]})
    assert notify.route(record(states.CANCELLED, team=None), on_all) == ["#general"]


# --- job messages ----------------------------------------------------------------------
def fields_of(message) -> dict:
    section = next(b for b in message["blocks"] if b["type"] == "section" and "fields" in b)
    return dict(f["text"][1:].split("*\n", 1) for f in section["fields"])


def test_succeeded_message():
    r = record(links={"mlflow": "http://mlflow.example/#/experiments/1/runs/abc"}, attempts=1)
    cfg = notify.NotifyConfig.from_dict({"kibana_url": "https://kibana.example/app/discover?q=job:{job}",
                                         "grafana_url": "https://grafana.example/d/jobs?var-job={job}&from={missing}"})
    msg = notify.job_message(r, "2026-11-28T07:00:00.000Z", cfg)
    assert block_problems(msg["blocks"]) == []
    assert msg["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                                           "text": ":white_check_mark: resnet succeeded"}}
    f = fields_of(msg)
    assert f["Job"] == "`ab2cd3ef4g` resnet" and f["Owner"] == "alice (vision)" and f["State"] == "SUCCEEDED"
    assert f["Duration"] == "1h02m" and f["Time in queue"] == "2m30s" and f["Attempts"] == "1"
    links = [b["text"]["text"] for b in msg["blocks"] if b["type"] == "section" and "<http" in b.get("text", {}).get("text", "")]
    assert links == ["<http://mlflow.example/#/experiments/1/runs/abc|MLflow run> · "
                     "<https://kibana.example/app/discover?q=job:ab2cd3ef4g|Kibana logs>"]  # grafana lacks {missing}
    assert "Last log lines" not in str(msg["blocks"])
    assert msg["text"].startswith(":white_check_mark: resnet (ab2cd3ef4g) of alice succeeded: completed after 1h02m")
    assert "MLflow run: http://mlflow.example/#/experiments/1/runs/abc" in msg["text"]


def test_failed_message_keeps_the_newest_log_lines_within_slack_limits():
    tail = [f"step {i}: loss=nan <bad> & worse " + "x" * 80 for i in range(200)] + ["```Traceback```", "Error: boom"]
    msg = notify.job_message(record(states.FAILED, log_tail=tail, exit_code=3), "2026-11-28T07:00:00.000Z")
    assert block_problems(msg["blocks"]) == []
    logs = next(b["text"]["text"] for b in msg["blocks"] if "Last log lines" in str(b))
    assert len(logs) <= 3000 and logs.endswith("Error: boom```") and logs.count("```") == 2
    assert "step 199: loss=nan &lt;bad&gt; &amp; worse" in logs and "step 0:" not in logs
    assert fields_of(msg)["State"] == "FAILED (exit code 3)"
    assert any(b.get("text", {}).get("text") == "*Reason*\nexit code 3 (retries spent)" for b in msg["blocks"])


def test_log_block_with_one_huge_line_still_fits():
    msg = notify.job_message(record(states.FAILED, log_tail=["y" * 10_000]), "2026-11-28T07:00:00.000Z")
    assert block_problems(msg["blocks"]) == []


def test_cancelled_before_it_ran_has_no_duration():
    r = record(states.CANCELLED, never_ran=True)
    msg = notify.job_message(r, "2026-11-28T07:00:00.000Z")
    f = fields_of(msg)
    assert f["Duration"] == "never ran" and f["Time in queue"] == "10m00s"
    assert block_problems(msg["blocks"]) == []


def test_requeued_job_times_the_last_attempt():
    r = record(states.SUCCEEDED)
    r["timestamps"]["QUEUED"] = "2026-11-28T05:30:00.000Z"  # requeued after an eviction
    r["timestamps"]["SCHEDULED"] = "2026-11-28T05:31:00.000Z"
    r["timestamps"]["RUNNING"] = "2026-11-28T05:31:30.000Z"
    took, waited = notify.timings(r, "2026-11-28T07:00:00.000Z")
    assert (took, waited) == (44 * 60, 60)
    assert notify.timings({"state": "FAILED"}, "not a time") == (None, None)


def test_header_is_clipped_and_user_text_escaped():
    r = record(states.FAILED, reason="<!channel> " + "z" * 5000)
    msg = notify.job_message(r, "2026-11-28T07:00:00.000Z")
    assert block_problems(msg["blocks"]) == []
    assert "<!channel>" not in str(msg["blocks"]) and "&lt;!channel&gt;" in str(msg["blocks"])
    assert "<!channel>" not in msg["text"] and len(msg["text"]) <= 4000


def test_capacity_message():
    data = {"episode": "capacity-1800000000", "status": "exhausted", "waiting_for_room": 12,
            "summary": "12 jobs wait for GPUs; 0 of 16 GPUs free for 20 min; largest request 8",
            "allocated": {"gpu": {"used": 16, "total": 16, "free": 0, "text": "0 of 16 GPUs free"}}}
    msg = notify.capacity_message(data)
    assert block_problems(msg["blocks"]) == []
    assert msg["text"] == "Cluster capacity exhausted: 12 jobs wait for GPUs; 0 of 16 GPUs free for 20 min; largest request 8"
    assert "capacity-1800000000" in str(msg["blocks"][-1])
    assert notify.capacity_message({**data, "status": "recovered"})["text"].startswith("Cluster capacity recovered")
