"""Contract test: schemathesis generates requests from /openapi.json and runs them against a
live submit function on a real nats-server. Every answer must be a documented status code
with a documented shape, and never a 5xx."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance)

from sentinels.embedded import natsd  # noqa: E402
from tests.conftest import TOKENS, FunctionServer, post_ce, tokens_file  # noqa: E402


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    port = natsd.free_port()
    nats = natsd.start(home / "js", port)
    env = {"SENTINELS_HOME": str(home), "SENTINELS_NATS_URL": f"nats://127.0.0.1:{port}",
           "SENTINELS_TOKENS_FILE": str(tokens_file(home))}
    fn = FunctionServer("submit", env, home)
    for i in range(3):  # something to read
        post_ce(fn.url, "io.sentinels.job.submit", {"spec": {"image": "python:3.11", "command": ["true"]}},
                token=TOKENS["alice"])
    yield fn
    fn.stop()
    nats.terminate()
    nats.wait()


def test_documented_answers_only(live):
    """Each operation with generated inputs, valid and invalid (schemathesis' strategies)."""
    api = schemathesis.openapi.from_url(live.url + "/openapi.json")
    headers = {"authorization": f"Bearer {TOKENS['alice']}"}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 7
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case):
                case.call_and_validate(base_url=live.url, headers=headers, timeout=10, checks=checks)

            run()
