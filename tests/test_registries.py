"""Registry credentials by registry host: the `registries:` block and SENTINELS_REGISTRY_AUTH
checked at start-up (bad inputs name their key), the imagePullSecrets a Kubernetes Job gets
(exactly the one of its image's registry, never one the job names), the Secret a cluster
build pushes with, and the auth file the local engine is given."""

import base64
import json

import kubernetes_validate
import pytest

from sentinels.adapters import build_manifest
from sentinels.adapters.kube_manifest import KubeConfig, job_objects
from sentinels.domain import build
from sentinels.domain.errors import ConfigError, InvalidSpec
from sentinels.domain.registries import Registries, auth_hosts, registry_host
from sentinels.domain.spec import validate
from sentinels.embedded import engine, runtimes, supervisor
from tests.test_builds import record as build_record
from tests.test_kube_manifest import make_record
from tests.test_local_executor import make_record as local_record
from tests.test_settings import settings

PASSWORD = "hunter2-registry-password"


def auth_text(*hosts, user="bot", password=PASSWORD) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {h: {"auth": token} for h in hosts}})


def auth_file(path, *hosts, mode=0o600):
    path.write_text(auth_text(*hosts))
    path.chmod(mode)
    return path


@pytest.mark.parametrize("image,host", [
    ("python:3.11", "docker.io"), ("library/python", "docker.io"), ("acme/train:1", "docker.io"),
    ("docker.io/acme/train:1", "docker.io"), ("index.docker.io/acme/x", "docker.io"),
    ("ghcr.io/acme/resnet:1.4", "ghcr.io"), ("127.0.0.1:5000/x:1", "127.0.0.1:5000"),
    ("localhost/sentinels/x:abc", "localhost"), ("Registry.Example.COM/a/b@sha256:" + "0" * 64, "registry.example.com"),
])
def test_the_registry_of_an_image_follows_dockers_rule(image, host):
    assert registry_host(image) == host


# --- bad input: start-up refuses with the key named -----------------------------------------

@pytest.mark.parametrize("raw,words", [
    ({"ghcr.io": {}}, "registries.ghcr.io: needs a secret"),
    ({"ghcr.io": {"teams": ["vision"]}}, "registries.ghcr.io: needs a secret"),
    ({"ghcr.io": {"secret": "Acme_Pull"}}, "registries.ghcr.io.secret: 'Acme_Pull' is not a DNS-1123 name"),
    ({"ghcr.io": {"secret": "-pull"}}, "registries.ghcr.io.secret: '-pull' is not a DNS-1123 name"),
    ({"ghcr.io": {"secret": "x" * 254}}, "registries.ghcr.io.secret"),
    ({"ghcr.io": {"secret": 7}}, "registries.ghcr.io.secret: 7 is not a DNS-1123 name"),
    ({"ghcr.io": {"secret": "pull", "password": "x"}}, "registries.ghcr.io: unknown key(s) password"),
    ({"ghcr.io": "pull"}, "registries.ghcr.io: expected a mapping"),
    ({"https://ghcr.io": {"secret": "pull"}}, "registries.https://ghcr.io: 'https://ghcr.io' is not a registry host"),
    ({"ghcr.io": {"secret": "a"}, "GHCR.io": {"secret": "b"}}, "configured twice"),
    ({"ghcr.io": {"secret": "a", "teams": "vision"}}, "registries.ghcr.io.teams"),
    (["ghcr.io"], "registries must map a registry host"),
])
def test_a_bad_registries_block_names_the_key(raw, words):
    with pytest.raises(ConfigError) as caught:
        Registries.from_dict(raw)
    assert words in caught.value.message


@pytest.mark.parametrize("text,words", [
    ("{auths: }", "does not parse as an auth file (JSON"),
    ("[]", "expected a JSON object"),
    ('{"auths": []}', "must be objects"),
    ('{"auths": {"ghcr.io": "x"}}', "auths.ghcr.io must be an object"),
    ('{"auths": {"ghcr.io": {"auth": "not base64!"}}}', "auths.ghcr.io.auth is not base64 of user:password"),
    ('{"auths": {"ghcr.io": {"auth": "' + base64.b64encode(b"nocolon").decode() + '"}}}', "not base64 of user:password"),
    ('{"auths": {"ghcr.io": {}}}', "auths.ghcr.io has no auth"),
    ('{"auths": {}}', "holds no credentials"),
])
def test_an_auth_file_that_does_not_parse_is_refused_without_quoting_it(text, words):
    with pytest.raises(ConfigError) as caught:
        auth_hosts(text, "registries.ghcr.io.auth_file /x/auth.json")
    assert words in caught.value.message and "registries.ghcr.io.auth_file" in caught.value.message


def test_auth_file_hosts_are_normalised():
    text = json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"u:p").decode()},
                                 "ghcr.io/acme": {"identitytoken": "t"}}, "credHelpers": {"gcr.io": "gcloud"}})
    assert auth_hosts(text, "x") == {"docker.io", "ghcr.io", "gcr.io"}


