"""Schemathesis against our own /openapi.json: generated requests to every operation, authorized as
a real project. No response may be a 5xx, and every response must match the documented schema.

Semantic rules that JSON Schema cannot state (split fractions summing below 0.9, curriculum epochs,
the parameter budget) are why "schema-valid request rejected" is not among the checks: those 422s are
the API doing its job. Cases per operation come from SADDLE_FUZZ_EXAMPLES (default 60: ~1,500 cases over the API in CI;
set it to 500 for a longer hunt). The number of cases run is printed at the end of the session.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import app

EXAMPLES = int(os.environ.get("SADDLE_FUZZ_EXAMPLES", "60"))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
CASES = {"count": 0}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module", autouse=True)
def report_count():
    yield
    print(f"\nschemathesis: {CASES['count']} generated cases run")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_generated_requests_never_break_the_api(case, token: str) -> None:
    CASES["count"] += 1
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
