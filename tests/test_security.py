"""Nobody in where they don't belong: auth on every route, project scoping, idempotency under
concurrency, artifact paths from ids only, no pickle from outside, bounded input."""

from __future__ import annotations

import io
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from models.artifacts import ArtifactKeyError, LocalArtifactStore, check_key
from models.db import session_scope
from models.tables import Job
from tests.conftest import tiny_spec
from worker.training import load_checkpoint

# Routes that answer without a token: health checks, and the API's own schema and docs (no data).
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _routes(app) -> list[tuple[str, str]]:
    """Every operation the app serves, from its OpenAPI description (nested routers included)."""
    paths = app.openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        if path not in PUBLIC
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _fill(path: str, job_id: str) -> str:
    # Every id parameter gets the id of a real object of the owning project where one is at hand.
    return re.sub(r"\{[^}]+\}", job_id, path)


def test_every_route_needs_a_token_and_hides_other_projects_objects(
    client: TestClient, other_token: str
) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec(name="walk")).json()["id"]
    anonymous = TestClient(client.app)
    intruder = TestClient(client.app, headers={"Authorization": f"Bearer {other_token}"})
    routes = _routes(client.app)
    assert len(routes) >= 8
    for method, path in routes:
        url = _fill(path, job_id)
        assert anonymous.request(method, url).status_code == 401, (method, path)
        if "{" in path:
            status = intruder.request(method, url, json={}).status_code
            assert status in (404, 422), (method, path, status)  # never the owner's object
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200


def test_fifty_concurrent_requests_with_one_key_make_one_job(api_server: str, token: str) -> None:
    key = f"burst-{uuid.uuid4().hex}"
    spec = tiny_spec(name="burst")

    def post(_: int) -> tuple[int, str]:
        r = httpx.post(
            f"{api_server}/v1/jobs",
            json=spec,
            timeout=60,
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
        )
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(post, range(50)))
    assert {status for status, _ in results} <= {200, 201}
    assert len({job_id for _, job_id in results}) == 1
    assert sum(status == 201 for status, _ in results) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.idempotency_key == key)) == 1


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "..",
        "/etc/passwd",
        "a/../../b",
        "%2e%2e/x",
        "a\\..\\b",
        "",
        "jobs//x",
        "jobs/%2f/x",
        "~/.ssh/id_rsa",
    ],
)
def test_artifact_keys_cannot_leave_the_store(key: str, tmp_path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(ArtifactKeyError):
        store.path(check_key(key))


@pytest.mark.parametrize("path", ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..", "%252e%252e%252f", "a" * 300])
def test_traversal_in_ids_is_just_an_unknown_id(client: TestClient, path: str) -> None:
    for suffix in ("", "/metrics", "/checkpoints"):
        assert client.get(f"/v1/jobs/{path}{suffix}").status_code == 404


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what a malicious checkpoint would carry
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"model": _Exploit(str(marker))}, buffer)
    with pytest.raises(Exception, match="(?i)weights only|unpickl|unsupported"):
        load_checkpoint(buffer.getvalue())
    assert not marker.exists()


def test_a_model_over_the_budget_is_refused_with_the_reason(client: TestClient) -> None:
    r = client.post("/v1/jobs", json=tiny_spec(data={"dataset": "digits"}, model={"hidden": [65536, 65536]}))
    assert r.status_code == 422 and "parameters exceed the budget" in r.json()["detail"]
    big = {"dataset": "gaussian_regression", "params": {"n_samples": 1_000_000, "n_features": 10_000}}
    r = client.post("/v1/jobs", json=tiny_spec(data=big))
    assert r.status_code == 422 and "GiB" in r.json()["detail"]


def test_an_oversized_request_is_413(client: TestClient) -> None:
    from models.settings import get_settings

    too_big = get_settings().max_request_bytes + 1
    r = client.post(
        "/v1/jobs",
        content=b"{}",
        headers={"Content-Length": str(too_big), "Content-Type": "application/json"},
    )
    assert r.status_code == 413


def test_a_job_past_its_time_limit_ends_failed_with_the_reason(sdk, worker_process) -> None:
    spec = tiny_spec(name="time-limit", epochs=5000, batch_size=1, resources={"max_minutes": 0.03})
    final = sdk.wait(sdk.submit(spec)["id"], timeout=120)
    assert final["status"] == "failed" and "time limit" in final["error"]
