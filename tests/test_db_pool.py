"""The pool's liveness check (models.db): a pooled connection is pinged on checkout only when it
may have died unseen (its socket has something to read, or it sat idle past PING_AFTER_IDLE), and a
connection the server closed is replaced at checkout, not handed to a request that would fail."""

from __future__ import annotations

import select
import time

import pytest
from sqlalchemy import create_engine, text

from models import db


def _backend_pid() -> int:
    with db.session_scope() as session:
        return session.execute(text("SELECT pg_backend_pid()")).scalar_one()


@pytest.fixture()
def pings(database: str, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every ping the pool sends from here on."""
    engine = db.get_engine()
    sent: list[object] = []
    real = engine.dialect.do_ping

    def counted(dbapi_conn) -> bool:  # noqa: ANN001
        sent.append(dbapi_conn)
        return real(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return sent


def test_a_connection_in_steady_use_is_not_pinged(pings: list[object]) -> None:
    first = _backend_pid()
    assert [_backend_pid() for _ in range(20)] == [first] * 20  # the same pooled connection
    assert pings == []


def test_a_connection_idle_past_the_limit_is_pinged(pings: list[object], monkeypatch) -> None:  # noqa: ANN001
    first = _backend_pid()
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.0)
    time.sleep(0.01)
    assert _backend_pid() == first
    assert len(pings) == 1


def test_a_connection_the_server_closed_is_replaced_at_checkout(pings: list[object], database: str) -> None:
    engine = db.get_engine()
    engine.dispose()  # a pool of one: the connection below
    with engine.connect() as conn:
        dbapi_conn = conn.connection.driver_connection
        victim = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        conn.commit()
    admin = create_engine(database)
    try:
        with admin.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
            other.commit()
    finally:
        admin.dispose()
    # The server's goodbye arrives on the pooled connection's socket.
    assert select.select([dbapi_conn.fileno()], [], [], 5)[0], (
        "the terminated backend's socket never became readable"
    )
    replaced = _backend_pid()  # no error: the checkout saw the readable socket, pinged, reconnected
    assert replaced != victim
    assert len(pings) == 1
    assert _backend_pid() == replaced


def test_a_connection_the_driver_closed_is_replaced_at_checkout(pings: list[object]) -> None:
    engine = db.get_engine()
    engine.dispose()
    with engine.connect() as conn:
        dbapi_conn = conn.connection.driver_connection
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        conn.commit()
    dbapi_conn.close()  # behind the pool's back: no socket left to poll
    assert _backend_pid() != first
