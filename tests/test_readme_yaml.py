"""Every YAML example in README.md is accepted as written by the parser it belongs to.

Blocks are told apart by their top-level keys: a job spec has `image`, a priority
configuration `classes`, a tokens file `users`; anything else is (part of) `config.yaml`,
whose referenced files (priorities, tokens) are the README's own examples.
"""

import re
from pathlib import Path

import pytest

from sentinels import yamlfile

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```yaml\n(.*?)^```", README.read_text(), re.S | re.M)


def kind(doc: dict) -> str:
    if "image" in doc:
        return "spec"
    if "classes" in doc:
        return "priorities"
    if "users" in doc:
        return "tokens"
    return "config"


def docs_of(k: str) -> list[str]:
    return [b for b in BLOCKS if kind(yamlfile.parse(b, "README.md")) == k]


def test_readme_has_an_example_of_each_file():
    kinds = {kind(yamlfile.parse(b, "README.md")) for b in BLOCKS}
    assert kinds == {"spec", "priorities", "tokens", "config"}, kinds


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0][:40] for b in BLOCKS])
def test_readme_yaml_block_is_accepted(block, tmp_path, monkeypatch):
    from sentinels.auth import Identities
    from sentinels.domain.priority import PriorityConfig
    from sentinels.domain.spec import Limits, validate

    doc = yamlfile.parse(block, "README.md")
    assert isinstance(doc, dict)
    k = kind(doc)
    if k == "spec":
        out = validate(doc, Limits())
        if "notify" in doc:
            assert out["notify"]["on"] and all(isinstance(s, str) for s in out["notify"]["on"])
        return
    if k == "priorities":
        PriorityConfig.from_dict(doc)
        return
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(docs_of("tokens")[0])
    if k == "tokens":
        Identities.load(tokens)
        return
    from sentinels.adapters.kube_manifest import KubeConfig
    from sentinels.embedded import supervisor
    from sentinels.settings import Settings

    prio = tmp_path / "priorities.yaml"
    prio.write_text(docs_of("priorities")[0])
    text = block
    if isinstance(doc.get("priorities"), str):
        text = text.replace(doc["priorities"], str(prio))
    if isinstance(doc.get("tokens_file"), str):
        text = text.replace(doc["tokens_file"], str(tokens))
    for host, entry in (doc.get("registries") or {}).items():  # an auth file for the host, made here
        if entry.get("auth_file"):
            auth = tmp_path / f"auth-{len(text)}.json"
            auth.write_text('{"auths": {"%s": {"auth": "dXNlcjpwYXNzd29yZA=="}}}' % host)
            text = text.replace(entry["auth_file"], str(auth))
    (tmp_path / "config.yaml").write_text(text)
    for var in ("SENTINELS_PRIORITIES", "SENTINELS_TOKENS_FILE", "SENTINELS_NOTIFY", "SENTINELS_BACKEND",
                "SLACK_BOT_TOKEN", "SLACK_WEBHOOK_URL", "SLACK_CHANNEL"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings.load(env={"SENTINELS_HOME": str(tmp_path)})
    monkeypatch.setenv("SENTINELS_HOME", str(tmp_path))
    supervisor.check_config(settings)
    KubeConfig.from_dict(settings.section("kubernetes"))
    notify = settings.notify(env={})
    if "on" in (doc.get("notify") or {}):
        assert notify.on == frozenset(doc["notify"]["on"])


def test_readme_names_every_config_key():
    """Every key `config.yaml` accepts (and every `notify:` key) appears in a README example."""
    from sentinels.domain import notify
    from sentinels.settings import CONFIG_KEYS

    configs = [yamlfile.parse(b, "README.md") for b in docs_of("config")]
    top = {k for doc in configs for k in doc}
    assert top == set(CONFIG_KEYS), f"README lacks {set(CONFIG_KEYS) - top}, names unknown {top - set(CONFIG_KEYS)}"
    notified = {k for doc in configs for k in (doc.get("notify") or {})}
    assert notified == set(notify.KEYS), f"README's notify examples lack {set(notify.KEYS) - notified}"
