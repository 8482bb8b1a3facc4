"""Issue 14, items 10 and 11: an accepted on-demand spectrum appears (top_k up to the validated 100),
and a remedy is made once however many times it is asked for."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from models.db import session_scope
from models.tables import Diagnosis, Job, Project
from tests.conftest import RUN_ID, tiny_spec


@pytest.fixture(scope="module")
def api(api_server: str, token: str) -> httpx.Client:
    with httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        yield c


def _finished_job_with_a_fix() -> str:
    """A finished job whose verdict carries a patch, written directly (no worker needed)."""
    with session_scope() as session:
        project = session.scalars(select(Project).where(Project.name == f"test-{RUN_ID}")).one()
        name = f"remedy-{uuid.uuid4().hex[:6]}"
        job = Job(project_id=project.id, name=name, spec=tiny_spec(name=name), tags={}, status="succeeded")
        session.add(job)
        session.flush()
        for code, kind in (("underfitting.optimization", "verdict"), ("learning_rate.too_low", "finding")):
            session.add(
                Diagnosis(
                    job_id=job.id,
                    code=code,
                    kind=kind,
                    severity="error",
                    confidence=0.9,
                    patch={"optimizer": {"lr": 0.05}},
                )
            )
        return job.id


def _remedies_of(job_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.parent_id == job_id))


def test_ten_concurrent_remedies_make_one_job(api: httpx.Client) -> None:
    job_id = _finished_job_with_a_fix()
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: api.post(f"/v1/jobs/{job_id}/remedy"), range(10)))
    assert {r.status_code for r in answers} <= {200, 201}, [r.text for r in answers]
    assert sum(r.status_code == 201 for r in answers) == 1
    assert len({r.json()["job"]["id"] for r in answers}) == 1
    assert _remedies_of(job_id) == 1
    api.post(f"/v1/jobs/{answers[0].json()['job']['id']}/cancel")


def test_the_idempotency_key_is_honoured_on_remedy(api: httpx.Client) -> None:
    job_id = _finished_job_with_a_fix()
    key = {"Idempotency-Key": f"remedy-{uuid.uuid4().hex}"}
    first = api.post(f"/v1/jobs/{job_id}/remedy", headers=key)
    again = api.post(f"/v1/jobs/{job_id}/remedy", headers=key)
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert first.json()["job"]["id"] == again.json()["job"]["id"]
    other = api.post(f"/v1/jobs/{job_id}/remedy", headers=key, json={"findings": ["learning_rate.too_low"]})
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    # Other fixes are another remedy.
    narrower = api.post(f"/v1/jobs/{job_id}/remedy", json={"findings": ["learning_rate.too_low"]})
    assert narrower.status_code == 201 and narrower.json()["job"]["id"] != first.json()["job"]["id"]
    assert _remedies_of(job_id) == 2
    for r in (first, narrower):
        api.post(f"/v1/jobs/{r.json()['job']['id']}/cancel")


def _wait_for(predicate, timeout: float = 180.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_an_on_demand_spectrum_with_top_k_100_appears(api: httpx.Client, worker_process) -> None:
    """Lanczos on a model of more than 1,000 parameters used to stop before it had 101 Ritz values
    (its iteration cap was 100) and raised IndexError: the 202 was never followed by a spectrum."""
    spec = tiny_spec(name="spectrum-k100", data={"dataset": "digits"}, model={"hidden": [32]}, epochs=1)
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    job = _wait_for(
        lambda: (j := api.get(f"/v1/jobs/{job_id}").json())["status"] != "queued" and j["finished_at"] and j
    )
    assert job["status"] == "succeeded", job["error"]
    checkpoint = api.get(f"/v1/jobs/{job_id}/checkpoints").json()[-1]["id"]
    before = len(api.get(f"/v1/jobs/{job_id}/spectra").json())
    r = api.post(f"/v1/jobs/{job_id}/checkpoints/{checkpoint}/spectrum", json={"top_k": 100, "bottom_k": 1})
    assert r.status_code == 202, r.text
    spectra = _wait_for(lambda: (s := api.get(f"/v1/jobs/{job_id}/spectra").json())[before:] and s)
    on_demand = [s for s in spectra if s["reason"] == "on_demand"][-1]
    assert len(on_demand["top"]) == 100 and on_demand["top"] == sorted(on_demand["top"], reverse=True)
    assert len(on_demand["bottom"]) == 1
