"""The job routes' one-statement token and ownership check (api.auth.job_for_token): the same
answers as the token lookup and the ownership query it replaced, on Postgres and on SQLite, and a
revoked token refused on the very next request."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from api.auth import (
    REVOKED_TOKEN,
    UNKNOWN_TOKEN,
    TokenRefused,
    create_token,
    hash_token,
    job_for_token,
    load_job_for_token,
)
from migrations import run_upgrade
from models.db import session_scope
from models.tables import ApiToken, Job
from tests.conftest import RUN_ID

# The routes whose token and ownership check is one statement: the metrics read, the OwnedJobId
# routes (job_for_token) and the OwnedJob ones (load_job_for_token).
ROUTES = ("/metrics", "/checkpoints", "/spectra", "/diagnoses", "", "/remedies")


def _job(session: Session, project_id: str) -> str:
    job = Job(project_id=project_id, spec={"data": {"dataset": "iris"}})
    session.add(job)
    session.flush()
    return job.id


def test_job_routes_answer_as_before_for_every_kind_of_caller(client: TestClient, other_token: str) -> None:
    with session_scope() as session:
        project, token = create_token(session, f"paths-{RUN_ID}", "paths")
        job_id = _job(session, project.id)
    anonymous = TestClient(client.app)
    for suffix in ROUTES:
        url = f"/v1/jobs/{job_id}{suffix}"
        owner = anonymous.get(url, headers={"Authorization": f"Bearer {token}"})
        assert owner.status_code == 200, (suffix, owner.text)
        missing = anonymous.get(url)
        assert (missing.status_code, missing.json()["detail"]) == (401, "missing bearer token")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert anonymous.get(url, headers={"Authorization": f"Basic {token}"}).status_code == 401
        unknown = anonymous.get(url, headers={"Authorization": f"Bearer {token}x"})
        assert (unknown.status_code, unknown.json()["detail"]) == (401, UNKNOWN_TOKEN)
        intruder = anonymous.get(url, headers={"Authorization": f"Bearer {other_token}"})
        assert (intruder.status_code, intruder.json()["detail"]) == (404, f"job {job_id} not found")
        absent = anonymous.get(f"/v1/jobs/{'0' * 32}{suffix}", headers={"Authorization": f"Bearer {token}"})
        assert absent.status_code == 404
        # An unknown token is refused before the job is looked at, whoever's job it names.
        assert (
            anonymous.get(f"/v1/jobs/{'0' * 32}{suffix}", headers={"Authorization": "Bearer x"}).status_code
            == 401
        )


def test_a_revoked_token_is_refused_on_the_next_request(client: TestClient) -> None:
    with session_scope() as session:
        project, token = create_token(session, f"revoke-{RUN_ID}", "revoke")
        job_id = _job(session, project.id)
    caller = TestClient(client.app, headers={"Authorization": f"Bearer {token}"})
    for suffix in ROUTES:
        assert caller.get(f"/v1/jobs/{job_id}{suffix}").status_code == 200
    with session_scope() as session:
        session.execute(update(ApiToken).where(ApiToken.token_hash == hash_token(token)).values(revoked=True))
    for suffix in ROUTES:
        refused = caller.get(f"/v1/jobs/{job_id}{suffix}")
        assert (refused.status_code, refused.json()["detail"]) == (401, REVOKED_TOKEN), suffix


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_job_for_token_on_both_databases(backend: str, tmp_path, database: str) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'auth.db'}" if backend == "sqlite" else database
    if backend == "sqlite":
        run_upgrade(url)
    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            mine, token = create_token(session, f"mine-{RUN_ID}-{backend}")
            theirs, _ = create_token(session, f"theirs-{RUN_ID}-{backend}")
            my_job, their_job = _job(session, mine.id), _job(session, theirs.id)
        with Session(engine) as session:
            assert job_for_token(session, token, my_job) == my_job
            assert job_for_token(session, token, their_job) is None
            assert job_for_token(session, token, "no-such-job") is None
            assert load_job_for_token(session, token, my_job).id == my_job
            assert load_job_for_token(session, token, their_job) is None
            with pytest.raises(TokenRefused, match=UNKNOWN_TOKEN):
                job_for_token(session, token + "x", my_job)
            session.execute(
                update(ApiToken).where(ApiToken.token_hash == hash_token(token)).values(revoked=True)
            )
            with pytest.raises(TokenRefused, match=REVOKED_TOKEN):
                job_for_token(session, token, my_job)
            with pytest.raises(TokenRefused, match=REVOKED_TOKEN):
                load_job_for_token(session, token, my_job)
            session.rollback()
    finally:
        engine.dispose()
