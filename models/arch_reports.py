"""Which ``model.arch`` names a job may use: the built-ins, and the plug-ins live workers report.

A worker builds the built-ins (worker/nets.py) and whatever its installed ``saddle.models`` entry
points provide. It writes that list to its ``worker_architectures`` row when it starts and every
``REPORT_SECONDS`` while it runs (worker/registry.py); the API reads the rows seen within
``TTL_SECONDS`` and refuses an arch that none offers (422 naming ``model.arch``), so a job never
waits in the queue for a worker that cannot build its model. The API never imports a plug-in.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from models.spec import BUILTIN_ARCHS
from models.tables import WorkerArchitectures, utcnow

REPORT_SECONDS = 30.0  # how often a running worker refreshes its row
TTL_SECONDS = 3 * REPORT_SECONDS  # a row not refreshed for this long is a worker that is gone


def report(session: Session, *, worker: str, archs: list[str]) -> None:
    """Upsert this worker's row (any database: a merge by primary key)."""
    session.merge(WorkerArchitectures(worker=worker, archs=sorted(set(archs)), seen_at=utcnow()))


def withdraw(session: Session, *, worker: str) -> None:
    session.execute(delete(WorkerArchitectures).where(WorkerArchitectures.worker == worker))


def reported(session: Session) -> dict[str, list[str]]:
    """Each live worker's architectures, by worker name."""
    since = utcnow() - timedelta(seconds=TTL_SECONDS)
    rows = session.scalars(select(WorkerArchitectures).where(WorkerArchitectures.seen_at >= since))
    return {row.worker: list(row.archs) for row in rows}


def available(session: Session) -> list[str]:
    """The built-ins first, then every plug-in arch a live worker offers, sorted."""
    plugins = {a for archs in reported(session).values() for a in archs} - set(BUILTIN_ARCHS)
    return [*BUILTIN_ARCHS, *sorted(plugins)]
