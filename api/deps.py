"""Request-scoped dependencies: one database session per request, the caller's project, and the
objects a path names, fetched within that project (another project's answer 404 like missing ones)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException
from sqlalchemy.orm import Session

from api.auth import TokenRefused, job_for_token, load_job_for_token, project_for_token
from api.services.sweeps import get_sweep
from models.db import session_scope
from models.errors import NotFound
from models.tables import Job, Project, Sweep


def get_session() -> Iterator[Session]:
    """One session per request: committed when the handler returns, rolled back when it raises."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header, or a 401."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def _refused(refused: TokenRefused) -> HTTPException:
    return HTTPException(401, str(refused), headers={"WWW-Authenticate": "Bearer"})


def current_project(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Project:
    token = bearer_token(authorization)
    try:
        return project_for_token(session, token)
    except TokenRefused as refused:
        raise _refused(refused) from None


def require_owned_job(session: Session, authorization: str | None, job_id: str) -> str:
    """The path's job id once the token is valid (a 401 otherwise, as current_project) and the job
    is its project's (NotFound otherwise, like a missing one): one statement (api.auth.job_for_token)."""
    return _owned(job_for_token, session, authorization, job_id)


def _owned(
    lookup: Callable[[Session, str, str], Any], session: Session, authorization: str | None, job_id: str
) -> Any:
    token = bearer_token(authorization)
    try:
        found = lookup(session, token, job_id)
    except TokenRefused as refused:
        raise _refused(refused) from None
    if found is None:
        raise NotFound(f"job {job_id} not found")
    return found


ProjectDep = Annotated[Project, Depends(current_project)]


def project_without_session(authorization: Annotated[str | None, Header()] = None) -> Project:
    """current_project in a session of its own, closed before the handler runs: for handlers that
    work a long while without the database (uploads), so they hold no pooled connection meanwhile."""
    with session_scope() as session:
        return current_project(session, authorization)


ProjectOnlyDep = Annotated[Project, Depends(project_without_session)]


def owned_job(job_id: str, session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Job:
    """The path's job, checked as require_owned_job in the same one statement."""
    return _owned(load_job_for_token, session, authorization, job_id)


def owned_job_id(
    job_id: str, session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The path's job id once it is known to be the caller's; reads the id only (not the JSON columns)."""
    return require_owned_job(session, authorization, job_id)


def owned_sweep(sweep_id: str, session: SessionDep, project: ProjectDep) -> Sweep:
    return get_sweep(session, project=project, sweep_id=sweep_id)


OwnedJob = Annotated[Job, Depends(owned_job)]
OwnedJobId = Annotated[str, Depends(owned_job_id)]
OwnedSweep = Annotated[Sweep, Depends(owned_sweep)]

# An idempotent POST: the client's key for replaying it safely (api.services.idempotency).
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


def creates(model: type, *, exclude_unset: bool = False) -> dict[str, Any]:
    """Route options of an idempotent POST that creates a ``model``: 201, or 200 when an
    Idempotency-Key replays an earlier request (both in the schema)."""
    return {
        "status_code": 201,
        "response_model": model,
        "responses": {200: {"model": model}},
        "response_model_exclude_unset": exclude_unset,
    }
