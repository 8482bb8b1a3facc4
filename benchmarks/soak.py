"""Soak: 200 jobs through 2 workers while a worker is killed twice and Redis restarts once.

Everything is the real service on this machine: a fresh Postgres database (created here, dropped at
the end), a private ``redis-server`` on its own port (the shared one on 6379 is left alone), the API
under uvicorn with its reaper, and two worker processes (``saddle.processes``), one training process
each. All jobs are submitted at once from 16 threads, then, as jobs finish:

    at 20% done   kill -9 worker 1 (its whole process group) mid-job, start a new worker 1
    at 45% done   kill Redis (it keeps nothing on disk: every queued message is gone), start it again
    at 70% done   kill -9 worker 1 again, start a new one

Pass: every job succeeded, and every job has exactly the metric rows its spec implies (per-update
series at steps 1..E*U, per-epoch series at the epoch ends, gradient statistics every
``Trainer.grad_stats_stride(U)``-th update;
``tests/metric_expectations.py``), none missing and none twice. Printed: wall time, attempts per job,
the reaper's re-queues, rows checked.

    .venv/bin/python benchmarks/soak.py [--jobs 200] [--epochs 8] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PG_SERVER = os.environ.get("SADDLE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
WORKERS = 2
SUBMIT_THREADS = 16
TIMEOUT_S = 3600

SPEC: dict[str, Any] = {
    "data": {"dataset": "iris", "scaling": "standardize"},
    "model": {"arch": "mlp", "hidden": [16]},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 8,
    "checkpoints": {"every_epochs": 2},
    "analysis": {"hessian": {"enabled": False}},
}


def admin(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def start_redis(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=open(log, "ab"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.1)
    return proc


def status_counts() -> Counter:
    from sqlalchemy import func, select

    from models.db import session_scope
    from models.tables import Job

    with session_scope() as session:
        return Counter(dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all()))


def running_mid_job() -> bool:
    """Some job is past its first epoch: a kill now lands mid-run, after a checkpoint or two."""
    from sqlalchemy import select

    from models.db import session_scope
    from models.tables import Job

    with session_scope() as session:
        progress = session.scalars(select(Job.progress).where(Job.status == "running")).all()
    return any((p or {}).get("epoch", 0) >= 2 for p in progress)


def verify(epochs: int) -> dict[str, Any]:
    from sqlalchemy import select

    from models.db import session_scope
    from models.tables import Job
    from tests.metric_expectations import metric_problems, updates_per_epoch

    with session_scope() as session:
        jobs = session.execute(select(Job.id, Job.status, Job.attempts, Job.spec, Job.error)).all()
        problems: dict[str, list[str]] = {}
        rows_checked = 0
        rows_expected_per_job: set[int] = set()
        for job_id, _status, _attempts, spec, _error in jobs:
            updates = updates_per_epoch(spec)
            found, rows = metric_problems(session, job_id, epochs, updates)
            rows_checked += rows
            if found:
                problems[job_id] = found
            else:
                rows_expected_per_job.add(rows)
    return {
        "jobs": len(jobs),
        "statuses": Counter(status for _, status, *_ in jobs),
        "attempts": Counter(attempts for _, _, attempts, *_ in jobs),
        "errors": [(job_id, error) for job_id, status, _, _, error in jobs if status != "succeeded"],
        "problems": problems,
        "rows_checked": rows_checked,
        "rows_per_job": sorted(rows_expected_per_job),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when piped to a file

    run_id = uuid.uuid4().hex[:8]
    db = f"saddle_soak_{run_id}"
    tmp = Path(tempfile.mkdtemp(prefix=f"saddle-soak-{run_id}-"))
    from saddle import processes

    redis_port = processes.free_port()
    env = {
        "SADDLE_DATABASE_URL": f"{PG_SERVER}/{db}",
        "SADDLE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SADDLE_QUEUE": f"saddle-soak-{run_id}",
        "SADDLE_ARTIFACTS": str(tmp / "artifacts"),
        "SADDLE_TORCH_THREADS": "1",  # two training processes on two cores
        "SADDLE_HEARTBEAT_SECONDS": "0.5",
        "SADDLE_STALE_AFTER_SECONDS": "6",  # how long a killed worker's job waits for the reaper
        "SADDLE_REAPER_SECONDS": "1",
    }
    os.environ.update(env)  # before models.settings is first read

    import httpx

    from api.auth import create_token
    from migrations import run_upgrade
    from models.db import _engines, session_scope

    redis = start_redis(redis_port, tmp / "redis.log")
    admin(f'CREATE DATABASE "{db}"')
    workers: dict[int, subprocess.Popen] = {}
    others: list[subprocess.Popen] = []
    events: list[tuple[float, str]] = []
    passed = False
    try:
        run_upgrade(env["SADDLE_DATABASE_URL"])
        with session_scope() as session:
            token = create_token(session, "soak", "soak")[1]
        child_env = {**os.environ, **env}
        generation = Counter()

        def start_worker(i: int) -> None:
            generation[i] += 1
            log = tmp / f"worker{i}-{generation[i]}.log"
            workers[i] = processes.start_worker(
                child_env, log, concurrency=1, name=f"soak{i}-{generation[i]}"
            )
            processes.wait_worker_ready(log, process=workers[i], timeout=120)

        for i in range(WORKERS):
            start_worker(i)
        port = processes.free_port()
        others.append(processes.start_api(child_env, port, tmp / "api.log"))
        processes.wait_ready(f"http://127.0.0.1:{port}/healthz", process=others[-1])
        print(f"database {db}, redis on port {redis_port}, logs in {tmp}")
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before the run")

        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

        def submit(i: int) -> str:
            body = {**SPEC, "name": f"soak-{i}", "seed": i, "epochs": args.epochs}
            response = http.post("/v1/jobs", json=body)
            response.raise_for_status()
            return response.json()["id"]

        started = time.monotonic()
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            ids = list(pool.map(submit, range(args.jobs)))
        submitted = time.monotonic() - started
        print(f"submitted {len(ids)} jobs in {submitted:.1f} s from {SUBMIT_THREADS} threads")

        def log_event(what: str) -> None:
            at = time.monotonic() - started
            events.append((at, what))
            print(f"  t={at:6.1f} s  {what}", flush=True)

        def kill_worker() -> None:
            deadline = time.monotonic() + 30
            while not running_mid_job() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(workers[1].pid, signal.SIGKILL)
            workers[1].wait(10)
            log_event("kill -9 worker 1")
            start_worker(1)
            log_event("worker 1 restarted")

        def restart_redis() -> None:
            nonlocal redis
            redis.kill()
            redis.wait(10)
            log_event("redis killed (queued messages lost)")
            time.sleep(1)
            redis = start_redis(redis_port, tmp / "redis.log")
            log_event("redis started")

        plan = [(0.20, kill_worker), (0.45, restart_redis), (0.70, kill_worker)]
        last_report = 0.0
        while True:
            counts = status_counts()
            finished = sum(counts[s] for s in ("succeeded", "failed", "cancelled"))
            while plan and finished >= plan[0][0] * args.jobs:
                plan.pop(0)[1]()
            now = time.monotonic() - started
            if now - last_report >= 15:
                print(f"  t={now:6.1f} s  {dict(counts)}", flush=True)
                last_report = now
            if finished == args.jobs:
                break
            if now > TIMEOUT_S:
                print(f"timed out after {TIMEOUT_S} s: {dict(counts)}")
                break
            time.sleep(0.25)
        wall = time.monotonic() - started
        print(f"load average {os.getloadavg()[0]:.1f} after the run (1-minute)")

        result = verify(args.epochs)
        api_log = (tmp / "api.log").read_text(errors="replace")
        requeued = api_log.count("re-queued")
        broker_restarts = api_log.count("broker restarted")
        restored = api_log.count("held by a lost worker")
        succeeded = result["statuses"]["succeeded"]
        print()
        print(f"jobs                         {result['jobs']} ({args.epochs} epochs of iris each)")
        print(f"statuses                     {dict(result['statuses'])}")
        print(f"wall time                    {wall:.1f} s (submit to last job finished)")
        print(f"throughput                   {succeeded / wall * 60:.1f} jobs/min on {WORKERS} workers")
        attempts = ", ".join(f"{k} attempt(s): {v}" for k, v in sorted(result["attempts"].items()))
        print(f"attempts per job             {attempts}")
        print(
            f"reaper                       {requeued} stale running job(s) re-queued, {restored} message(s)"
            f" of dead workers restored, {broker_restarts} broker restart(s) seen"
        )
        print(
            f"chaos events                 {len([e for e in events if 'kill' in e[1] or 'started' in e[1]])}"
        )
        print(
            f"metric rows checked          {result['rows_checked']} "
            f"(per job: {result['rows_per_job']}); jobs with missing/duplicate rows: {len(result['problems'])}"
        )
        for job_id, found in list(result["problems"].items())[:5]:
            print(f"  {job_id}: {found[:3]}")
        for job_id, error in result["errors"][:5]:
            print(f"  {job_id} not succeeded: {(error or '')[:200]}")
        kills = sum(1 for _, what in events if what.startswith("kill"))
        passed = (
            succeeded == args.jobs
            and not result["problems"]
            and kills == 2
            and any("redis started" in what for _, what in events)
        )
        print("PASS" if passed else "FAIL")
        return 0 if passed else 1
    finally:
        for proc in [*workers.values(), *others]:
            processes.stop(proc)
        redis.kill()
        redis.wait(10)
        for engine in _engines.values():
            engine.dispose()
        if not args.keep:
            admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
