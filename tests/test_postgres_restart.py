"""Postgres restarted mid-run: the worker retries its writes and the job finishes with every metric
row once; while the database is away the API answers 503, never 500.

Runs against a private Postgres cluster (initdb into a temp dir, its own port; restarting the shared
server would disturb other test runs) with its own API (and reaper) and worker on a private queue.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from models.tables import Job, Project
from saddle import processes
from saddle.client import Client
from tests.conftest import RUN_ID, SERVICE_ENV, TMP
from tests.metric_expectations import metric_problems, updates_per_epoch
from tests.test_reliability import SLOW_SPEC

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
SPEC = {**SLOW_SPEC, "name": "pg-restart", "epochs": 8}

pytestmark = pytest.mark.skipif(not PG_BIN, reason="no PostgreSQL server binaries")


class PrivateCluster:
    """A throwaway Postgres cluster; as root, its commands run as the ``postgres`` OS user."""

    def __init__(self) -> None:
        self.bin = Path(PG_BIN[-1]) if PG_BIN else Path()
        self.root = Path(tempfile.mkdtemp(prefix=f"saddle-pg-{RUN_ID}-"))
        self.data = self.root / "data"
        self.port = processes.free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/saddle"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """A private cluster with a migrated ``saddle`` database."""
    from migrations import run_upgrade

    pg = PrivateCluster()
    try:
        pg.init()
        pg.start()
        admin = create_engine(pg.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE saddle")
        admin.dispose()
        run_upgrade(pg.url)
        yield pg
    finally:
        pg.destroy()


@pytest.fixture()
def engine(cluster: PrivateCluster):
    engine = create_engine(cluster.url, pool_pre_ping=True)
    yield engine
    engine.dispose()


def new_token(engine) -> str:  # noqa: ANN001
    from api.auth import create_token

    with Session(engine) as session:
        token = create_token(session, f"pg-{RUN_ID}", "tests")[1]
        session.commit()
    return token


def test_a_postgres_restart_mid_run_loses_nothing_and_the_api_says_503(
    cluster: PrivateCluster, engine
) -> None:  # noqa: ANN001
    token = new_token(engine)

    env = {
        **os.environ,
        **SERVICE_ENV,
        "SADDLE_DATABASE_URL": cluster.url,
        "SADDLE_QUEUE": f"saddle-pg-{RUN_ID}",
        # Long enough that the reaper does not hand the job to a new attempt: this worker must
        # carry it through the outage by retrying its own writes.
        "SADDLE_STALE_AFTER_SECONDS": "60",
    }
    api_port = processes.free_port()
    url = f"http://127.0.0.1:{api_port}"
    logs = TMP / "logs"
    api = processes.start_api(env, api_port, logs / "pg-api.log")
    worker = processes.start_worker(env, logs / "pg-worker.log", concurrency=1, name="pg")
    down: list[httpx.Response] = []
    try:
        processes.wait_ready(f"{url}/healthz", process=api)
        processes.wait_worker_ready(logs / "pg-worker.log", process=worker)
        sdk = Client(url, token)
        job = sdk.submit(SPEC)
        deadline = time.monotonic() + 120
        while (sdk.job(job["id"])["progress"] or {}).get("epoch", 0) < 3:
            assert time.monotonic() < deadline, "job did not reach epoch 3"
            time.sleep(0.2)

        cluster.stop()  # fast shutdown: every open connection is cut
        headers = {"Authorization": f"Bearer {token}"}
        outage_end = time.monotonic() + 5  # several epochs' writes fall into the outage
        while time.monotonic() < outage_end:
            down.append(httpx.get(f"{url}/v1/jobs", headers=headers, timeout=10))
            down.append(httpx.get(f"{url}/v1/jobs/{job['id']}", headers=headers, timeout=10))
            time.sleep(0.3)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        live = httpx.get(f"{url}/healthz", timeout=10)
        cluster.start()

        final = sdk.wait(job["id"], timeout=300)
    finally:
        processes.stop(worker)
        processes.stop(api)

    assert {r.status_code for r in down} == {503}, [(r.status_code, r.text[:200]) for r in down]
    assert all(r.headers.get("retry-after") for r in down)
    assert (ready.status_code, live.status_code) == (503, 200)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 1  # the same worker carried the job through the outage
    assert final["verdict"]
    with Session(engine) as session:
        problems, rows = metric_problems(session, job["id"], SPEC["epochs"], updates_per_epoch(SPEC))
        assert session.scalar(select(Job.progress).where(Job.id == job["id"]))["epoch"] == SPEC["epochs"]
    assert not problems, problems
    assert rows > SPEC["epochs"] * updates_per_epoch(SPEC)
    # The outage did reach the worker's writes, and it waited them out.
    assert "database connection lost" in (logs / "pg-worker.log").read_text()


def test_a_claim_during_an_outage_waits_for_the_database(cluster: PrivateCluster, engine) -> None:  # noqa: ANN001
    """A delivery that arrives while Postgres is down must not give up: its message would be acked
    and the job left queued with nothing to run it."""
    from models.settings import get_settings
    from worker.lifecycle import claim, finish

    new_token(engine)
    with Session(engine) as session:
        project = session.scalars(select(Project).where(Project.name == f"pg-{RUN_ID}")).one()
        job = Job(project_id=project.id, spec={"data": {"dataset": "iris"}})
        session.add(job)
        session.commit()
        job_id = job.id
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SADDLE_DATABASE_URL", cluster.url)
        get_settings.cache_clear()
        try:
            cluster.stop()
            restart = threading.Timer(3.0, cluster.start)
            restart.start()
            started = time.monotonic()
            job_claim = claim(job_id)
            waited = time.monotonic() - started
            restart.join()
            assert job_claim is not None and job_claim.attempt == 1
            assert waited >= 2.5
            finish(job_claim, "cancelled", error="test")
        finally:
            restart.join()
            get_settings.cache_clear()
    with Session(engine) as session:
        assert session.get(Job, job_id).status == "cancelled"
