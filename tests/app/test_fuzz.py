"""Property-based fuzzing of the HTTP API against its own OpenAPI schema (Schemathesis): whatever a
client sends, the answer is never a 5xx, and every error is problem+json with a stable code. A
bounded number of examples per operation keeps it in CI; the API runs against the real Redis (its own
key prefix) with an API key. (Each operation's Hypothesis strategy is driven directly: Schemathesis'
pytest plugin does not load under this pytest.)"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from app.main import create_app
from worker.core.settings import Settings

KEY = "fuzz-key"
EXAMPLES = 50


def _operations(settings: Settings) -> list[Any]:
    settings.api_keys = KEY
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    return [r.ok() for r in schema.get_all_operations()]


def test_the_schema_has_every_route(settings: Settings) -> None:
    ops = {f"{op.method.upper()} {op.path}" for op in _operations(settings)}
    assert {"POST /v1/models", "POST /v1/jobs", "GET /v1/jobs/{job_id}", "GET /healthz"} <= ops, ops


def test_no_request_gets_a_server_error(settings: Settings) -> None:
    failures: list[str] = []
    for op in _operations(settings):

        @given(case=op.as_strategy())
        @hsettings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
        )
        def run(case: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {KEY}"}
            r = case.call()
            where = f"{case.method} {case.formatted_path} -> {r.status_code}: {r.text[:300]}"
            # the only 5xx a client may see here: /readyz says no worker answers (none runs in this test)
            expected = (
                case.formatted_path == "/readyz" and r.status_code == 503 and r.json()["code"] == "not_ready"
            )
            assert r.status_code < 500 or expected, where
            if r.status_code >= 400:
                ctype = r.headers.get("content-type") or [""]  # Schemathesis: a list per header
                assert ctype[0].startswith("application/problem+json"), where
                assert r.json()["code"], where

        try:
            run()
        except AssertionError as e:
            failures.append(str(e).splitlines()[0])
    assert not failures, "\n".join(failures)
