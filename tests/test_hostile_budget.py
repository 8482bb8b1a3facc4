"""Issue 14, items 2 and 9: one budget (parameters, data bytes, epochs × rows, spectra) and one set of
project checks for every way a job comes to exist, and the worker checks the budget again before it
allocates anything."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from sqlalchemy import select

from models.db import session_scope
from models.tables import Diagnosis, Job, Project
from tests.conftest import RUN_ID, tiny_spec

BIG_MODEL = {"arch": "mlp", "hidden": [4096, 4096, 4096, 4096]}  # ~51M parameters on digits
BIG_DATA = {"dataset": "gaussian_regression", "params": {"n_samples": 1_000_000, "n_features": 10_000}}


@pytest.fixture(scope="module")
def api(api_server: str, token: str) -> httpx.Client:
    with httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def intruder(api_server: str, other_token: str) -> httpx.Client:
    with httpx.Client(
        base_url=api_server, headers={"Authorization": f"Bearer {other_token}"}, timeout=60
    ) as c:
        yield c


def _sweep(base: dict, space: dict, **extra) -> dict:
    return {"name": "budget", "base": base, "space": space, "algorithm": "grid", **extra}


def _refused(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 422, r.text
    assert all(w in r.json()["detail"] for w in words), r.text


def test_the_same_big_model_is_refused_by_jobs_sweeps_and_studies(api: httpx.Client) -> None:
    spec = tiny_spec(data={"dataset": "digits"}, model=BIG_MODEL)
    _refused(api.post("/v1/jobs", json=spec), "parameters exceed", "SADDLE_MAX_PARAMETERS")
    space = {"optimizer.lr": {"type": "choice", "values": [0.01, 0.1]}}
    _refused(api.post("/v1/sweeps", json=_sweep(spec, space)), "SADDLE_MAX_PARAMETERS")
    small = tiny_spec(data={"dataset": "digits"})
    wide = {"model.hidden": {"type": "choice", "values": [[8], [4096, 4096, 4096, 4096]]}}
    _refused(api.post("/v1/sweeps", json=_sweep(small, wide)), "space.model.hidden", "SADDLE_MAX_PARAMETERS")
    # A depth study of 64 layers of 65,536 units: 270 G parameters.
    study = {"base": small, "depths": [1, 64], "width": 65_536}
    _refused(api.post("/v1/studies/depth", json=study), "SADDLE_MAX_PARAMETERS")
    timing = {"spec": spec, "batch_sizes": [8, 16]}
    _refused(api.post("/v1/studies/batch-size-timing", json=timing), "SADDLE_MAX_PARAMETERS")


def test_generated_data_epochs_and_spectra_have_budgets_everywhere(api: httpx.Client) -> None:
    big = tiny_spec(data=BIG_DATA)
    _refused(api.post("/v1/jobs", json=big), "GiB", "SADDLE_MAX_DATA_BYTES")
    space = {"data.params.n_features": {"type": "choice", "values": [10, 10_000]}}
    base = tiny_spec(data={"dataset": "gaussian_regression", "params": {"n_samples": 1_000_000}})
    _refused(api.post("/v1/sweeps", json=_sweep(base, space)), "SADDLE_MAX_DATA_BYTES")
    long = tiny_spec(
        data={"dataset": "gaussian_regression", "params": {"n_samples": 1_000_000}}, epochs=10_000
    )
    _refused(api.post("/v1/jobs", json=long), "epochs", "SADDLE_MAX_EPOCH_ROWS")
    hessian_each_epoch = tiny_spec(analysis={"hessian": {"every_epochs": 1, "samples": 64}})
    epochs = {"epochs": {"type": "int", "low": 1, "high": 10_000}}
    _refused(
        api.post("/v1/sweeps", json=_sweep(hessian_each_epoch, epochs)), "space.epochs", "SADDLE_MAX_SPECTRA"
    )
    every = tiny_spec(epochs=5_000, analysis={"hessian": {"every_epochs": 1, "samples": 64}})
    _refused(api.post("/v1/jobs", json=every), "analysis.hessian.every_epochs", "SADDLE_MAX_SPECTRA")


def test_a_combination_over_the_budget_fails_its_trial_without_a_job(api: httpx.Client) -> None:
    """Each value alone fits; together (10,000 features into 40,000 units) they do not."""
    base = tiny_spec(name="combo", data={"dataset": "blobs", "params": {"n_samples": 100}}, epochs=1)
    space = {
        "data.params.n_features": {"type": "choice", "values": [2, 10_000]},
        "model.hidden": {"type": "choice", "values": [[4], [40_000]]},
    }
    r = api.post("/v1/sweeps", json=_sweep(base, space, max_concurrency=1))
    assert r.status_code == 201, r.text
    sweep = r.json()
    try:
        trials = sweep["trials"]
        over = [
            t for t in trials if t["params"] == {"data.params.n_features": 10_000, "model.hidden": [40_000]}
        ]
        assert len(over) == 1 and over[0]["job_id"] is None and over[0]["status"] == "failed"
        assert "over budget" in over[0]["error"] and "SADDLE_MAX_PARAMETERS" in over[0]["error"]
        assert all(t["job_id"] for t in trials if t is not over[0])
    finally:
        api.post(f"/v1/sweeps/{sweep['id']}/cancel")


def test_a_remedy_that_would_exceed_the_budget_is_refused(api: httpx.Client) -> None:
    with session_scope() as session:
        project = session.scalars(select(Project).where(Project.name == f"test-{RUN_ID}")).one()
        spec = tiny_spec(name="to-remedy", data={"dataset": "digits"})
        job = Job(project_id=project.id, name="to-remedy", spec=spec, tags={}, status="succeeded")
        session.add(job)
        session.flush()
        session.add(
            Diagnosis(
                job_id=job.id,
                code="underfitting.model_bias",
                kind="verdict",
                severity="error",
                confidence=0.9,
                patch={"model": {"hidden": [4096, 4096, 4096, 4096]}},
            )
        )
        job_id = job.id
    _refused(api.post(f"/v1/jobs/{job_id}/remedy"), "SADDLE_MAX_PARAMETERS")


def test_a_fine_tune_over_the_budget_is_refused(api: httpx.Client) -> None:
    parent = api.post("/v1/jobs", json=tiny_spec(name="ft-budget")).json()["id"]
    api.post(f"/v1/jobs/{parent}/cancel")
    child = tiny_spec(data={"dataset": "digits"}, model=BIG_MODEL, init_from={"job": parent})
    _refused(api.post("/v1/jobs", json=child), "SADDLE_MAX_PARAMETERS")


def test_sweeps_cannot_name_another_projects_job_or_dataset(
    api: httpx.Client, intruder: httpx.Client
) -> None:
    """Item 9: the sweep path runs the same project checks as POST /v1/jobs."""
    theirs = intruder.post("/v1/jobs", json=tiny_spec(name="theirs")).json()["id"]
    intruder.post(f"/v1/jobs/{theirs}/cancel")
    csv = "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))
    dataset = intruder.post(
        "/v1/datasets", data={"name": "theirs", "label": "label"}, files={"file": ("d.csv", csv)}
    )
    assert dataset.status_code == 201, dataset.text
    their_data = dataset.json()["id"]
    lr = {"optimizer.lr": {"type": "choice", "values": [0.01, 0.1]}}
    r = api.post("/v1/sweeps", json=_sweep(tiny_spec(init_from={"job": theirs}), lr))
    _refused(r, "base", "init_from.job", "not found in this project")
    r = api.post(
        "/v1/sweeps", json=_sweep(tiny_spec(), {"init_from.job": {"type": "choice", "values": [theirs]}})
    )
    _refused(r, "space.init_from.job", "not found in this project")
    r = api.post(
        "/v1/sweeps", json=_sweep(tiny_spec(), {"data.dataset": {"type": "choice", "values": [their_data]}})
    )
    _refused(r, "space.data.dataset", "no uploaded dataset")
    r = api.post("/v1/sweeps", json=_sweep(tiny_spec(data={"dataset": their_data}), lr))
    _refused(r, "base", "no uploaded dataset")


def test_the_worker_refuses_an_over_budget_row_before_it_allocates(worker_process) -> None:
    """A job row written past the API (an older API, by hand) fails at once with the budget named:
    the worker never generates the 37 GiB it asks for."""
    from api.services.jobs import enqueue

    with session_scope() as session:
        project = session.scalars(select(Project).where(Project.name == f"test-{RUN_ID}")).one()
        spec = tiny_spec(name=f"bypass-{uuid.uuid4().hex[:6]}", data=BIG_DATA)
        job = Job(project_id=project.id, name=spec["name"], spec=spec, tags={}, status="queued")
        session.add(job)
        session.flush()
        job_id = job.id
    enqueue(job_id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with session_scope() as session:
            status, error = session.execute(select(Job.status, Job.error).where(Job.id == job_id)).one()
        if status in ("failed", "succeeded", "cancelled"):
            break
        time.sleep(0.5)
    assert status == "failed", (status, error)
    assert "SADDLE_MAX_DATA_BYTES" in error and "\n" not in error


def test_a_space_too_large_to_validate_cheaply_is_refused(api: httpx.Client) -> None:
    """32 dimensions of 1,000 choices: each value is validated as a spec, 32,000 of them."""
    space = {
        f"data.params.{key}": {"type": "choice", "values": [0.1] * 1000} for key in ("noise", "factor")
    } | {f"tags.k{i}": {"type": "choice", "values": list(range(1000))} for i in range(30)}
    r = api.post("/v1/sweeps", json=_sweep(tiny_spec(data={"dataset": "circles"}), space, algorithm="random"))
    _refused(r, "space", "at most 4000")
