"""End to end over real processes: HTTP → Postgres → Redis → Celery worker → Postgres → HTTP."""

from __future__ import annotations

import time

import pytest

from saddle.client import Client
from tests.conftest import tiny_spec

pytestmark = pytest.mark.usefixtures("worker_process")


def test_submitted_job_trains_and_reports_over_http(sdk: Client) -> None:
    spec = tiny_spec(name="e2e", epochs=6, checkpoints={"every_epochs": 2, "keep_best": True})
    job = sdk.submit(spec)
    assert job["status"] == "queued"
    seen_running = []
    final = sdk.wait(job["id"], on_progress=lambda j: seen_running.append(j["status"]), timeout=180)
    assert final["status"] == "succeeded", final["error"]
    assert final["progress"]["epoch"] == 6 and final["progress"]["epochs"] == 6
    assert final["summary"]["best_epoch"] >= 1 and final["attempts"] == 1
    # Where the job's time went: each phase timed, the epochs' own time inside the training phase.
    phases = final["summary"]["phases"]
    assert {"data", "model", "reference", "training", "updates", "checkpoints", "writes", "diagnosis"} <= set(
        phases
    )
    assert 0 < phases["updates"] <= phases["training"]
    assert final["summary"]["phases"].get("spectra", 0) > 0  # tiny_spec keeps the final spectrum

    series = {s["name"]: s for s in sdk.metrics(job["id"])["series"]}
    for split in ("train", "val", "test"):
        assert len(series[f"{split}/loss"]["values"]) == 7  # epoch 0 (before training) and 6 epochs
        assert len(series[f"{split}/accuracy"]["values"]) == 7
    assert series["val/loss"]["values"][-1] < series["val/loss"]["values"][0]
    assert len(series["train/grad_norm"]["values"]) == 6
    steps_per_epoch = -(-final["summary"]["data"]["n_train"] // spec["batch_size"])
    assert len(series["train/lr"]["values"]) == 6 * steps_per_epoch

    kinds = sorted({c["kind"] for c in sdk.checkpoints(job["id"])})
    assert kinds == ["best", "last", "periodic"]


def test_metrics_filters_and_downsampling_over_http(sdk: Client) -> None:
    job = sdk.wait(sdk.submit(tiny_spec(name="e2e-metrics", epochs=4, batch_size=4))["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    http = sdk.http
    val_only = http.get(f"/v1/jobs/{job['id']}/metrics", params={"split": "val"}).json()["series"]
    assert {s["name"] for s in val_only} == {"val/loss", "val/accuracy"}
    lr = http.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "train/lr", "max_points": 10}).json()[
        "series"
    ][0]
    assert lr["downsampled"] and len(lr["values"]) == 10 and lr["total_points"] > 10
    window = http.get(
        f"/v1/jobs/{job['id']}/metrics", params={"name": "train/lr", "step_min": 5, "step_max": 9}
    ).json()["series"][0]
    assert window["steps"] == [5, 6, 7, 8, 9]


def test_cancel_stops_a_running_job(sdk: Client) -> None:
    spec = tiny_spec(name="e2e-cancel", epochs=2000, batch_size=1, checkpoints={"every_epochs": 1000})
    job = sdk.submit(spec)
    deadline = time.monotonic() + 120
    # Two epochs in: a best checkpoint exists, held in memory until a periodic one (epoch 1000).
    while sdk.job(job["id"])["progress"].get("epoch", 0) < 2:
        assert time.monotonic() < deadline, "job never reached epoch 2"
        time.sleep(0.2)
    sdk.cancel(job["id"])
    final = sdk.wait(job["id"], timeout=60)
    assert final["status"] == "cancelled"
    assert final["progress"].get("epoch", 0) < 2000
    # A clean stop stores the best weights it held.
    assert "best" in {c["kind"] for c in sdk.checkpoints(job["id"])}


def test_a_failing_job_ends_failed_with_its_error(sdk: Client) -> None:
    # CNN needs image-shaped inputs; iris has none: a run-time error, reported on the job.
    job = sdk.wait(sdk.submit(tiny_spec(name="e2e-fail", model={"arch": "cnn"}))["id"], timeout=120)
    assert job["status"] == "failed"
    assert "cnn needs image-shaped inputs" in job["error"]


def test_spectra_are_taken_during_training_and_on_demand(sdk: Client) -> None:
    spec = tiny_spec(name="e2e-spectra", epochs=4, analysis={"hessian": {"every_epochs": 2, "samples": 64}})
    job = sdk.wait(sdk.submit(spec)["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    spectra = sdk.spectra(job["id"])
    reasons = [s["reason"] for s in spectra]
    assert reasons[0] == "initial" and "periodic" in reasons and "final" in reasons
    for s in spectra:
        assert (
            s["method"] in ("exact", "lanczos")
            and s["hvps"] >= 1
            and s["seconds"] >= 0
            and s["samples"] == 64
        )
        assert s["top"] == sorted(s["top"], reverse=True) and s["grad_norm"] >= 0
        assert s["critical_point"]["class"] in (
            "not_critical",
            "local_minimum",
            "saddle",
            "local_maximum",
            "flat",
        )
    last = next(c for c in sdk.checkpoints(job["id"]) if c["kind"] == "last")
    url = f"/v1/jobs/{job['id']}/checkpoints/{last['id']}/spectrum"
    response = sdk.http.post(url, json={"top_k": 2, "bottom_k": 2, "density": True})
    assert response.status_code == 202, response.text
    assert sdk.http.post(f"/v1/jobs/{job['id']}/checkpoints/999999999/spectrum").status_code == 404
    deadline = time.monotonic() + 120
    while not (on_demand := [s for s in sdk.spectra(job["id"]) if s["reason"] == "on_demand"]):
        assert time.monotonic() < deadline, "no on-demand spectrum"
        time.sleep(0.5)
    s = on_demand[0]
    assert len(s["top"]) == 2 and len(s["bottom"]) == 2 and s["checkpoint_id"] == last["id"] and s["density"]


def test_compare_shows_spec_differences_and_aligned_curves(sdk: Client) -> None:
    a = sdk.submit(tiny_spec(name="cmp-a", epochs=2))
    b = sdk.submit(tiny_spec(name="cmp-b", epochs=3, batch_size=8))
    for job in (a, b):
        assert sdk.wait(job["id"], timeout=180)["status"] == "succeeded"
    body = sdk.http.get("/v1/jobs/compare", params={"ids": f"{a['id']},{b['id']}"}).json()
    assert set(body["spec_diff"]) == {"name", "epochs", "batch_size"}
    assert body["spec_diff"]["batch_size"] == {a["id"]: 16, b["id"]: 8}
    val = body["series"]["val/loss"]
    assert val["epochs"] == [0.0, 1.0, 2.0, 3.0]
    assert val["values"][a["id"]][-1] is None and val["values"][b["id"]][-1] is not None
    assert sdk.http.get("/v1/jobs/compare", params={"ids": a["id"]}).status_code == 422


def test_provisional_diagnoses_appear_while_the_job_runs(sdk: Client) -> None:
    spec = tiny_spec(name="e2e-provisional", epochs=400, batch_size=4, checkpoints={"every_epochs": 2})
    job = sdk.submit(spec)
    deadline = time.monotonic() + 120
    while not (diagnoses := sdk.diagnoses(job["id"])):
        assert time.monotonic() < deadline, "no provisional diagnosis while running"
        time.sleep(0.5)
    assert all(d["provisional"] for d in diagnoses) and diagnoses[0]["kind"] == "verdict"
    assert sdk.job(job["id"])["verdict"] is None  # the job's verdict waits for the end
    sdk.cancel(job["id"])
    assert sdk.wait(job["id"], timeout=60)["status"] == "cancelled"
