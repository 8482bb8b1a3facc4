"""Bearer tokens per project. Only a token's SHA-256 is stored, and lookups go by that hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import ApiToken, Project

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
    # The lookup is by hash; compare again in constant time so timing says nothing about near misses.
    if row is None or not hmac.compare_digest(row[0].token_hash, digest):
        raise TokenRefused(UNKNOWN_TOKEN)
    if row[0].revoked:
        raise TokenRefused(REVOKED_TOKEN)
    return row[1]
