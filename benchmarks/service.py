"""The real service for a benchmark, on this machine: a fresh Postgres database migrated to head, a
private Redis queue, worker processes and the API under uvicorn, torn down afterwards even when the
benchmark fails. Used by sweep.py and job_cost.py.

``os.environ`` is updated before any of our modules read the settings, so the benchmark's own process
(which reads the database directly for timings) talks to the same database as the services."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PG_SERVER = os.environ.get("SADDLE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("SADDLE_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def admin_execute(sql: str) -> None:
    """One statement on the server's ``postgres`` database, outside a transaction (CREATE/DROP)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


@dataclass
class Service:
    http: Any  # httpx.Client with the benchmark's token
    tmp: Path  # logs and artifacts
    env: dict[str, str]
    database: str
    procs: list[Any] = field(default_factory=list)

    def worker_log(self, index: int) -> Path:
        return self.tmp / f"worker{index}.log"


@contextmanager
def running_service(label: str, *, workers: int, keep: bool = False) -> Iterator[Service]:
    """``workers`` worker processes (one training process each, one torch thread each, so they do not
    fight over the cores) and the API; yields once everything answers."""
    run_id = uuid.uuid4().hex[:8]
    database = f"saddle_bench_{label}_{run_id}"
    tmp = Path(tempfile.mkdtemp(prefix=f"saddle-bench-{label}-{run_id}-"))
    env = {
        "SADDLE_DATABASE_URL": f"{PG_SERVER}/{database}",
        "SADDLE_BROKER_URL": REDIS_URL,
        "SADDLE_QUEUE": f"saddle-bench-{label}-{run_id}",
        "SADDLE_ARTIFACTS": str(tmp / "artifacts"),
        "SADDLE_TORCH_THREADS": "1",
    }
    os.environ.update(env)  # before models.settings is first read

    import httpx

    from api.auth import create_token
    from migrations import run_upgrade
    from models.db import session_scope
    from saddle import processes

    admin_execute(f'CREATE DATABASE "{database}"')
    service = Service(http=None, tmp=tmp, env=env, database=database)
    try:
        run_upgrade(env["SADDLE_DATABASE_URL"])
        with session_scope() as session:
            token = create_token(session, "bench", "bench")[1]
        child_env = {**os.environ, **env}
        for i in range(workers):
            log = service.worker_log(i)
            service.procs.append(
                processes.start_worker(child_env, log, concurrency=1, name=f"bench{i}-{run_id}")
            )
            processes.wait_worker_ready(log, process=service.procs[-1], timeout=120)
        port = processes.free_port()
        service.procs.append(processes.start_api(child_env, port, tmp / "api.log"))
        processes.wait_ready(f"http://127.0.0.1:{port}/healthz", process=service.procs[-1])
        service.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        print(f"database {database}, queue {env['SADDLE_QUEUE']}, logs in {tmp}")
        yield service
    finally:
        _tear_down(service, keep)


def _tear_down(service: Service, keep: bool) -> None:
    """Every step runs even when an earlier one fails, so one stuck process cannot leave a database."""
    import redis

    from models.db import _engines
    from saddle import processes

    steps: list[Any] = [lambda p=p: processes.stop(p) for p in service.procs]
    steps.append(lambda: [engine.dispose() for engine in _engines.values()])
    if not keep:
        steps.append(lambda: admin_execute(f'DROP DATABASE IF EXISTS "{service.database}" WITH (FORCE)'))
        steps.append(lambda: shutil.rmtree(service.tmp, ignore_errors=True))
    steps.append(lambda: redis.Redis.from_url(REDIS_URL).delete(service.env["SADDLE_QUEUE"]))
    for step in steps:
        try:
            step()
        except Exception as exc:  # report it and go on with the rest
            print(f"cleanup: {exc}")
