"""models.db.with_retries: a dropped connection is tried again with growing delays, an error in the
statement is raised at once, and the last error is raised when the attempts run out."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from models.db import with_retries


def dropped() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionResetError("server closed the connection"))


def flaky(failures: list[BaseException]):  # noqa: ANN201
    """A transaction that raises each of ``failures`` in turn, then answers 42; counts its calls."""
    calls = []

    def work() -> int:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return 42

    return work, calls


def test_a_dropped_connection_is_tried_again_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    invalidated = DBAPIError("SELECT 1", {}, ConnectionResetError("reset"), connection_invalidated=True)
    work, calls = flaky([dropped(), invalidated, dropped()])
    with caplog.at_level(logging.WARNING, logger="saddle.db"):
        assert with_retries(work, attempts=4, first_delay=0.01) == 42
    assert len(calls) == 4
    delays = [record.args[-1] for record in caplog.records]
    assert delays == [0.01, 0.02, 0.04]
    assert "retry 1 of 3" in caplog.records[0].getMessage() and "ConnectionResetError" in caplog.text


def test_an_error_in_the_statement_is_raised_at_once() -> None:
    work, calls = flaky([IntegrityError("INSERT", {}, ValueError("duplicate key"))])
    with pytest.raises(IntegrityError):
        with_retries(work, attempts=4, first_delay=0.01)
    assert len(calls) == 1


def test_the_last_error_is_raised_when_the_attempts_run_out() -> None:
    work, calls = flaky([dropped() for _ in range(5)])
    with pytest.raises(OperationalError):
        with_retries(work, attempts=3, first_delay=0.01)
    assert len(calls) == 3
