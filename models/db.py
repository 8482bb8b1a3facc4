"""Engine and session scope.

Engines are created lazily per process: a Celery prefork child must not reuse the connection pool
of the parent it was forked from, so the cache is keyed by pid.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models.settings import get_settings

log = logging.getLogger("saddle.db")

_engines: dict[tuple[int, str], Engine] = {}


def _configure_sqlite(engine: Engine) -> None:
    # WAL lets the API read while the worker writes; the busy timeout waits out short write locks.
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30})
            _configure_sqlite(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        _engines[key] = engine
    return engine


def session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def with_retries(work, attempts: int | None = None, first_delay: float = 0.25):  # noqa: ANN001, ANN201
    """Run ``work()`` (a whole transaction) again when the database connection drops.

    Only connection-level errors are retried: a restarted Postgres or a dropped socket. Errors in the
    statement itself are raised at once. The default (``SADDLE_DB_RETRY_ATTEMPTS``, 16) waits out
    about a minute of outage (delays 0.25, 0.5, 1, 2, 4, then 5 s), long enough for a restart or a
    managed database's failover.
    """
    attempts = attempts or get_settings().db_retry_attempts
    delay = first_delay
    for attempt in range(attempts):
        try:
            return work()
        except OperationalError as exc:
            if attempt == attempts - 1:
                raise
            last = exc
        except DBAPIError as exc:
            if not exc.connection_invalidated or attempt == attempts - 1:
                raise
            last = exc
        log.warning(
            "database connection lost (%s); retry %d of %d in %.2f s",
            type(last.orig or last).__name__,
            attempt + 1,
            attempts - 1,
            delay,
        )
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    raise last  # pragma: no cover - the loop always returns or raises
