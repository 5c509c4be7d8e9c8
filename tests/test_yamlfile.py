"""The one YAML reader: `on` stays a string key, duplicate keys and object tags are refused,
errors name file, line and column; used for job specs, config.yaml, priorities and tokens."""

import pytest

from sentinels import yamlfile
from sentinels.domain.errors import ConfigError


def test_on_yes_off_stay_strings_and_true_false_are_booleans():
    doc = yamlfile.parse("notify: {on: [failed]}\nyes: no\nflags: [true, False, TRUE, off]\nday: 2026-01-02\n")
    assert doc == {"notify": {"on": ["failed"]}, "yes": "no", "flags": [True, False, True, "off"], "day": "2026-01-02"}


def test_numbers_and_nesting_keep_their_types():
    assert yamlfile.parse("params: {lr: 0.5, epochs: 40, opt: {name: adam, betas: [0.9, 0.99]}}") == \
        {"params": {"lr": 0.5, "epochs": 40, "opt": {"name": "adam", "betas": [0.9, 0.99]}}}


@pytest.mark.parametrize("text,words", [
    ("a: 1\nb: 2\na: 3\n", "f.yaml: line 3, column 1: not valid YAML: duplicate key 'a'"),
    ("x:\n  y: 1\n  y: 2\n", "line 3, column 3: not valid YAML: duplicate key 'y'"),
    ("{a: 1, a: 1}", "line 1, column 8: not valid YAML: duplicate key 'a'"),
    ("name: [unclosed\n", "f.yaml: line 2, column 1: not valid YAML"),
    ("a: b: c\n", "f.yaml: line 1, column 5: not valid YAML"),
    ("!!python/object/apply:os.system ['true']\n", "line 1, column 1: not valid YAML: the tag !!python/object/apply:os.system"),
    ("x: !!binary aGk=\n", "the tag !!binary would construct an object"),
    ("x: !!set {a}\n", "the tag !!set would construct an object"),
])
def test_bad_yaml_is_one_line_naming_where(text, words):
    with pytest.raises(yamlfile.YamlError) as e:
        yamlfile.parse(text, "f.yaml")
    assert words in e.value.message and "\n" not in e.value.message


def test_a_merge_key_may_be_overridden():
    assert yamlfile.parse("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")["c"] == {"x": 3, "y": 2}


def test_every_server_file_goes_through_it(tmp_path):
    from sentinels.auth import Identities
    from sentinels.settings import Settings

    (tmp_path / "config.yaml").write_text("notify:\n  on: [failed, cancelled]\n")
    assert Settings.load(env={"SENTINELS_HOME": str(tmp_path)}).notify(env={}).on == {"failed", "cancelled"}
    (tmp_path / "config.yaml").write_text("user: a\nuser: b\n")
    with pytest.raises(ConfigError, match=r"configuration .*config.yaml: line 2, column 1: not valid YAML: duplicate key 'user'"):
        Settings.load(env={"SENTINELS_HOME": str(tmp_path)})
    prio = tmp_path / "p.yaml"
    prio.write_text("classes: {a: 1}\nclasses: {b: 2}\n")
    (tmp_path / "config.yaml").write_text(f"priorities: {prio}\n")
    with pytest.raises(ConfigError, match="priority configuration .*line 2, column 1: not valid YAML: duplicate key"):
        Settings.load(env={"SENTINELS_HOME": str(tmp_path)}).priorities()
    tokens = tmp_path / "t.yaml"
    tokens.write_text("users:\n- {user: a, token: x, role: on}\n")
    ids = Identities.load(tokens, roles={"on": "high"})
    assert ids.identify("Bearer x")["role"] == "on"


def test_the_cli_reads_a_spec_with_notify_on(tmp_path):
    from sentinels.cli.client import CliError
    from sentinels.cli.jobspec import load_file

    spec = tmp_path / "job.yaml"
    spec.write_text("image: python:3.11\nnotify: {channel: '#x', on: [failed]}\n")
    assert load_file(str(spec))["notify"] == {"channel": "#x", "on": ["failed"]}
    spec.write_text("image: python:3.11\nimage: python:3.12\n")
    with pytest.raises(CliError, match=r"--config .*job.yaml: line 2, column 1: not valid YAML: duplicate key 'image'"):
        load_file(str(spec))


def test_unknown_role_in_tokens_file_is_refused(tmp_path):
    from sentinels.auth import Identities

    tokens = tmp_path / "t.yaml"
    tokens.write_text("users:\n- {user: bob, token: x, role: amdin}\n")
    with pytest.raises(ConfigError, match=r"users\[0\] \(bob\): unknown role 'amdin' \(known: admin, user\)"):
        Identities.load(tokens, roles={"user": "high"})