@pytest.mark.parametrize("case", ["bad-json", "missing-host", "unreadable", "env-bad", "no-secret", "bad-secret"])
def test_up_refuses_bad_registry_settings_with_the_key_named(tmp_path, case):
    home = tmp_path / "home"
    home.mkdir()
    good = auth_file(tmp_path / "auth.json", "ghcr.io")
    (tmp_path / "bad.json").write_text("{not json")
    config, env, words = {"registries": {"ghcr.io": {"auth_file": str(good)}}}, {}, ""
    if case == "bad-json":
        config["registries"]["ghcr.io"]["auth_file"] = str(tmp_path / "bad.json")
        words = "registries.ghcr.io.auth_file"
    elif case == "missing-host":
        config["registries"]["quay.io"] = {"auth_file": str(good)}
        words = "registries.quay.io.auth_file"
    elif case == "unreadable":
        config["registries"]["ghcr.io"]["auth_file"] = str(tmp_path / "nowhere.json")
        words = "registries.ghcr.io.auth_file"
    elif case == "env-bad":
        env["SENTINELS_REGISTRY_AUTH"] = str(tmp_path / "bad.json")
        words = "SENTINELS_REGISTRY_AUTH"
    elif case == "no-secret":
        config["registries"]["quay.io"] = {"teams": ["vision"]}
        words = "registries.quay.io: needs a secret"
    else:
        config = {"backend": "kubernetes", "registries": {"ghcr.io": {"secret": "Pull_Secret"}}}
        words = "registries.ghcr.io.secret"
    with pytest.raises(ConfigError) as caught:
        supervisor.check_config(settings(home, config, SENTINELS_RUNTIME="process", **env))
    assert words in caught.value.message
    assert PASSWORD not in caught.value.message


