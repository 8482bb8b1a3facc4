"""The batch-size timing study: the measurement alone, the request's bounds, and one study end to end."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from models.spec import JobSpec
from saddle.client import Client
from tests.conftest import tiny_spec
from worker import timing
from worker.data import load_builtin, prepare


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """As the test worker runs (SADDLE_TORCH_THREADS=1): on a shared two-core machine, intra-op
    threads that wait for a busy core would measure the neighbours, not the batch size."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_time_per_epoch_falls_as_the_batch_grows_on_digits() -> None:
    spec = JobSpec.model_validate({"data": {"dataset": "digits", "scaling": "standardize"}})
    data = prepare(spec.data, load_builtin("digits", {}, 0), 0)
    rows = timing.measure_batch_sizes(spec, data, [256, 1, 16], epochs=3, device=torch.device("cpu"))
    assert [r["batch_size"] for r in rows] == [1, 16, 256]
    n = len(data.y_train)
    for r in rows:
        assert r["updates_per_epoch"] == math.ceil(n / r["batch_size"]) and len(r["epoch_seconds"]) == 3
        assert r["ms_per_update"] == pytest.approx(1000 * r["seconds_per_epoch"] / r["updates_per_epoch"])
        assert r["samples_per_second"] == pytest.approx(n / r["seconds_per_epoch"])
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
    seconds = [r["seconds_per_epoch"] for r in rows]
    assert seconds[0] > seconds[1] > seconds[2], seconds
    # Per update, a larger batch costs more arithmetic but far less than proportionally more time.
    assert rows[2]["ms_per_update"] < 256 * rows[0]["ms_per_update"] / 4


def test_the_api_and_the_worker_agree_on_the_task_name() -> None:
    from worker.celery_app import TASK_FOR_KIND
    from worker.tasks import app

    assert TASK_FOR_KIND["study"] == timing.BATCH_TIMING_TASK  # how the API and the reaper send a study
    assert timing.BATCH_TIMING_TASK in app.tasks


def test_study_requests_are_bounded(client: TestClient) -> None:
    spec = tiny_spec()
    cases = [
        ({"spec": spec, "batch_sizes": list(range(1, 18)), "epochs": 1}, "batch_sizes"),
        ({"spec": spec, "batch_sizes": [65_537], "epochs": 1}, "batch_sizes.0"),
        ({"spec": spec, "batch_sizes": [], "epochs": 1}, "batch_sizes"),
        ({"spec": spec, "batch_sizes": [8], "epochs": 6}, "epochs"),
        ({"spec": {**spec, "batch_size": 0}, "batch_sizes": [8]}, "spec.batch_size"),
    ]
    for body, field in cases:
        response = client.post("/v1/studies/batch-size-timing", json=body)
        assert response.status_code == 422, body
        assert field in [e["field"] for e in response.json()["errors"]], response.json()
    missing = {"spec": tiny_spec(data={"dataset": "a" * 32}), "batch_sizes": [8]}
    response = client.post("/v1/studies/batch-size-timing", json=missing)
    assert response.status_code == 422 and "data.dataset" in response.json()["detail"]


@pytest.mark.usefixtures("worker_process")
def test_a_study_runs_on_the_worker_and_shows_as_a_job(sdk: Client) -> None:
    body = {"spec": tiny_spec(name="timing"), "batch_sizes": [64, 4, 4], "epochs": 2}
    created = sdk.http.post("/v1/studies/batch-size-timing", json=body)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["kind"] == "study" and job["status"] == "queued"
    done = sdk.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["kind"] == "study" and done["device"] == "cpu" and done["progress"]["done"] == 2
    curve = done["summary"]["batch_size_timing"]
    assert [r["batch_size"] for r in curve] == [4, 64]
    assert all(r["seconds_per_epoch"] > 0 and r["samples_per_second"] > 0 for r in curve)
    assert done["summary"]["study"] == {"kind": "batch_size_timing", "batch_sizes": [4, 64], "epochs": 2}
