"""``/openapi.json`` documents every HTTP route of the server, and the server, fuzzed against
that document by schemathesis (a bounded run here; ``benchmarks/fuzz_http.py`` runs 10,000
cases), never answers 5xx (but the 503 that sheds an impossible deadline) and answers normally
afterwards."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from keel.serving.openapi import fuzzing_document, openapi_document

#: Cases per operation in CI (19 operations).
EXAMPLES = 25


def test_every_http_route_is_documented(module_server) -> None:
    _, srv = module_server
    served = httpx.get(f"{srv.url}/openapi.json").json()
    assert served == openapi_document()
    from starlette.routing import Route

    app = srv.server.config.app
    documented = {
        (path, method.upper()) for path, item in served["paths"].items() for method in item
    }
    routes = {(r.path, m) for r in app.routes if isinstance(r, Route) for m in r.methods - {"HEAD"}}
    assert routes and routes == documented


schema = schemathesis.openapi.from_dict(fuzzing_document(["fraud"]))


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_fuzzed_requests_never_answer_5xx(case, module_server) -> None:
    _, srv = module_server
    response = case.call(base_url=srv.url, timeout=30)
    # The one 5xx by design: a deadline the route cannot meet is shed at once with 503 and
    # Retry-After (a load balancer's signal to go elsewhere), never a crash.
    shed = response.status_code == 503 and "retry-after" in response.headers
    assert response.status_code < 500 or shed, (case.as_curl_command(), response.text)
    # Whatever it was sent, the server lives on.
    if response.status_code >= 400:
        assert httpx.get(f"{srv.url}/v2/health/live", timeout=30).status_code == 200
