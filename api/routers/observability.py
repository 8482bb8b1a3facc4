"""GET /metrics: the service's state in Prometheus text format, read from Postgres at scrape time.

Postgres is the one source of truth, so every figure is computed from the ``jobs`` table when
Prometheus scrapes, not counted in process memory: any number of API processes answer the same
thing, and a restart loses nothing. The route needs a bearer token like the rest of the API
(Prometheus sends one with ``authorization: {credentials: <token>}`` in its scrape config). The
figures are service-wide aggregates — counts, durations, worker host names — so any project's token
may read them; no job id, name, spec or project name appears.

    saddle_jobs{status}                          jobs by status
    saddle_jobs_kind{kind,status}                jobs by kind (train, trial, remedy, study, ...) and status
    saddle_queue_depth                           queued jobs in the database (what the workers face)
    saddle_oldest_queued_job_age_seconds         how long the oldest queued job has waited
    saddle_job_duration_seconds{status}          histogram of started→finished of finished jobs
    saddle_worker_heartbeat_age_seconds{worker}  seconds since the newest heartbeat of each worker host
    saddle_worker_running_jobs{worker}           jobs each worker host is running now
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Float, and_, case, cast, extract, func, select
from sqlalchemy.orm import Session

from api.deps import ProjectDep, SessionDep
from models.tables import FINISHED_STATUSES, JOB_STATUSES, Job, utcnow

router = APIRouter(tags=["observability"])

# Seconds; training jobs range from a few seconds (tests) to hours.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
# A worker host whose newest heartbeat is older than this is gone; keep it out of the series so a
# retired host does not page anyone forever (its last age stays visible for a day after it stops).
WORKER_WINDOW = timedelta(days=1)


def _duration_seconds(session: Session) -> ColumnElement[Any]:
    """started→finished in seconds, in the dialect at hand (Postgres in production, SQLite embedded)."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return cast(extract("epoch", Job.finished_at - Job.started_at), Float)


def _age_seconds(now_s: float, then: datetime | None) -> float:
    if then is None:
        return float("nan")
    if then.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        then = then.replace(tzinfo=UTC)
    return max(0.0, now_s - then.timestamp())


class JobsCollector(Collector):
    """Reads the figures with a handful of aggregate queries; nothing is loaded row by row."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[Any]:
        session, now = self.session, utcnow()
        now_s = now.timestamp()

        by_kind = session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
        statuses = dict.fromkeys(JOB_STATUSES, 0)
        kinds = GaugeMetricFamily("saddle_jobs_kind", "Jobs by kind and status.", labels=["kind", "status"])
        for kind, status, count in by_kind:
            statuses[status] = statuses.get(status, 0) + count
            kinds.add_metric([kind, status], count)
        jobs = GaugeMetricFamily("saddle_jobs", "Jobs by status.", labels=["status"])
        for status, count in statuses.items():
            jobs.add_metric([status], count)
        yield jobs
        yield kinds

        yield GaugeMetricFamily(
            "saddle_queue_depth",
            "Queued jobs in the database, waiting for a worker.",
            value=statuses["queued"],
        )
        oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == "queued"))
        yield GaugeMetricFamily(
            "saddle_oldest_queued_job_age_seconds",
            "Seconds the oldest queued job has waited (0 when none is queued).",
            value=_age_seconds(now_s, oldest) if oldest is not None else 0.0,
        )
        yield self._durations()

        heartbeat = GaugeMetricFamily(
            "saddle_worker_heartbeat_age_seconds",
            "Seconds since the newest job heartbeat written by each worker host (jobs.worker).",
            labels=["worker"],
        )
        running = GaugeMetricFamily(
            "saddle_worker_running_jobs", "Jobs each worker host is running now.", labels=["worker"]
        )
        rows = session.execute(
            select(
                Job.worker,
                func.max(Job.heartbeat_at),
                func.count().filter(Job.status == "running"),
            )
            .where(Job.worker.is_not(None), Job.heartbeat_at > now - WORKER_WINDOW)
            .group_by(Job.worker)
            .order_by(Job.worker)
        )
        for worker, newest, n_running in rows:
            heartbeat.add_metric([worker], _age_seconds(now_s, newest))
            running.add_metric([worker], n_running)
        yield heartbeat
        yield running

    def _durations(self) -> HistogramMetricFamily:
        """One query: per status, the count at or under each bucket bound, the total and the sum."""
        seconds = _duration_seconds(self.session)
        timed = and_(
            Job.status.in_(FINISHED_STATUSES), Job.started_at.is_not(None), Job.finished_at.is_not(None)
        )
        columns = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in DURATION_BUCKETS]
        rows = self.session.execute(
            select(Job.status, func.count(), func.coalesce(func.sum(seconds), 0.0), *columns)
            .where(timed)
            .group_by(Job.status)
        )
        family = HistogramMetricFamily(
            "saddle_job_duration_seconds",
            "Seconds from start to finish of finished jobs (all attempts).",
            labels=["status"],
        )
        for status, count, total, *cumulative in rows:
            buckets = [
                (str(float(b)), int(c or 0)) for b, c in zip(DURATION_BUCKETS, cumulative, strict=True)
            ]
            family.add_metric([status], [*buckets, ("+Inf", int(count))], float(total))
        return family


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}
    },
    summary="Prometheus metrics (job counts, queue depth, durations, worker heartbeats)",
)
def prometheus_metrics(session: SessionDep, _: ProjectDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(session))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
