"""GET /metrics (Prometheus text, behind the token) and the structured log lines with job ids."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete

from models.db import session_scope
from models.tables import Job, Project, utcnow
from saddle.client import Client
from saddle.logs import CURRENT_JOB, JobIdFilter, StructuredFormatter
from tests.conftest import RUN_ID, TMP, tiny_spec


def scrape(client) -> dict[str, dict[tuple, float]]:  # noqa: ANN001
    """name -> {sorted label items: value}, parsed by Prometheus' own text parser (it raises on bad text)."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def test_metrics_need_the_token(client) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    assert TestClient(client.app).get("/metrics").status_code == 401


def test_metrics_count_jobs_queue_durations_and_heartbeats(client) -> None:  # noqa: ANN001
    """Rows of a kind of their own, written straight to the database, give exact figures even while
    other tests' jobs come and go: one queued, one succeeded that ran 30 hours on a named host."""
    now = utcnow()
    host = f"obs-host-{RUN_ID}"
    with session_scope() as session:
        project = Project(name=f"obs-{RUN_ID}")
        session.add(project)
        session.flush()
        rows = [
            Job(project_id=project.id, name="obs-q", status="queued", spec=tiny_spec(), kind="obs"),
            Job(
                project_id=project.id,
                name="obs-done",
                status="succeeded",
                spec=tiny_spec(),
                kind="obs",
                worker=host,
                started_at=now - timedelta(hours=30, seconds=40),
                finished_at=now - timedelta(seconds=40),
                heartbeat_at=now - timedelta(seconds=40),
            ),
        ]
        session.add_all(rows)
        session.flush()
        ids = [r.id for r in rows]
    try:
        m = scrape(client)
        statuses = {dict(k)["status"]: v for k, v in m["saddle_jobs"].items()}
        assert set(statuses) == {"queued", "running", "succeeded", "failed", "cancelled"}
        assert m["saddle_jobs_kind"][(("kind", "obs"), ("status", "queued"))] == 1
        assert m["saddle_jobs_kind"][(("kind", "obs"), ("status", "succeeded"))] == 1
        assert m["saddle_queue_depth"][()] == statuses["queued"] >= 1
        assert m["saddle_oldest_queued_job_age_seconds"][()] >= 0

        # The histogram is cumulative, its +Inf bucket is its count, and the 30-hour run sits past 1 day.
        buckets = {
            dict(k)["le"]: v
            for k, v in m["saddle_job_duration_seconds_bucket"].items()
            if ("status", "succeeded") in k
        }
        ordered = [buckets[le] for le in sorted(buckets, key=float)]
        assert ordered == sorted(ordered)
        assert buckets["+Inf"] == m["saddle_job_duration_seconds_count"][(("status", "succeeded"),)]
        assert buckets["+Inf"] - buckets["86400.0"] >= 1
        assert m["saddle_job_duration_seconds_sum"][(("status", "succeeded"),)] >= 30 * 3600

        age = m["saddle_worker_heartbeat_age_seconds"][(("worker", host),)]
        assert 39 <= age < 600
        assert m["saddle_worker_running_jobs"][(("worker", host),)] == 0
    finally:
        with session_scope() as session:
            session.execute(delete(Job).where(Job.id.in_(ids)))
            session.execute(delete(Project).where(Project.name == f"obs-{RUN_ID}"))


@pytest.mark.usefixtures("worker_process")
def test_a_real_worker_shows_in_metrics_and_its_log_lines_carry_the_job_id(sdk: Client) -> None:
    job = sdk.wait(sdk.submit(tiny_spec(name="obs-real", epochs=2))["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    text = sdk.prometheus_metrics()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    workers = {s.labels["worker"]: s.value for s in families["saddle_worker_heartbeat_age_seconds"].samples}
    assert socket.gethostname() in workers and workers[socket.gethostname()] < 600

    # The session's worker runs `saddle worker`, so its log is logfmt with job_id on Celery's task lines.
    log = TMP / "logs" / "worker.log"
    deadline = time.monotonic() + 30
    while f"job_id={job['id']}" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no line with job_id={job['id']} in {log}"
        time.sleep(0.5)
    tagged = [line for line in log.read_text().splitlines() if f"job_id={job['id']}" in line]
    assert any("succeeded in" in line for line in tagged), tagged
    assert all(line.startswith("ts=") and " level=" in line for line in tagged)


def test_api_access_log_lines_carry_the_job_id(api_server: str, token: str) -> None:
    job_id = uuid.uuid4().hex  # no such job: the 404 is logged all the same
    response = httpx.get(f"{api_server}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404
    log = TMP / "logs" / "api.log"
    deadline = time.monotonic() + 10
    while f"job_id={job_id}" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no access line with job_id={job_id} in {log}"
        time.sleep(0.2)
    line = next(x for x in log.read_text().splitlines() if f"job_id={job_id}" in x)
    assert "logger=uvicorn.access" in line and " 404" in line and token not in line


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("saddle.worker", logging.INFO, __file__, 1, message, args, None)


def _line(record: logging.LogRecord, fmt: str = "logfmt") -> str:
    JobIdFilter().filter(record)
    return StructuredFormatter(fmt).format(record)


def test_log_lines_name_the_job_from_message_context_or_task() -> None:
    job_id = "a" * 32
    line = _line(_record("job %s: attempt %d resumes from epoch %d", job_id, 2, 5))
    assert f"job_id={job_id}" in line and 'msg="job ' in line and "level=info" in line

    access = _line(
        _record('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/v1/jobs/{job_id}/metrics", "1.1", 200)
    )
    assert f"job_id={job_id}" in access

    assert "job_id" not in _line(_record("Connected to redis://127.0.0.1:6379/0"))

    token = CURRENT_JOB.set("b" * 32)
    try:
        assert f"job_id={'b' * 32}" in _line(_record("loss is nan at step %d", 3))
    finally:
        CURRENT_JOB.reset(token)

    # Celery's task lines carry the task's arguments (the job id first) in record.data.
    task_id = "0c5b1a4e-2f7d-4e0a-9a51-1b2c3d4e5f60"
    done = _record("Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s", {})
    done.args = {"name": "saddle.run_job", "id": task_id, "runtime": 1.5, "return_value": "'succeeded'"}
    done.data = {"id": task_id, "args": f"('{'c' * 32}',)"}
    assert f"job_id={'c' * 32}" in _line(done)


def test_json_log_lines_parse() -> None:
    record = _record("job %s failed", "d" * 32)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    parsed = json.loads(_line(record, "json"))
    assert parsed["job_id"] == "d" * 32 and parsed["level"] == "info" and parsed["logger"] == "saddle.worker"
    assert "ValueError: boom" in parsed["exc"] and parsed["msg"] == f"job {'d' * 32} failed"
    with pytest.raises(ValueError):
        StructuredFormatter("xml")


def test_log_config_is_what_the_processes_use() -> None:
    from saddle.logs import logging_config

    config = logging_config("json", "debug")
    assert config["disable_existing_loggers"] is False
    assert config["root"]["level"] == "DEBUG"
    assert config["formatters"]["structured"]["fmt"] == "json"
    # uvicorn's loggers hand their records to the root handler (and so get the format and job ids).
    assert all("handlers" not in c for c in config["loggers"].values())
