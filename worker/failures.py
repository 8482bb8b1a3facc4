"""A failed job's ``error``: one line in domain words, for the API, the CLI and the dashboard.

The traceback, the SQL and its parameters go to the worker's log with the job id; the job row says
what failed in terms a user can act on, never how the code failed.
"""

from __future__ import annotations

import re

import torch
from sqlalchemy.exc import SQLAlchemyError

MAX_LENGTH = 300
# Text that only a developer should see: SQL, traceback lines, source paths.
_INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|\bSELECT\b|\bINSERT\b|\bUPDATE\b|\bDELETE\b|\[SQL|\[parameters", re.IGNORECASE
)


def describe_failure(exc: BaseException, phase: str) -> str:
    """One line: the phase that failed and why. Messages the code writes for users (``ValueError``,
    ``LookupError`` other than an index or key error: a missing dataset, a bad column) are kept; anything else is named, not quoted."""
    return f"{phase} failed: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return "out of memory; use a smaller batch_size, model or analysis.hessian.samples"
    if isinstance(exc, SQLAlchemyError):
        return "the database refused a write; the worker log has the details"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    written_for_users = isinstance(exc, ValueError | LookupError) and not isinstance(
        exc, IndexError | KeyError
    )
    if written_for_users and message and not _INTERNALS.search(message):
        return message[:MAX_LENGTH]
    return f"an internal error ({type(exc).__name__}); the worker log has the details"


def one_line(text: str) -> str:
    """A stop reason as stored: its first line, bounded."""
    return (text.strip().splitlines() or [""])[0][:MAX_LENGTH]
