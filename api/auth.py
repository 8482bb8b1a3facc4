"""Bearer tokens per project. Only a token's SHA-256 is stored, and lookups go by that hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import Session

from models.tables import ApiToken, Job, Project

TOKEN_PREFIX = "sdl_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, project_name: str, token_name: str = "") -> tuple[Project, str]:
    """Create the project if needed and a new token for it; the token is returned once, here."""
    project = session.scalars(select(Project).where(Project.name == project_name)).one_or_none()
    if project is None:
        project = Project(name=project_name)
        session.add(project)
        session.flush()
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(project_id=project.id, token_hash=hash_token(token), name=token_name))
    session.flush()
    return project, token


class TokenRefused(Exception):
    """The bearer token does not open any project; the message says why, in the user's terms."""


# A token this server never issued is far more often a typo or a token of another server (another
# demo, another deployment) than a revoked one, so only a token found revoked is called revoked.
UNKNOWN_TOKEN = "not a valid token for this server"
REVOKED_TOKEN = "this token was revoked"


def project_for_token(session: Session, token: str) -> Project:
    """The token's project, or TokenRefused naming why not."""
    digest = hash_token(token)
    row = session.execute(
        select(ApiToken, Project)
        .join(Project, Project.id == ApiToken.project_id)
        .where(ApiToken.token_hash == digest)
    ).first()
    _check(None if row is None else row[0].token_hash, None if row is None else row[0].revoked, digest)
    return row[1]


def _check(stored_hash: str | None, revoked: bool | None, digest: str) -> None:
    """TokenRefused unless the lookup found the token and it is not revoked."""
    # The lookup is by hash; compare again in constant time so timing says nothing about near misses.
    if stored_hash is None or not hmac.compare_digest(stored_hash, digest):
        raise TokenRefused(UNKNOWN_TOKEN)
    if revoked:
        raise TokenRefused(REVOKED_TOKEN)


# The token and, in the same statement, the path's job if it is the token's project's: one round
# trip and plain columns (as Core rows), where project_for_token and a second query for the job
# cost two round trips and the ORM's processing of a token and a project (~1.1 ms of a request on 2
# busy cores; benchmarks/README.md, ingest.py). Read fresh on every request, like project_for_token:
# a revoked token fails at once.
_TOKENS, _JOBS = ApiToken.__table__, Job.__table__
TOKEN_AND_JOB = (
    select(_TOKENS.c.token_hash, _TOKENS.c.revoked, _JOBS.c.id)
    .select_from(
        _TOKENS.outerjoin(
            _JOBS, and_(_JOBS.c.project_id == _TOKENS.c.project_id, _JOBS.c.id == bindparam("job_id"))
        )
    )
    .where(_TOKENS.c.token_hash == bindparam("digest"))
)


def job_for_token(session: Session, token: str, job_id: str) -> str | None:
    """``job_id`` if that job belongs to the token's project, None if it does not (or does not
    exist); TokenRefused, as project_for_token, when the token opens nothing."""
    digest = hash_token(token)
    row = session.execute(TOKEN_AND_JOB, {"digest": digest, "job_id": job_id}).first()
    _check(None if row is None else row[0], None if row is None else row[1], digest)
    return row[2]


# The same check, loading the job itself (ORM): for routes that need the row, not just its id.
TOKEN_AND_LOADED_JOB = (
    select(ApiToken.token_hash, ApiToken.revoked, Job)
    .select_from(ApiToken)
    .outerjoin(Job, and_(Job.project_id == ApiToken.project_id, Job.id == bindparam("job_id")))
    .where(ApiToken.token_hash == bindparam("digest"))
)


def load_job_for_token(session: Session, token: str, job_id: str) -> Job | None:
    """As job_for_token, but the job itself (None if it is not the token's project's)."""
    digest = hash_token(token)
    row = session.execute(TOKEN_AND_LOADED_JOB, {"digest": digest, "job_id": job_id}).first()
    _check(None if row is None else row[0], None if row is None else row[1], digest)
    return row[2]
