"""Sweeps and studies over real processes: the API, Postgres, Redis and Celery workers."""

from __future__ import annotations

import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from saddle import processes
from saddle.client import Client
from sweeps.scheduler import lookahead
from tests.conftest import SERVICE_ENV, TMP, tiny_spec

pytestmark = pytest.mark.usefixtures("worker_process")

FINISHED = ("succeeded", "failed", "cancelled")


def wait_sweep(http: Any, sweep_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        sweep = http.get(f"/v1/sweeps/{sweep_id}").json()
        if sweep["status"] in FINISHED:
            return sweep
        assert time.monotonic() < deadline, f"sweep not finished: {sweep['progress']}"
        time.sleep(0.5)


def sweep_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "name": "t",
        "base": tiny_spec(epochs=2),
        "space": {"optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}},
        "algorithm": "random",
        "objective": {"metric": "val/loss", "mode": "min"},
        "max_trials": 2,
        "max_concurrency": 2,
    }
    body.update(overrides)
    return body


def max_overlap(jobs: list[dict[str, Any]]) -> int:
    """The most trials that ran at the same time, from the jobs' own start and end times."""
    events = []
    for j in jobs:
        if j["started_at"] and j["finished_at"]:
            events += [(j["started_at"], 1), (j["finished_at"], -1)]
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


def test_random_sweep_runs_every_trial_and_reports_the_best(sdk: Client) -> None:
    http = sdk.http
    created = http.post("/v1/sweeps", json=sweep_body(name="random", max_trials=6, seed=7))
    assert created.status_code == 201, created.text
    sweep = created.json()
    assert sweep["status"] == "running" and sweep["progress"]["total"] == 6
    # max_concurrency (2) may run, and as many more wait queued so that no worker waits for the
    # scheduler between trials; none of them counts as running before a worker admits it.
    assert len(sweep["trials"]) == min(6, 2 + lookahead(2, "random"))
    assert {t["status"] for t in sweep["trials"]} <= {"queued", "running"}

    final = wait_sweep(http, sweep["id"])
    assert final["status"] == "succeeded"
    progress = final["progress"]
    assert progress["done"] == progress["succeeded"] == progress["total"] == 6
    assert progress["queued"] == progress["running"] == progress["failed"] == 0
    trials = final["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    for t in trials:
        assert t["status"] == "succeeded" and t["verdict"]
        assert 1e-3 <= t["params"]["optimizer.lr"] <= 1e-1
        assert t["objective"] is not None
    assert len({t["params"]["optimizer.lr"] for t in trials}) == 6
    best = min(trials, key=lambda t: t["objective"])
    assert final["best"]["job_id"] == best["job_id"] and final["best"]["value"] == best["objective"]

    # Trials are ordinary jobs linked to the sweep, with the sampled value in their spec.
    jobs = sdk.jobs(sweep=sweep["id"], limit=50)["items"]
    assert len(jobs) == 6 and {j["kind"] for j in jobs} == {"trial"}
    by_id = {j["id"]: j for j in jobs}
    for t in trials:
        assert by_id[t["job_id"]]["spec"]["optimizer"]["lr"] == t["params"]["optimizer.lr"]
        # The objective is val/loss at the best checkpoint, i.e. the job's best validation loss.
        assert t["objective"] == pytest.approx(by_id[t["job_id"]]["summary"]["best_val_loss"])
    assert max_overlap(jobs) <= 2
    # Six siblings that differ only in the rate: the learning-rate range table.
    lr = next(f for f in final["findings"] if f["code"] == "learning_rate_range")
    assert len(lr["evidence"]["table"]) == 6 and lr["evidence"]["best_lr"] == best["params"]["optimizer.lr"]

    listed = http.get("/v1/sweeps").json()["items"]
    assert any(s["id"] == sweep["id"] and s["progress"]["done"] == 6 for s in listed)
    page = http.get(f"/v1/sweeps/{sweep['id']}", params={"trials_limit": 4}).json()
    assert len(page["trials"]) == 4 and page["next_trials_after"] == 3
    rest = http.get(f"/v1/sweeps/{sweep['id']}", params={"trials_after": 3}).json()
    assert [t["number"] for t in rest["trials"]] == [4, 5] and rest["next_trials_after"] is None


def test_grid_sweep_runs_each_point_once_and_a_failing_trial_does_not_stop_it(sdk: Client) -> None:
    # "no_such_arch" passes the spec's validation (architectures can be plugins) and fails in the worker.
    body = sweep_body(
        name="grid",
        algorithm="grid",
        max_trials=None,
        space={
            "batch_size": {"type": "choice", "values": [8, 16]},
            "model.arch": {"type": "choice", "values": ["mlp", "no_such_arch"]},
        },
    )
    body.pop("max_trials")
    sweep = sdk.http.post("/v1/sweeps", json=body).json()
    assert sweep["max_trials"] == 4 and sweep["progress"]["total"] == 4
    final = wait_sweep(sdk.http, sweep["id"])
    assert final["status"] == "succeeded"
    points = {(t["params"]["batch_size"], t["params"]["model.arch"]) for t in final["trials"]}
    assert points == {(8, "mlp"), (16, "mlp"), (8, "no_such_arch"), (16, "no_such_arch")}
    status = {t["params"]["model.arch"]: set() for t in final["trials"]}
    for t in final["trials"]:
        status[t["params"]["model.arch"]].add(t["status"])
    assert status == {"mlp": {"succeeded"}, "no_such_arch": {"failed"}}
    assert final["progress"]["failed"] == 2 and final["progress"]["succeeded"] == 2
    assert final["best"]["params"]["model.arch"] == "mlp"
    failed = sdk.job(next(t["job_id"] for t in final["trials"] if t["status"] == "failed"))
    assert "no_such_arch" in failed["error"]


def test_max_concurrency_holds_with_more_workers_than_slots(sdk: Client) -> None:
    # The test worker runs two processes; with max_concurrency 1 the trial queued ahead is taken by
    # the idle process, deferred by the admission, and sent again once the running trial ended.
    body = sweep_body(name="one-at-a-time", max_trials=5, max_concurrency=1, seed=3)
    final = wait_sweep(sdk.http, sdk.http.post("/v1/sweeps", json=body).json()["id"])
    assert final["status"] == "succeeded"
    assert final["progress"]["succeeded"] == 5 and len(final["trials"]) == 5
    jobs = sdk.jobs(sweep=final["id"], limit=50)["items"]
    assert len(jobs) == 5 and all(j["attempts"] == 1 for j in jobs)
    assert max_overlap(jobs) == 1


BAD_BODIES = [
    ({"space": {"optimizer.nope": {"type": "uniform", "low": 0, "high": 1}}}, "space.optimizer.nope"),
    ({"space": {"batch_size.x": {"type": "choice", "values": [1]}}}, "space.batch_size.x"),
    ({"space": {"optimizer.lr": {"type": "uniform", "low": 0.5, "high": 0.1}}}, "space.optimizer.lr"),
    ({"space": {"optimizer.lr": {"type": "loguniform", "low": 0, "high": 0.1}}}, "space.optimizer.lr"),
    ({"space": {"optimizer.lr": {"type": "choice"}}}, "space.optimizer.lr"),
    ({"space": {"optimizer.lr": {"type": "choice", "values": [0.1, -1.0]}}}, "space.optimizer.lr"),
    ({"space": {"epochs": {"type": "int", "low": 1.5, "high": 3}}}, "space.epochs"),
    ({"space": {}}, "space"),
    ({"algorithm": "grid"}, "space.optimizer.lr"),  # a continuous dimension cannot be a grid
    (
        {"algorithm": "grid", "space": {"epochs": {"type": "int", "low": 1, "high": 3}}, "max_trials": 9},
        "max_trials",
    ),
    ({"max_trials": 10_001}, "max_trials"),
    ({"max_trials": None}, "max_trials"),
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"algorithm": "bayes"}, "algorithm"),
    ({"pruner": "hyperband"}, "pruner"),
    ({"objective": {"metric": "loss"}}, "objective.metric"),
    ({"base": {"data": {"dataset": "nope"}}}, "base.data.dataset"),
    ({"surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("change", "field"), BAD_BODIES)
def test_invalid_sweeps_are_422_naming_the_field(client, change: dict[str, Any], field: str) -> None:
    body = {k: v for k, v in {**sweep_body(), **change}.items() if v is not None}
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"], response.json()


def test_sweeps_need_a_token_and_stay_in_their_project(client, other_token: str) -> None:
    assert client.post("/v1/sweeps", json=sweep_body(), headers={"Authorization": ""}).status_code == 401
    key = f"proj-{uuid.uuid4().hex}"
    sweep = client.post("/v1/sweeps", json=sweep_body(max_concurrency=1), headers={"Idempotency-Key": key})
    assert sweep.status_code == 201
    sweep_id = sweep.json()["id"]
    other = {"Authorization": f"Bearer {other_token}"}
    assert client.get(f"/v1/sweeps/{sweep_id}", headers=other).status_code == 404
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=other).status_code == 404
    assert all(s["id"] != sweep_id for s in client.get("/v1/sweeps", headers=other).json()["items"])
    # Idempotency: the same key and body give the same sweep; another body is refused.
    again = client.post("/v1/sweeps", json=sweep_body(max_concurrency=1), headers={"Idempotency-Key": key})
    assert again.status_code == 200 and again.json()["id"] == sweep_id
    assert len(again.json()["trials"]) == len(sweep.json()["trials"])  # the replay launched nothing
    changed = client.post("/v1/sweeps", json=sweep_body(max_concurrency=2), headers={"Idempotency-Key": key})
    assert changed.status_code == 422 and "Idempotency-Key" in changed.json()["detail"]
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 200


def test_cancel_stops_running_and_queued_trials(sdk: Client) -> None:
    http = sdk.http
    long = tiny_spec(epochs=2000, batch_size=1)
    sweep = http.post("/v1/sweeps", json=sweep_body(base=long, max_trials=5, max_concurrency=2)).json()
    deadline = time.monotonic() + 120
    while http.get(f"/v1/sweeps/{sweep['id']}").json()["progress"]["running"] < 1:
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(0.2)
    cancelled = http.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    launched = len(cancelled.json()["trials"])
    assert 2 <= launched <= min(5, 2 + lookahead(2, "random"))  # the two that may run and those queued ahead
    assert http.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 409
    deadline = time.monotonic() + 60
    while True:
        final = http.get(f"/v1/sweeps/{sweep['id']}").json()
        if final["progress"]["queued"] + final["progress"]["running"] == 0:
            break
        assert time.monotonic() < deadline, final["progress"]
        time.sleep(0.3)
    assert final["status"] == "cancelled"
    assert {t["status"] for t in final["trials"]} == {"cancelled"}
    assert len(final["trials"]) == launched  # nothing was launched after the cancel
    time.sleep(1.0)
    assert len(http.get(f"/v1/sweeps/{sweep['id']}").json()["trials"]) == launched
    assert max_overlap(sdk.jobs(sweep=sweep["id"], limit=50)["items"]) <= 2


def test_cancel_that_meets_a_finishing_worker_in_a_deadlock_is_retried(sdk: Client) -> None:
    """A worker's finishing write + next claim locks a running trial's row, then a queued one's. A
    connection here does the same around the cancel, which holds the queued row and waits for the
    running one: Postgres aborts the cancel (its deadlock check fires first), which must retry, not
    answer 503."""
    http = sdk.http
    long = tiny_spec(epochs=2000, batch_size=1)
    sweep = http.post("/v1/sweeps", json=sweep_body(base=long, max_trials=4, max_concurrency=1)).json()
    deadline = time.monotonic() + 120
    while True:
        trials = http.get(f"/v1/sweeps/{sweep['id']}").json()["trials"]
        by_status = {t["status"]: t["job_id"] for t in trials}
        if {"running", "queued"} <= set(by_status):
            break
        assert time.monotonic() < deadline, trials
        time.sleep(0.2)
    engine = create_engine(SERVICE_ENV["SADDLE_DATABASE_URL"])
    with engine.connect() as worker_like, ThreadPoolExecutor(1) as pool:
        worker_like.execute(text("SET deadlock_timeout = '20s'"))  # so the cancel's check fires first
        worker_like.execute(
            text("UPDATE jobs SET heartbeat_at = now() WHERE id = :j"), {"j": by_status["running"]}
        )
        cancelled = pool.submit(http.post, f"/v1/sweeps/{sweep['id']}/cancel")
        time.sleep(0.5)  # the cancel now holds the queued rows and waits for the running one
        worker_like.execute(text("SELECT 1 FROM jobs WHERE id = :j FOR UPDATE"), {"j": by_status["queued"]})
        worker_like.commit()
        response = cancelled.result(timeout=60)
    engine.dispose()
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"


def test_median_pruner_stops_trials_that_fall_behind(sdk: Client) -> None:
    # Two rates: 0.05 learns, 1e-6 does not move; the data seed varies too. Grid seed 1 orders the
    # six points good, good, slow, good, slow, slow. Once the first two are complete, a slow trial's
    # validation loss is above their median at the same epoch: pruned. A pruned trial stops at its
    # next heartbeat (0.5 s in the tests): with 40 epochs of iris (0.5 s a trial) the pruner's
    # decision came at epoch 17-25 and the trial finished before it noticed, so it counted as
    # complete (twice in full runs, in the worker's log); 150 epochs leave it a second or more.
    base = tiny_spec(epochs=150, batch_size=4, optimizer={"name": "sgd", "lr": 0.05})
    body = sweep_body(
        name="pruned",
        base=base,
        algorithm="grid",
        space={
            "optimizer.lr": {"type": "choice", "values": [0.05, 1e-6]},
            "seed": {"type": "choice", "values": [0, 1, 2]},
        },
        max_trials=6,
        seed=1,
        pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 2},
    )
    final = wait_sweep(sdk.http, sdk.http.post("/v1/sweeps", json=body).json()["id"])
    assert final["status"] == "succeeded" and final["pruner"] == "median"
    pruned = [t for t in final["trials"] if t["status"] == "pruned"]
    assert pruned, [(t["params"], t["status"]) for t in final["trials"]]
    assert {t["params"]["optimizer.lr"] for t in pruned} == {1e-6}
    assert final["progress"]["pruned"] == len(pruned) and final["progress"]["done"] == 6
    job = sdk.job(pruned[0]["job_id"])
    assert job["status"] == "cancelled" and job["progress"]["epoch"] < 150
    assert final["best"]["params"]["optimizer.lr"] == 0.05


def test_depth_study_finds_that_deeper_is_worse(sdk: Client) -> None:
    # Six sigmoid layers: the gradient vanishes before it reaches the first layers, so the deep net
    # stays at chance while one layer of the same width learns the circles.
    base = {
        "name": "depth",
        "data": {"dataset": "circles", "scaling": "standardize"},
        "model": {"arch": "mlp", "hidden": [8], "activation": "sigmoid"},
        "optimizer": {"name": "adam", "lr": 0.05},
        "batch_size": 32,
        "epochs": 10,
        "analysis": {"hessian": {"every_epochs": 0, "samples": 64}},
    }
    created = sdk.http.post("/v1/studies/depth", json={"base": base, "depths": [1, 6]})
    assert created.status_code == 201, created.text
    assert created.json()["kind"] == "study.depth" and created.json()["algorithm"] == "grid"
    final = wait_sweep(sdk.http, created.json()["id"])
    assert final["status"] == "succeeded" and final["progress"]["succeeded"] == 2
    codes = [f["code"] for f in final["findings"]]
    assert "deeper_is_worse" in codes and "depth_comparison" in codes
    assert "optimization" in final["conclusion"]
    finding = next(f for f in final["findings"] if f["code"] == "deeper_is_worse")
    pair = finding["evidence"]["pairs"][0]
    assert pair["deeper"]["hidden"] == [8] * 6 and pair["shallower"]["hidden"] == [8]
    assert pair["deeper"]["train_loss"] > pair["shallower"]["train_loss"]

    deep = sdk.job(pair["deeper"]["job_id"])
    assert deep["verdict"] == "underfitting.optimization"
    diagnoses = sdk.diagnoses(deep["id"])
    assert diagnoses[0]["kind"] == "verdict" and diagnoses[0]["code"] == "underfitting.optimization"
    row = next(d for d in diagnoses if d["code"] == "deeper_is_worse")
    assert row["evidence"]["train_loss"] == pair["deeper"]["train_loss"]
    assert row["evidence"]["shallower_train_loss"] == pair["shallower"]["train_loss"]
    assert row["patch"]["model"]["norm"] == "batch"


def test_batch_size_study_compares_sharpness_test_loss_and_time(sdk: Client) -> None:
    base = {
        "name": "bs",
        "data": {"dataset": "circles", "scaling": "standardize"},
        "model": {"arch": "mlp", "hidden": [32]},
        "optimizer": {"name": "sgd", "lr": 0.2},
        "epochs": 10,
        "analysis": {"hessian": {"every_epochs": 0, "samples": 256}},
    }
    created = sdk.http.post("/v1/studies/batch-size", json={"base": base, "batch_sizes": [256, 4]})
    assert created.status_code == 201, created.text
    final = wait_sweep(sdk.http, created.json()["id"])
    assert final["status"] == "succeeded"
    comparison = next(f for f in final["findings"] if f["code"] == "batch_size_comparison")
    table = comparison["evidence"]["table"]
    assert [row["batch_size"] for row in table] == [4, 256]
    for row in table:
        assert row["lambda_max"] > 0 and row["test_loss"] > 0 and row["seconds_per_epoch"] > 0
    sharp = next(f for f in final["findings"] if f["code"] == "batch_size_sharpness")
    assert table[1]["lambda_max"] > table[0]["lambda_max"] and table[1]["test_loss"] > table[0]["test_loss"]
    assert sharp["trials"] == [table[1]["job_id"]] and sharp["patch"] == {"batch_size": 4}
    assert "sharper" in final["conclusion"]
    codes = [d["code"] for d in sdk.diagnoses(table[1]["job_id"])]
    assert "sharp_minimum" in codes


def test_sweep_goes_on_across_api_and_worker_restarts(database: str, token: str) -> None:
    """Its own API and worker on a private queue: start them, create a sweep, kill -9 the worker in
    the middle of a trial and stop the API, then start new ones: the sweep finishes, state having
    lived only in Postgres; the killed trial resumes on the new worker."""
    env = {**os.environ, **SERVICE_ENV, "SADDLE_QUEUE": f"{SERVICE_ENV['SADDLE_QUEUE']}-restart"}
    logs = TMP / "logs" / f"restart-{uuid.uuid4().hex[:6]}"

    def start() -> tuple[Any, Any, Client]:
        worker = processes.start_worker(
            env, logs / "worker.log", concurrency=1, name=f"restart-{uuid.uuid4().hex[:6]}"
        )
        port = processes.free_port()
        api = processes.start_api(env, port, logs / "api.log")
        processes.wait_ready(f"http://127.0.0.1:{port}/healthz", process=api)
        processes.wait_worker_ready(logs / "worker.log", process=worker)
        return worker, api, Client(f"http://127.0.0.1:{port}", token)

    worker, api, sdk_a = start()
    try:
        base = tiny_spec(epochs=30, batch_size=2, checkpoints={"every_epochs": 1, "keep_best": True})
        sweep = sdk_a.http.post(
            "/v1/sweeps", json=sweep_body(name="restart", base=base, max_trials=3, max_concurrency=1)
        ).json()
        deadline = time.monotonic() + 120
        while True:
            trials = sdk_a.http.get(f"/v1/sweeps/{sweep['id']}").json()["trials"]
            running = [t for t in trials if t["status"] == "running"]
            if running and (sdk_a.job(running[0]["job_id"])["progress"].get("epoch") or 0) >= 2:
                break
            assert time.monotonic() < deadline, trials
            time.sleep(0.2)
        killed = running[0]["job_id"]
        os.killpg(worker.pid, 9)
        worker.wait(10)
        processes.stop(api)
    finally:
        processes.stop(worker)
        processes.stop(api)

    worker, api, sdk_b = start()
    try:
        final = wait_sweep(sdk_b.http, sweep["id"], timeout=240)
        assert final["status"] == "succeeded", final["progress"]
        assert final["progress"]["succeeded"] == 3 and len(final["trials"]) == 3
        assert sdk_b.job(killed)["attempts"] >= 2
    finally:
        processes.stop(worker)
        processes.stop(api)
    # The worker that stopped cleanly said what its sweep steps cost (benchmarks/sweep.py reads it);
    # the one killed -9 could not.
    steps = re.findall(
        r"sweep steps in this process: (\d+), [0-9.]+ s of CPU", (logs / "worker.log").read_text()
    )
    assert len(steps) == 1 and int(steps[0]) >= 1
