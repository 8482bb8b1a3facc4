"""Test session wiring: a fresh Postgres database, a private Redis queue, and real worker and API
processes started on demand. Nothing of ours is mocked.

The environment is set at import time, before any test module imports the application, because the
Celery app and the settings read it once.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

RUN_ID = uuid.uuid4().hex[:10]
PG_ADMIN_URL = os.environ.get("SADDLE_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SADDLE_TEST_REDIS", "redis://127.0.0.1:6379/0")
TEST_DB = f"saddle_test_{RUN_ID}"
TMP = Path(tempfile.mkdtemp(prefix=f"saddle-test-{RUN_ID}-"))

SERVICE_ENV = {
    "SADDLE_DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{TEST_DB}",
    "SADDLE_BROKER_URL": REDIS_URL,
    "SADDLE_QUEUE": f"saddle-test-{RUN_ID}",
    "SADDLE_ARTIFACTS": str(TMP / "artifacts"),
    "SADDLE_HEARTBEAT_SECONDS": "0.5",
    "SADDLE_STALE_AFTER_SECONDS": "6",
    "SADDLE_REAPER_SECONDS": "1",
    "SADDLE_TORCH_THREADS": "1",
}
# The API processes the tests start run a reaper; the test process itself does not (its in-process
# apps come and go, and a reaper outliving the session's database would only log noise).
os.environ.update(SERVICE_ENV | {"SADDLE_REAPER_SECONDS": "0"})


def _admin_execute(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def create_database(name: str) -> str:
    _admin_execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database() -> str:
    """A brand-new database for this test session, migrated to head."""
    from migrations import run_upgrade

    url = create_database(TEST_DB)
    run_upgrade(url)
    yield url
    from models.db import _engines

    for engine in _engines.values():
        engine.dispose()
    drop_database(TEST_DB)
    _drop_queue()


@pytest.fixture(scope="session")
def token(database: str) -> str:
    from api.auth import create_token
    from models.db import session_scope

    with session_scope() as session:
        return create_token(session, f"test-{RUN_ID}", "tests")[1]


@pytest.fixture(scope="session")
def other_token(database: str) -> str:
    from api.auth import create_token
    from models.db import session_scope

    with session_scope() as session:
        return create_token(session, f"other-{RUN_ID}", "tests")[1]


@pytest.fixture()
def client(token: str):
    """The ASGI app in-process over HTTP semantics (httpx), authorized as the test project."""
    from fastapi.testclient import TestClient

    from api.app import app

    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


@pytest.fixture(scope="session")
def worker_process(database: str):
    """A real Celery worker process consuming this session's private queue."""
    from saddle import processes

    log = TMP / "logs" / "worker.log"
    proc = processes.start_worker({**os.environ, **SERVICE_ENV}, log, concurrency=2, name=f"test-{RUN_ID}")
    processes.wait_worker_ready(log, process=proc)
    yield proc
    processes.stop(proc)


def _drop_queue() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).delete(SERVICE_ENV["SADDLE_QUEUE"])


@pytest.fixture(scope="session")
def api_server(database: str) -> str:
    """A real uvicorn process serving the API; returns its base URL."""
    from saddle import processes

    port = processes.free_port()
    proc = processes.start_api({**os.environ, **SERVICE_ENV}, port, TMP / "logs" / "api.log")
    url = f"http://127.0.0.1:{port}"
    processes.wait_ready(f"{url}/healthz", process=proc)
    yield url
    processes.stop(proc)


@pytest.fixture(scope="session")
def sdk(api_server: str, token: str):
    from saddle.client import Client

    return Client(api_server, token)


def tiny_spec(**overrides) -> dict:
    spec = {
        "name": "tiny",
        "data": {"dataset": "iris", "scaling": "standardize"},
        "model": {"arch": "mlp", "hidden": [8]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "batch_size": 16,
        "epochs": 3,
        "analysis": {"hessian": {"every_epochs": 0, "samples": 64}},
    }
    spec.update(overrides)
    return spec


def cancel_unfinished(*where) -> None:  # noqa: ANN001
    """End a test's leftover jobs (those matching ``where``): queued ones now, running ones at their
    next beat. Retried as a whole: a worker's finishing write locks one job row and claims the next
    in one statement, so this multi-row update can meet it in a deadlock, which Postgres resolves by
    aborting one side; the worker retries, and so does this."""
    from sqlalchemy import update

    from models.db import session_scope, with_retries
    from models.tables import Job

    def transaction() -> None:
        with session_scope() as session:
            session.execute(
                update(Job).where(*where, Job.status.in_(("queued", "running"))).values(cancel_requested=True)
            )
            session.execute(update(Job).where(*where, Job.status == "queued").values(status="cancelled"))

    with_retries(transaction)
