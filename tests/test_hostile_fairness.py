"""Issue 14, item 6: projects take turns for worker slots, and each has quotas of queued and running
jobs. Real API, real workers, real Redis."""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from models.db import session_scope
from models.settings import get_settings
from models.tables import Job, Project
from tests.conftest import RUN_ID, SERVICE_ENV, TMP, cancel_unfinished, tiny_spec
from worker.celery_app import enqueue_job

# About a second of training each on this machine's CPU.
ONE_JOB = tiny_spec(name="flood", epochs=25, batch_size=4)


def _fresh_project(label: str) -> tuple[str, str]:
    """(name, token) of a project of this test alone: the session's projects run other tests' jobs
    meanwhile, which would count in their turns and quotas."""
    from api.auth import create_token

    name = f"{label}-{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        return name, create_token(session, name, "fairness")[1]


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _times(job_ids: list[str]) -> dict[str, tuple[datetime, datetime | None, datetime | None, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(Job.id, Job.created_at, Job.started_at, Job.finished_at, Job.status).where(
                Job.id.in_(job_ids)
            )
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _cancel_queued(job_ids: list[str]) -> None:
    cancel_unfinished(Job.id.in_(job_ids))


def _wait(predicate, timeout: float = 180.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_flood_in_one_project_does_not_hold_back_another(api_server: str, worker_process) -> None:
    """40 jobs of one project are queued ahead of one job of another; the other's job takes the
    next free slot, so it waits at most the length of one job of the flood."""
    flood_api = _client(api_server, _fresh_project("flood")[1])
    other_api = _client(api_server, _fresh_project("bystander")[1])
    flood = [flood_api.post("/v1/jobs", json=ONE_JOB).json()["id"] for _ in range(40)]
    try:
        _wait(lambda: sum(t[3] == "running" for t in _times(flood).values()) >= 2)
        mine = other_api.post("/v1/jobs", json=tiny_spec(name="after-the-flood", epochs=1)).json()["id"]
        _wait(lambda: _times([mine])[mine][3] in ("succeeded", "failed"))
        created, started, _, status = _times([mine])[mine]
        assert status == "succeeded"
        times = _times(flood)
        overtook = [j for j, (_, s, _, _) in times.items() if s is not None and created < s < started]
        # A slot that frees while the job is being written may already be taken: at most one.
        assert len(overtook) <= 1, overtook
        lengths = [(f - s).total_seconds() for _, s, f, st in times.values() if s and f and st == "succeeded"]
        waited = (started - created).total_seconds()
        assert lengths and waited <= max(lengths) + 2.0, (waited, lengths)
        queued_then = sum(1 for _, s, _, _ in times.values() if s is None or s > started)
        assert queued_then >= 20  # the flood was still there: without turns it would have waited for it all
    finally:
        _cancel_queued(flood)


def test_the_queued_jobs_quota_is_a_429_naming_the_setting(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.services.jobs import queued_jobs

    with session_scope() as session:  # other tests may have left jobs queued: the limit counts them
        project = session.scalars(select(Project).where(Project.name == f"test-{RUN_ID}")).one()
        already = queued_jobs(session, project_id=project.id)
    monkeypatch.setattr(get_settings(), "max_queued_jobs", already + 2)
    monkeypatch.setattr(get_settings(), "queue", f"no-worker-{RUN_ID}")  # so they stay queued
    made = []
    for _ in range(2):
        r = client.post("/v1/jobs", json=tiny_spec(name="quota", epochs=1))
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
    try:
        r = client.post("/v1/jobs", json=tiny_spec(name="quota", epochs=1))
        assert r.status_code == 429 and "SADDLE_MAX_QUEUED_JOBS" in r.json()["detail"], r.text
        assert r.headers.get("retry-after")
        space = {"optimizer.lr": {"type": "choice", "values": [0.01, 0.1]}}
        r = client.post("/v1/sweeps", json={"base": tiny_spec(), "space": space, "algorithm": "grid"})
        assert r.status_code == 429, r.text
    finally:
        _cancel_queued(made)


@pytest.fixture(scope="module")
def quota_worker(database: str):
    """A worker of two slots on a queue of its own, with a running quota of one job per project."""
    from saddle import processes

    queue = f"quota-{RUN_ID}"
    env = {**os.environ, **SERVICE_ENV, "SADDLE_QUEUE": queue, "SADDLE_MAX_RUNNING_JOBS": "1"}
    log = TMP / "logs" / "worker-quota.log"
    proc = processes.start_worker(env, log, concurrency=2, name=f"quota-{RUN_ID}")
    processes.wait_worker_ready(log, process=proc)
    yield queue
    processes.stop(proc)


def _insert(project_name: str, queue: str, n: int) -> list[str]:
    with session_scope() as session:
        project = session.scalars(select(Project).where(Project.name == project_name)).one()
        jobs = [
            Job(project_id=project.id, name="quota", spec=ONE_JOB, tags={}, status="queued", queue=queue)
            for _ in range(n)
        ]
        session.add_all(jobs)
        session.flush()
        ids = [j.id for j in jobs]
    for job_id in ids:
        enqueue_job(job_id, "train", queue)
    return ids


def test_a_project_runs_at_most_its_quota_and_the_rest_run_later(quota_worker: str) -> None:
    mine = _insert(_fresh_project("quota")[0], quota_worker, 4)
    most = 0
    try:

        def finished() -> bool:
            nonlocal most
            times = _times(mine)
            most = max(most, sum(t[3] == "running" for t in times.values()))
            return all(t[3] in ("succeeded", "failed", "cancelled") for t in times.values())

        _wait(finished, timeout=240)
        times = _times(mine)
        assert {t[3] for t in times.values()} == {"succeeded"}
        spans = sorted((s, f) for _, s, f, _ in times.values())
        # One at a time: each started after the previous one ended (parked jobs were sent again).
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans
        assert most <= 1
    finally:
        _cancel_queued(mine)


def test_the_quota_leaves_free_slots_to_other_projects(quota_worker: str) -> None:
    mine = _insert(_fresh_project("quota")[0], quota_worker, 3)
    theirs = _insert(_fresh_project("beside")[0], quota_worker, 1)
    try:
        _wait(lambda: all(t[3] == "succeeded" for t in _times(mine + theirs).values()), timeout=240)
        times = _times(mine + theirs)
        their_start = times[theirs[0]][1]
        last_of_mine = max(times[j][2] for j in mine)
        assert their_start < last_of_mine  # it ran beside the quota'd project, not after it
    finally:
        _cancel_queued(mine + theirs)


def test_a_huge_sweep_queues_no_more_than_its_project_may_run(api_server: str) -> None:
    """max_trials 10,000 with max_concurrency 1,000 used to queue 1,032 jobs at once."""
    http = _client(api_server, _fresh_project("huge-sweep")[1])
    body = {
        "base": tiny_spec(name="huge", epochs=1),
        "space": {"optimizer.lr": {"type": "loguniform", "low": 0.001, "high": 0.1}},
        "algorithm": "random",
        "max_trials": 10_000,
        "max_concurrency": 1_000,
    }
    r = http.post("/v1/sweeps", json=body)
    assert r.status_code == 201, r.text
    try:
        launched = r.json()["progress"]["queued"] + r.json()["progress"]["running"]
        running_quota = get_settings().max_running_jobs
        assert 0 < launched <= 2 * running_quota  # the project's running quota plus the lookahead
    finally:
        http.post(f"/v1/sweeps/{r.json()['id']}/cancel")
