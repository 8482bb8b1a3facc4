"""Request-scoped dependencies: one database session per request and the caller's project."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException
from sqlalchemy.orm import Session

from api.auth import TokenRefused, project_for_token
from models.db import session_scope
from models.tables import Project


def get_session() -> Iterator[Session]:
    """One session per request: committed when the handler returns, rolled back when it raises."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_project(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Project:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        return project_for_token(session, token.strip())
    except TokenRefused as refused:
        raise HTTPException(401, str(refused), headers={"WWW-Authenticate": "Bearer"}) from None


ProjectDep = Annotated[Project, Depends(current_project)]


def project_without_session(authorization: Annotated[str | None, Header()] = None) -> Project:
    """current_project in a session of its own, closed before the handler runs: for handlers that
    work a long while without the database (uploads), so they hold no pooled connection meanwhile."""
    with session_scope() as session:
        return current_project(session, authorization)


ProjectOnlyDep = Annotated[Project, Depends(project_without_session)]
