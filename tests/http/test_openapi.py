"""The OpenAPI description: true to the implementation, and the API fuzzed from it."""

from __future__ import annotations

import json
import re

import pytest

from support.server import Server

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 - schemathesis brings it: skipped with it

MAX_EXAMPLES = 50  # per operation: bounded, loopback only


def test_spec_lists_every_route(fake_server: Server) -> None:
    with fake_server.http() as http:
        spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    rules = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule) for r in fake_server.app.url_map.iter_rules()}
    for path in spec["paths"]:
        assert path in rules
    for rule in ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/models", "/health"):
        assert rule in spec["paths"]


def _schema() -> object:
    from rapl import __version__
    from rapl.http.openapi import spec

    return schemathesis.openapi.from_dict(json.loads(json.dumps(spec(__version__))))


schema = _schema()


@pytest.fixture(scope="module")
def fuzz_target(shared_fake_server: Server) -> Server:
    """The shared FakeBackend server: the fuzzing is about the HTTP layer, not the model."""
    return shared_fake_server


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_get_a_5xx_and_errors_use_the_envelope(case, fuzz_target: Server) -> None:  # noqa: ANN001
    response = case.call(base_url=fuzz_target.url, timeout=60)
    assert response.status_code < 500, (case.path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])
