"""Contract test: schemathesis generates requests from /openapi.json and runs them against a
live submit function on a real nats-server. Every answer must be a documented status code
with a documented shape, and never a 5xx."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance)

from tests.conftest import TOKENS, post_ce, submit_stack  # noqa: E402


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with submit_stack(tmp_path_factory.mktemp("home")) as fn:
        for _ in range(3):  # something to read
            post_ce(fn.url, "io.sentinels.job.submit", {"spec": {"image": "python:3.11", "command": ["true"]}},
                    token=TOKENS["alice"])
        yield fn


def test_documented_answers_only(live):
    """Each operation with generated inputs, valid and invalid (schemathesis' strategies)."""
    api = schemathesis.openapi.from_url(live.url + "/openapi.json")
    headers = {"authorization": f"Bearer {TOKENS['alice']}"}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 10
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case):
                case.call_and_validate(base_url=live.url, headers=headers, timeout=10, checks=checks)

            run()
