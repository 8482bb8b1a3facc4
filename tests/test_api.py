"""The HTTP contract: validation, auth, 404s, listing and cancellation."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import tiny_spec


def test_bad_specs_are_refused_naming_the_field(client: TestClient) -> None:
    cases = [
        ({"data": {"dataset": "digits"}, "batch_size": 0}, "batch_size"),
        ({"data": {"dataset": "digits", "split": {"val": 0.5, "test": 0.45}}}, "data.split"),
        ({"data": {"dataset": "nope"}}, "data.dataset"),
        ({"data": {"dataset": "digits"}, "optimizer": {"name": "lbfgs"}}, "optimizer.name"),
        ({"data": {"dataset": "digits"}, "surprise": 1}, "surprise"),
        ({"data": {"dataset": "digits"}, "model": {"hidden": [8, 8], "dropout": [0.1]}}, "model"),
        ({"epochs": 3}, "data"),
    ]
    for body, field in cases:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 422, body
        fields = [e["field"] for e in response.json()["errors"]]
        assert field in fields, (body, fields)
        assert field in response.json()["detail"]


def test_every_route_but_health_needs_a_token(client: TestClient) -> None:
    anonymous = TestClient(client.app)
    assert anonymous.get("/healthz").status_code == 200
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/" + "0" * 32)]:
        assert anonymous.request(method, path).status_code == 401
    bad = TestClient(client.app, headers={"Authorization": "Bearer sdl_not-a-token"})
    assert bad.get("/v1/jobs").status_code == 401


def test_unknown_job_is_404(client: TestClient) -> None:
    for suffix in ("", "/metrics", "/checkpoints", "/spectra", "/diagnoses"):
        assert client.get(f"/v1/jobs/{'f' * 32}{suffix}").status_code == 404
    assert client.post(f"/v1/jobs/{'f' * 32}/cancel").status_code == 404


def test_another_projects_job_is_invisible(client: TestClient, other_token: str) -> None:
    job = client.post("/v1/jobs", json=tiny_spec(name="mine")).json()
    other = TestClient(client.app, headers={"Authorization": f"Bearer {other_token}"})
    assert other.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert all(j["id"] != job["id"] for j in other.get("/v1/jobs").json()["items"])


def test_list_pages_with_a_cursor_and_bounded_limit(client: TestClient) -> None:
    ids = {client.post("/v1/jobs", json=tiny_spec(name="paged")).json()["id"] for _ in range(5)}
    seen, cursor = [], None
    while True:
        params = {"name": "paged", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert set(seen) == ids and len(seen) == len(ids)
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 422


def test_cancel_while_queued_means_never_started(client: TestClient) -> None:
    from worker.runner import run_job

    job = client.post("/v1/jobs", json=tiny_spec(name="cancel-queued")).json()
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    # A delivery that arrives after the cancel must not train (run the worker's entry point directly,
    # in case the session's worker process did not pick the message up yet).
    assert run_job(job["id"]) == "skipped"
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "cancelled" and final["attempts"] in (0, 1) and final["progress"] == {}
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_idempotency_key_replays_and_conflicts(client: TestClient) -> None:
    spec = tiny_spec(name="idem")
    first = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = client.post("/v1/jobs", json=tiny_spec(name="idem-2"), headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422


def test_openapi_and_readiness(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/jobs" in schema["paths"] and "/v1/jobs/{job_id}/metrics" in schema["paths"]
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json()


def test_api_never_imports_torch_nor_the_worker() -> None:
    """The API process loads no torch and nothing of the worker but the Celery app it enqueues on."""
    import json
    import subprocess
    import sys

    code = (
        "import api.app, json, sys; "
        "print(json.dumps(['torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('worker'))]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    torch_loaded, worker_modules = json.loads(out.stdout)
    assert not torch_loaded
    assert worker_modules == ["worker", "worker.celery_app"]
