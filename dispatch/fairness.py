"""Fair turns for free worker slots, and the per-project running quota (issue 14, item 6).

Every job is one message on its pool's queue, and the broker hands messages out in the order they
came. A flood from one project (a sweep of a thousand trials) would hold every slot until it drained.
So a delivery is a *turn*, not an order: the claim (``worker.lifecycle``) asks ``fair_turn`` which
queued job of the same pool and task takes the slot the delivery opened:

- the projects with jobs waiting are ranked by how many jobs they run now (fewest first), then by
  when they last started one (longest ago first): with equal shares, projects take turns;
- a project at ``SADDLE_MAX_RUNNING_JOBS`` running jobs gets no turn;
- the named job runs when its project ranks first (or ties); otherwise the oldest waiting job of the
  first project runs, and the named job's message is sent again (to the back of its queue), so every
  queued job keeps one message;
- when no job may take the slot, the named job is *parked*: it stays queued without a message until
  one of its project's jobs ends (``release``) or the reaper finds its project below the quota.

Each turn is one statement over the queued jobs (``ix_jobs_waiting``) and the running ones of the
projects found. Torch-free.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Select, String, bindparam, func, select, update
from sqlalchemy.orm import Session

from models.db import session_scope
from models.settings import get_settings
from models.tables import Job, Project, utcnow
from worker.celery_app import TASK_FOR_KIND, enqueue_job

log = logging.getLogger("saddle.fairness")

NEVER = datetime.min.replace(tzinfo=UTC)


def _same_task(kind: str) -> ColumnElement[bool]:
    """Jobs a delivery of a job of ``kind`` may run instead: those of the same Celery task."""
    special = list(TASK_FOR_KIND)
    return Job.kind.in_([kind]) if kind in special else Job.kind.not_in(special)


def _waiting(job: Job) -> list[ColumnElement[bool]]:
    """Queued jobs that could use a slot of ``job``'s pool and task now."""
    return [
        Job.status == "queued",
        Job.queue == job.queue if job.queue is not None else Job.queue.is_(None),  # `=`: ix_jobs_waiting
        Job.cancel_requested.is_(False),
        Job.parked_at.is_(None),
        _same_task(job.kind),
    ]


def _rank(running: int, last_started: datetime | None) -> tuple[int, datetime]:
    if last_started is not None and last_started.tzinfo is None:
        last_started = last_started.replace(tzinfo=UTC)  # SQLite keeps no time zone
    return running, last_started or NEVER


def _lock_project(session: Session, project_id: str, skip_locked: bool = False) -> bool:
    """Lock the project's row for this transaction: claims of one project count its running jobs one
    at a time, so two slots freeing at once cannot both start its job past the quota."""
    stmt = select(Project.id).where(Project.id == project_id).with_for_update(skip_locked=skip_locked)
    return session.scalar(stmt) is not None


def _running(session: Session, project_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Job).where(Job.project_id == project_id, Job.status == "running")
        )
        or 0
    )


def _ranks(queue: str | None, kind: str) -> Select:
    """The statement of a turn: each project with jobs waiting for a slot of this pool and task, and
    the named job's (``b_project``), with its running jobs and when it last started one. Built once
    per (pool, task) kind: a statement built per call costs more Python than its round trip."""
    key = (queue is None, kind if kind in TASK_FOR_KIND else None)
    statement = _RANKS.get(key)
    if statement is None:
        waiting = (
            select(Job.project_id)
            .where(
                Job.status == "queued",
                Job.queue.is_(None) if queue is None else Job.queue == bindparam("b_queue"),
                Job.cancel_requested.is_(False),
                Job.parked_at.is_(None),
                _same_task(kind),
            )
            .group_by(Job.project_id)
            .union(select(bindparam("b_project", type_=String(32)).label("project_id")))
        ).subquery()
        running = (
            select(func.count())
            .select_from(Job)
            .where(Job.project_id == waiting.c.project_id, Job.status == "running")
            .scalar_subquery()
        )
        statement = select(waiting.c.project_id, running, Project.last_started_at).join(
            Project, Project.id == waiting.c.project_id
        )
        _RANKS[key] = statement
    return statement


_RANKS: dict[tuple[bool, str | None], Select] = {}


def fair_turn(session: Session, job: Job, project_locked: bool = False) -> Job | None:
    """The job that takes the slot ``job``'s delivery opened: ``job`` itself, another queued job
    (locked for this transaction), or None when none may start now. ``project_locked``: the claim
    locked ``job``'s project row already (with the job's row, in one statement)."""
    if not project_locked:
        _lock_project(session, job.project_id)
    rows = session.execute(
        _ranks(job.queue, job.kind), {"b_project": job.project_id, "b_queue": job.queue}
    ).all()
    limit = get_settings().max_running_jobs
    ranks = {pid: _rank(n, last) for pid, n, last in rows if n < limit}
    own = ranks.get(job.project_id)
    if own is not None and own <= min(ranks.values()):
        return job
    for pid in sorted(ranks, key=ranks.__getitem__):
        if pid == job.project_id:
            break  # nobody ahead of the named job's project could take the slot
        # Another claim may hold that project (it is starting one of its jobs): skip it rather than
        # wait, then count again under the lock.
        if not _lock_project(session, pid, skip_locked=True) or _running(session, pid) >= limit:
            continue
        other = session.scalars(
            select(Job)
            .where(Job.project_id == pid, *_waiting(job))
            .order_by(Job.created_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if other is not None:
            return other
    return job if own is not None else None


def started(session: Session, project_id: str) -> None:
    """Record the project's turn (inside the claim's transaction)."""
    session.execute(update(Project).where(Project.id == project_id).values(last_started_at=utcnow()))


def park(job: Job) -> None:
    log.info("job %s: project %s runs its quota of jobs; parked until one ends", job.id, job.project_id)
    job.parked_at = utcnow()


def resend(job_id: str, kind: str, queue: str | None) -> None:
    try:
        enqueue_job(job_id, kind, queue)
    except Exception:  # the broker is away: the reaper sends queued jobs again when it is back
        log.exception("could not send job %s again", job_id)


def release(project_id: str | None = None) -> int:
    """Send parked jobs again while their project is below its running quota: the oldest first, as
    many as it has room for. One project (a job of it just ended) or every project (the reaper)."""
    limit = get_settings().max_running_jobs
    with session_scope() as session:
        parked = select(Job.project_id).where(Job.status == "queued", Job.parked_at.is_not(None))
        if project_id is not None:
            parked = parked.where(Job.project_id == project_id)
        projects = session.scalars(parked.distinct()).all()
        sent = []
        for pid in projects:
            room = limit - _running(session, pid)
            if room <= 0:
                continue
            ids = (
                select(Job.id)
                .where(Job.project_id == pid, Job.status == "queued", Job.parked_at.is_not(None))
                .order_by(Job.created_at, Job.id)
                .limit(room)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            sent += session.execute(
                update(Job)
                .where(Job.id.in_(ids))
                .values(parked_at=None)
                .returning(Job.id, Job.kind, Job.queue)
                .execution_options(synchronize_session=False)
            ).all()
    for job_id, kind, queue in sent:
        resend(job_id, kind, queue)
    return len(sent)