def test_an_auth_file_others_can_read_is_warned_at_start_and_its_content_never_shown(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    private = auth_file(tmp_path / "private.json", "ghcr.io")
    shared = auth_file(tmp_path / "shared.json", "quay.io", mode=0o644)
    s = settings(home, {"registries": {"ghcr.io": {"auth_file": str(private), "secret": "ghcr-pull"}}},
                 SENTINELS_RUNTIME="process", SENTINELS_REGISTRY_AUTH=str(shared))
    notes = supervisor.check_config(s)
    assert "registry credentials: ghcr.io; other hosts from " + str(shared) in notes
    warnings = [n for n in notes if n.startswith("warning:")]
    assert warnings == [f"warning: the registry auth file {shared} is readable by other users (mode 0644); "
                        f"chmod 600 {shared}"]
    assert not any(PASSWORD in n or base64.b64encode(f"bot:{PASSWORD}".encode()).decode() in n for n in notes)
    regs = s.registries()
    assert regs.auth_file_for("ghcr.io/acme/x:1") == str(private)
    assert regs.auth_file_for("quay.io/acme/x:1") == str(shared)  # any other host: SENTINELS_REGISTRY_AUTH
    assert s.kubernetes().registries is regs


# --- Kubernetes: the platform picks the Secret by registry host -----------------------------

REGISTRIES = {"ghcr.io": {"secret": "ghcr-pull"}, "registry.vision.internal:5000": {"secret": "vision-pull",
                                                                                   "teams": ["vision"]},
              "docker.io": {"secret": "hub-pull"}, "nlp.registry.internal": {"secret": "nlp-pull", "teams": ["nlp"]}}


def pull_secrets_of(image, cfg=None, team="vision"):
    cfg = cfg or KubeConfig(namespace="ml", registries=Registries.from_dict(REGISTRIES))
    record = dict(make_record(image=image), team=team)
    _, job = job_objects(record, {}, cfg)
    kubernetes_validate.validate(job, "1.31", strict=True)
    return [s["name"] for s in job["spec"]["template"]["spec"].get("imagePullSecrets", [])]


@pytest.mark.parametrize("image,team,secrets", [
    ("ghcr.io/acme/resnet:1.4", "vision", ["ghcr-pull"]),
    ("registry.vision.internal:5000/resnet:2", "vision", ["vision-pull"]),
    ("python:3.11", "vision", ["hub-pull"]),
    ("quay.io/acme/x:1", "vision", []),  # no credentials configured for that host
    ("nlp.registry.internal/bert:1", "vision", []),  # kept for team nlp: vision's jobs do not get it
    ("nlp.registry.internal/bert:1", "nlp", ["nlp-pull"]),
])
def test_a_job_gets_exactly_the_secret_of_its_registry(image, team, secrets):
    assert pull_secrets_of(image, team=team) == secrets


def test_secrets_for_every_job_come_after_the_registrys_own_without_repeats():
    cfg = KubeConfig(namespace="ml", image_pull_secrets=("mirror-pull", "ghcr-pull"),
                     registries=Registries.from_dict(REGISTRIES))
    assert pull_secrets_of("ghcr.io/acme/resnet:1.4", cfg) == ["ghcr-pull", "mirror-pull"]


@pytest.mark.parametrize("key", ["image_pull_secrets", "imagePullSecrets", "registry_secret", "secret"])
def test_a_job_spec_cannot_name_a_secret(key):
    with pytest.raises(InvalidSpec) as caught:
        validate({"image": "ghcr.io/acme/resnet:1.4", key: ["other-teams-pull"]})
    assert key in caught.value.message


def test_a_cluster_build_pushes_with_the_secret_of_its_registry():
    cfg = KubeConfig(namespace="ml", registries=Registries.from_dict({"registry.vision.internal:5000": {
        "secret": "vision-push"}}))
    job = build_manifest.build_job(build_record(), build.BuildConfig(registry="registry.vision.internal:5000/ml"), cfg)
    kubernetes_validate.validate(job, "1.31", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert {"name": "registry-auth", "secret": {"secretName": "vision-push", "defaultMode": 0o444, "items": [
        {"key": ".dockerconfigjson", "path": "config.json"}]}} in pod["volumes"]
    assert {"name": "registry-auth", "mountPath": "/home/user/.docker", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]
    other = build_manifest.build_job(build_record(), build.BuildConfig(registry="ghcr.io/acme"), cfg)
    assert "registry-auth" not in json.dumps(other)


# --- local engines: the auth file of the image's host, by path only --------------------------

def engine_runtime(name, regs):
    cfg = runtimes.RuntimeConfig(runtime=name, engine_options=(), registries=regs)
    return engine.EngineRuntime(name, cfg)


def test_podman_gets_the_auth_file_of_the_images_host_and_docker_its_directory(tmp_path):
    vision = auth_file(tmp_path / "vision.json", "registry.vision.internal:5000")
    default = auth_file(tmp_path / "config.json", "ghcr.io")
    regs = Registries.from_dict({"registry.vision.internal:5000": {"auth_file": str(vision), "teams": ["vision"]}},
                                str(default))
    podman = engine_runtime("podman", regs)
    assert podman.pull_options("registry.vision.internal:5000/resnet:2", "vision") == ["--authfile", str(vision)]
    assert podman.pull_options("registry.vision.internal:5000/resnet:2", "nlp") == []  # kept for vision
    assert podman.pull_options("ghcr.io/acme/x:1", "nlp") == ["--authfile", str(default)]
    assert podman.pull_env("ghcr.io/acme/x:1") == {}
    launch = runtimes.Launch(job_id="ab2cd3ef4g", generation=1, attempt=1,
                             spec=dict(local_record("ab2cd3ef4g", ["true"])["spec"], image="ghcr.io/acme/x:1"),
                             env={}, host_env={}, gpus=[], job_dir=tmp_path, log=tmp_path / "log",
                             result=tmp_path / "exit", team="vision")
    argv = podman.argv(launch)
    assert argv[argv.index("--authfile") + 1] == str(default) and PASSWORD not in " ".join(argv)
    with pytest.raises(ConfigError, match="name the auth file .*vision.json config.json"):
        engine_runtime("docker", regs)
    docker = engine_runtime("docker", Registries(default_auth_file=str(default)))
    assert docker.pull_env("ghcr.io/acme/x:1") == {"DOCKER_CONFIG": str(tmp_path)}
    assert docker.pull_options("ghcr.io/acme/x:1") == []


# --- submit: a job of another team is refused before anything is written --------------------

async def test_a_registry_kept_for_a_team_refuses_other_teams_jobs_at_submit():
    from sentinels.functions.submit.service import SubmitService
    from sentinels import clock
    from sentinels.adapters.memory import MemoryHistory, MemoryJobs, MemoryQueue, MemorySink
    from sentinels.domain.errors import Forbidden
    from sentinels.domain.priority import PriorityConfig
    from sentinels.domain.spec import Limits

    jobs, queue = MemoryJobs(), MemoryQueue()
    svc = SubmitService(jobs, queue, MemoryHistory(), MemorySink(), PriorityConfig.from_dict(None), Limits(),
                        clock.now_iso, registries=Registries.from_dict(REGISTRIES))
    nlp = {"user": "bob", "team": "nlp", "role": "user"}
    vision = {"user": "alice", "team": "vision", "role": "user"}
    spec = {"image": "registry.vision.internal:5000/resnet:2", "command": ["true"]}
    with pytest.raises(Forbidden) as caught:
        await svc.submit({"spec": spec}, nlp, "t", "e1")
    assert caught.value.message == ("image: the registry registry.vision.internal:5000 is kept for team(s) vision; "
                                    "your team is nlp")
    with pytest.raises(Forbidden):  # every member of a sweep is checked too
        await svc.submit({"spec": spec, "sweep": {"lr": [0.1, 0.2]}}, nlp, "t", "e2")
    assert jobs.data == {} and queue.entries == {}  # nothing written
    status, record = await svc.submit({"spec": spec}, vision, "t", "e3")
    assert status == 201 and record["team"] == "vision"
    status, _ = await svc.submit({"spec": dict(spec, image="ghcr.io/acme/x:1")}, nlp, "t", "e4")
    assert status == 201  # a host without teams: anyone
