"""Idempotency-Key handling shared by every POST that creates (jobs, studies, sweeps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.errors import Invalid

Row = TypeVar("Row")


def check_same_body(stored_hash: str | None, digest: str) -> None:
    """Same key, different body: refused, so a retried request can never mean two things."""
    if stored_hash != digest:
        raise Invalid("Idempotency-Key was already used with a different request body")


def commit_or_winner(session: Session, *, find_existing: Callable[[], Row | None]) -> Row | None:
    """Commit the new row; if a concurrent request with the same key committed first (the unique
    (project, key) constraint fires), return that request's row instead."""
    try:
        session.commit()
        return None
    except IntegrityError:
        session.rollback()
        existing = find_existing()
        if existing is None:
            raise
        return existing
