"""Engine and session scope.

Engines are created lazily per process: a Celery prefork child must not reuse the connection pool
of the parent it was forked from, so the cache is keyed by pid.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager

import tenacity
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InvalidatePoolError, OperationalError
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


# A pooled Postgres connection is pinged (a round trip) on checkout only when it may have died
# unseen: when it sat in the pool longer than PING_AFTER_IDLE seconds, or when its socket has
# something to read. An idle connection is sent nothing unless the server closed it (a restart, a
# failover, pg_terminate_backend, idle_session_timeout): the server's goodbye and end-of-stream make
# the socket readable, which a zero-timeout poll sees without a round trip. SQLAlchemy's
# pool_pre_ping paid that round trip on every checkout, ~0.2 ms of a 100-point metrics read on 2
# busy cores (benchmarks/README.md, ingest.py). A failed ping invalidates the whole pool and the
# checkout reconnects, as pre-ping did (and answers 503 while the database is away).
PING_AFTER_IDLE = 10.0
_RETURNED = "saddle_returned_at"


def _readable(dbapi_conn) -> bool:  # noqa: ANN001
    poller = select.poll()
    poller.register(dbapi_conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def _configure_postgres(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _returned(dbapi_conn, record) -> None:  # noqa: ANN001
        if dbapi_conn is not None:
            record.info[_RETURNED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_in_doubt(dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        returned = record.info.get(_RETURNED)
        if returned is None:  # fresh from connect(): nothing to doubt
            return
        try:  # a connection the driver already knows is closed has no socket to poll: it fails too
            if time.monotonic() - returned <= PING_AFTER_IDLE and not _readable(dbapi_conn):
                return
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise InvalidatePoolError(f"pooled connection failed its ping: {exc}") from exc


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
            engine = create_engine(url, pool_size=10, max_overflow=20)
            _configure_postgres(engine)
        _engines[key] = engine
    return engine


_factories: dict[Engine, sessionmaker[Session]] = {}


def session_factory() -> sessionmaker[Session]:
    # One per engine: each sessionmaker makes a Session subclass of its own, whose event dispatch
    # SQLAlchemy sets up again on first use (~0.1 ms of every request when made per call).
    engine = get_engine()
    factory = _factories.get(engine)
    if factory is None:
        factory = _factories[engine] = sessionmaker(bind=engine, expire_on_commit=False)
    return factory


@contextmanager
def session_scope(bind: Connection | None = None) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error. ``bind``: a connection the caller
    holds itself (the metric writer's), instead of one from the pool."""
    session = session_factory()() if bind is None else Session(bind=bind)
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
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(connection_lost),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=first_delay, max=5.0),
        before_sleep=lambda state: _say_retry(state, attempts),
        reraise=True,  # the database's own error, not tenacity's RetryError
    )
    return retrying(work)


ABORTS = ("DeadlockDetected", "SerializationFailure")


def connection_lost(exc: BaseException) -> bool:
    """A restarted Postgres or a dropped socket, as opposed to an error in the statement. Postgres's
    deadlock and serialization aborts are OperationalErrors too, and retrying the whole transaction
    is their documented remedy."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _say_retry(state: tenacity.RetryCallState, attempts: int) -> None:
    exc = state.outcome.exception()
    cause = type(exc.orig or exc).__name__
    # A deadlock or serialization abort is the database resolving a conflict, not an outage.
    what = "transaction aborted by the database" if cause in ABORTS else "database connection lost"
    log.warning(
        "%s (%s); retry %d of %d in %.2f s",
        what,
        cause,
        state.attempt_number,
        attempts - 1,
        state.next_action.sleep,
    )
