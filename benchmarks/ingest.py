"""Metric ingestion and read latency: Saddle against MLflow's tracking server, on the same Postgres.

Saddle's figures go through the service's own code: ingestion is the worker's metric writer
(``worker.metric_writer.MetricWriter``: the fenced heartbeat UPDATE of the job row and the
append in one statement, ``models.metrics.append_fenced``, one transaction per 1,000-point batch,
on the writer's thread), with 1, 2, 4 and 8 jobs writing at once, each in a process of its own;
the reads are the real API
(``GET /v1/jobs/{id}/metrics``) served by uvicorn in its own process and read the way users read
it, through ``saddle.client.Client.metrics``: a 10,000-point series, and a 1,000,000-point one
downsampled to 2,000 points. MLflow's server runs from a separate virtualenv (``.bench-venv``) and
is driven over REST with the same httpx client and the same JSON parser as Saddle's client
(orjson), so neither side pays for a client library or a parser the other does not. The read ratio
compares reads taken in turn, one MLflow read and one Saddle read (Saddle's API stays up), so both
medians come from the same minutes; Saddle's reads in its own phase are reported beside it.

    .venv/bin/python benchmarks/ingest.py [--points N] [--mlflow-points N] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.service import PG_SERVER, REDIS_URL, admin_execute  # noqa: E402

MLFLOW_BIN = REPO / ".bench-venv" / "bin" / "mlflow"

# Series logged at every step, as the worker logs several series at the end of each epoch.
SERIES = ("train/loss", "val/loss", "train/accuracy", "val/accuracy", "train/lr")
READ_SERIES = "train/loss"
READ_POINTS = 10_000
# Each job (or MLflow run) of the ingestion stream holds READ_POINTS steps of every series, so the
# first one doubles as the read target: its train/loss is a full 10,000-point series.
POINTS_PER_JOB = READ_POINTS * len(SERIES)
MLFLOW_BATCH = 1_000  # log-batch refuses more than 1,000 metrics per request
READ_REPEATS = 20
WARMUP_READS = 3

# Targets of issue 18: at least 100x MLflow's ingestion rate (at every number of concurrent jobs), at
# most 1/50 of its read latency, and a 1,000,000-point series downsampled to 2,000 points at p95 <= 30 ms.
TARGET_INGEST = 100.0
TARGET_READ = 50.0
TARGET_DOWNSAMPLED_P95 = 0.030
CONCURRENT_JOBS = (1, 2, 4, 8)
LONG_POINTS = 1_000_000
LONG_MAX_POINTS = 2_000

T = TypeVar("T")


@dataclass
class Row:
    system: str
    operation: str
    points: int
    seconds: float
    figure: str


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    saddle_rate: float = 0.0
    saddle_read: float = 0.0  # the median the read target compares: alternated with MLflow's when it ran
    saddle_read_alone: float = 0.0  # Saddle's reads in its own phase, minutes before MLflow's
    saddle_reader: tuple[str, str, str] | None = None  # API URL, token, job: for the alternated reads
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # jobs, points/s, worst p95
    long_p95: float | None = None
    mlflow_rate: float | None = None
    mlflow_read: float | None = None


# ---------------------------------------------------------------- data


def job_steps(job_index: int, count: int) -> Iterator[tuple[str, int, float, float]]:
    """``count`` points of one job, step-major: every series at step 0, then at step 1, ..."""
    for i in range(count):
        step, series = divmod(i, len(SERIES))
        # A decaying curve with a little texture: real-looking values, nothing special to compress.
        value = math.exp(-step / 4_000) + 0.01 * math.sin(step + job_index + series)
        yield SERIES[series], step, step / 100, value


def job_sizes(total: int) -> list[int]:
    """Split ``total`` points into jobs of POINTS_PER_JOB; the last one takes the remainder."""
    sizes = [POINTS_PER_JOB] * (total // POINTS_PER_JOB)
    if total % POINTS_PER_JOB:
        sizes.append(total % POINTS_PER_JOB)
    return sizes


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return statistics.median(ordered), p95


# ---------------------------------------------------------------- databases


def create_database(name: str) -> None:
    admin_execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------- Saddle


def seed_project(n_jobs: int) -> tuple[str, list[tuple[str, str]]]:
    """A project token and ``n_jobs`` running jobs as (id, attempt token), as if a worker claimed them."""
    from api.auth import create_token
    from models.db import session_scope
    from models.tables import Job, new_id, utcnow

    with session_scope() as session:
        project, token = create_token(session, "bench", "bench")
        jobs = [
            Job(
                project_id=project.id,
                name=f"bench-{i}",
                status="running",
                spec={"data": {"dataset": "iris"}},
                attempts=1,
                attempt_token=new_id(),
                started_at=utcnow(),
            )
            for i in range(n_jobs)
        ]
        session.add_all(jobs)
        session.flush()
        return token, [(job.id, job.attempt_token or "") for job in jobs]


def saddle_batches(jobs: list[tuple[str, str]], total: int, batch: int) -> list[tuple[str, str, list[Any]]]:
    """(job id, attempt token, points) per transaction, built before the clock starts."""
    from models.metrics import Point

    out: list[tuple[str, str, list[Any]]] = []
    for index, ((job_id, token), size) in enumerate(zip(jobs, job_sizes(total), strict=False)):
        points = [Point(*p) for p in job_steps(index, size)]
        out.extend((job_id, token, part) for part in chunks(points, batch))
    return out


def saddle_ingest(batches: list[tuple[str, str, list[Any]]]) -> float:
    """Commit every batch inline, as DbRecorder did before the metric writer (synchronous commit):
    the reference row. Returns the seconds taken."""
    from sqlalchemy import update

    from models.db import session_scope
    from models.metrics import write_points
    from models.tables import Job, utcnow

    started = time.perf_counter()
    for job_id, token, points in batches:
        with session_scope() as session:
            # The worker's fenced_update: the heartbeat rides in the same transaction as the points.
            result = session.execute(
                update(Job).where(Job.id == job_id, Job.attempt_token == token).values(heartbeat_at=utcnow())
            )
            if result.rowcount != 1:
                raise RuntimeError(f"job {job_id}: the fenced heartbeat update matched no row")
            write_points(session, job_id, points)
    return time.perf_counter() - started


def writer_job(job: tuple[str, str], index: int, count: int, start: Any, out: Any) -> None:
    """One job's stream through the worker's MetricWriter (a process of its own, like a worker's
    training process): 1,000-point batches, one transaction each, then the closing flush.
    Puts (points, start, end, commit latencies) on ``out``."""
    from models.metrics import Point
    from models.spec import JobSpec
    from worker.lifecycle import Claim
    from worker.metric_writer import MetricWriter

    class TimedWriter(MetricWriter):
        latencies: list[float] = []  # one writer per process

        def _commit(self, conn: Any, batches: list[Any]) -> None:
            began = time.perf_counter()
            super()._commit(conn, batches)
            self.latencies.append(time.perf_counter() - began)

    batches = list(chunks([Point(*p) for p in job_steps(index, count)], MLFLOW_BATCH))
    claim = Claim(job[0], job[1], 1, JobSpec.model_validate({"data": {"dataset": "iris"}}), "")
    writer = TimedWriter(
        claim, batch_points=MLFLOW_BATCH, queue_batches=8, max_transaction_points=MLFLOW_BATCH
    )
    start.wait()
    began = time.monotonic()
    for batch in batches:
        writer.log(batch)
    writer.close()
    out.put((count, began, time.monotonic(), writer.latencies))


def concurrent_ingest(jobs: list[tuple[str, str]], total: int) -> tuple[float, float]:
    """``total`` points split over ``jobs`` writing at once; (points/s, worst per-job p95 commit)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(len(jobs) + 1), ctx.Queue()
    per_job = total // len(jobs)
    procs = [ctx.Process(target=writer_job, args=(job, i, per_job, start, out)) for i, job in enumerate(jobs)]
    for proc in procs:
        proc.start()
    start.wait(timeout=300)  # every process imported and built its batches before the clock starts
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    points = sum(r[0] for r in results)
    seconds = max(r[2] for r in results) - min(r[1] for r in results)
    return points / seconds, max(summary(r[3])[1] for r in results)


def saddle_read(base_url: str, token: str, job_id: str) -> list[float]:
    from saddle.client import Client

    samples: list[float] = []
    with Client(base_url, token, timeout=60) as client:
        for i in range(WARMUP_READS + READ_REPEATS):
            elapsed = saddle_read_once(client, job_id)
            if i >= WARMUP_READS:
                samples.append(elapsed)
    return samples


def saddle_read_once(client: Any, job_id: str) -> float:
    """Seconds for one full read through ``saddle.client.Client.metrics`` (JSON decoding included)."""
    started = time.perf_counter()
    body = client.metrics(job_id, READ_SERIES, max_points=READ_POINTS)
    elapsed = time.perf_counter() - started
    check_saddle_series(body)
    return elapsed


def check_saddle_series(body: dict[str, Any]) -> None:
    series = body["series"]
    if len(series) != 1 or series[0]["downsampled"] or len(series[0]["values"]) != READ_POINTS:
        raise RuntimeError(f"expected one full {READ_POINTS}-point series, got {summarize_body(series)}")


def summarize_body(series: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['name']}: {len(s['values'])} pts, downsampled={s['downsampled']}" for s in series)


def run_saddle(args: argparse.Namespace, tmp: Path, results: Results, procs: list[Any]) -> None:
    from migrations import run_upgrade
    from saddle.processes import free_port, start_api, wait_ready

    run_upgrade(os.environ["SADDLE_DATABASE_URL"])
    jobs_1k = len(job_sizes(args.points))
    token, job_ids = seed_project(jobs_1k + sum(CONCURRENT_JOBS) + 2)
    inline, rest = job_ids[:jobs_1k], job_ids[jobs_1k:]
    spare, long_job, rest = rest[0], rest[1], rest[2:]

    seconds = saddle_ingest(saddle_batches(inline, args.points, MLFLOW_BATCH))
    rate = args.points / seconds
    results.rows.append(
        Row(
            "saddle",
            "inline write, synchronous commit (before)",
            args.points,
            seconds,
            f"{rate:,.0f} points/s",
        )
    )
    for n in CONCURRENT_JOBS:
        jobs, rest = rest[:n], rest[n:]
        rate, p95 = concurrent_ingest(jobs, args.points)
        results.curve.append((n, rate, p95))
        if n == 1:
            results.saddle_rate = rate
        figure = f"{rate:,.0f} points/s, per-job p95 commit {p95 * 1000:.1f} ms"
        results.rows.append(
            Row("saddle", f"metric writer, {n} job(s), 1,000/batch", args.points, args.points / rate, figure)
        )
    read_job = read_target(inline[0], spare, args.points)
    fill_long_series(long_job[0])

    port = free_port()
    api = start_api(dict(os.environ), port, tmp / "api.log")
    procs.append(api)
    wait_ready(f"http://127.0.0.1:{port}/healthz", process=api)
    base_url = f"http://127.0.0.1:{port}"
    samples = saddle_read(base_url, token, read_job)
    results.saddle_read = results.saddle_read_alone = add_read_row(
        results, "saddle", "GET /v1/jobs/{id}/metrics, alone", samples
    )
    results.saddle_reader = (base_url, token, read_job)
    first, samples = long_read(base_url, token, long_job[0])
    results.rows.append(
        Row(
            "saddle",
            "1,000,000 -> 2,000 points, first read (fills rollups)",
            LONG_POINTS,
            first,
            f"{first * 1000:,.0f} ms",
        )
    )
    median, p95 = summary(samples)
    results.long_p95 = p95
    results.rows.append(
        Row(
            "saddle",
            "1,000,000 -> 2,000 points",
            LONG_POINTS,
            median,
            f"median {median * 1000:,.1f} ms, p95 {p95 * 1000:,.1f} ms (n={len(samples)})",
        )
    )


def fill_long_series(job_id: str) -> None:
    """train/batch_loss at 1,000,000 steps, written untimed as whole arrays."""
    import numpy as np

    from models.db import session_scope
    from models.metrics import sorted_block, write_blocks

    steps = np.arange(LONG_POINTS)
    values = np.exp(-steps / 200_000) + 0.05 * np.sin(steps / 50)
    with session_scope() as session:
        write_blocks(session, job_id, [sorted_block(READ_SERIES, steps, steps / 1_000, values)])


def long_read(base_url: str, token: str, job_id: str) -> tuple[float, list[float]]:
    """The downsampled read of the long series: the first one alone, then READ_REPEATS after warm-ups."""
    from saddle.client import Client

    timings: list[float] = []
    with Client(base_url, token, timeout=120) as client:
        for _ in range(1 + WARMUP_READS + READ_REPEATS):
            started = time.perf_counter()
            series = client.metrics(job_id, READ_SERIES, max_points=LONG_MAX_POINTS)["series"][0]
            timings.append(time.perf_counter() - started)
            if series["total_points"] != LONG_POINTS or len(series["values"]) > LONG_MAX_POINTS:
                raise RuntimeError(f"long read: {summarize_body([series])}")
    return timings[0], timings[1 + WARMUP_READS :]


def read_target(first_job: tuple[str, str], spare_job: tuple[str, str], ingested: int) -> str:
    """The first ingested job, or (small --points) a spare one filled, untimed, to 10,000 steps."""
    if ingested >= POINTS_PER_JOB:
        return first_job[0]
    saddle_ingest(saddle_batches([spare_job], POINTS_PER_JOB, 5_000))
    return spare_job[0]


def add_read_row(results: Results, system: str, operation: str, samples: list[float]) -> float:
    median, p95 = summary(samples)
    figure = f"median {median * 1000:,.1f} ms, p95 {p95 * 1000:,.1f} ms (n={len(samples)})"
    results.rows.append(Row(system, operation, READ_POINTS, median, figure))
    return median


# ---------------------------------------------------------------- MLflow


def start_mlflow(db_url: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    if not MLFLOW_BIN.exists():
        raise SystemExit(
            f"{MLFLOW_BIN} is missing: python3 -m venv .bench-venv && "
            ".bench-venv/bin/pip install mlflow psycopg2-binary (or pass --no-mlflow)"
        )
    log = open(tmp / "mlflow.log", "ab")  # noqa: SIM115 - the child owns it for its lifetime
    return subprocess.Popen(
        [
            str(MLFLOW_BIN), "server",
            "--backend-store-uri", db_url,
            "--default-artifact-root", str(tmp / "mlflow-artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so stop() can signal the server and its workers as one group
    )  # fmt: skip


def mlflow_post(client: Any, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/api/2.0/mlflow/{path}", json=payload)
    if response.status_code != 200:
        raise RuntimeError(f"mlflow {path}: {response.status_code} {response.text[:300]}")
    return response.json()


def mlflow_run(client: Any, experiment_id: str) -> str:
    return mlflow_post(client, "runs/create", {"experiment_id": experiment_id})["run"]["info"]["run_id"]


def mlflow_bodies(run_ids: list[str], total: int) -> list[bytes]:
    """log-batch request bodies, serialized before the clock starts (as ours are built before)."""
    now_ms = int(time.time() * 1000)
    bodies: list[bytes] = []
    for index, (run_id, size) in enumerate(zip(run_ids, job_sizes(total), strict=False)):
        metrics = [
            {"key": name, "value": value, "step": step, "timestamp": now_ms + step}
            for name, step, _epoch, value in job_steps(index, size)
        ]
        bodies.extend(
            json.dumps({"run_id": run_id, "metrics": part}).encode() for part in chunks(metrics, MLFLOW_BATCH)
        )
    return bodies


def mlflow_ingest(client: Any, bodies: list[bytes]) -> float:
    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    for body in bodies:
        response = client.post("/api/2.0/mlflow/runs/log-batch", content=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"mlflow log-batch: {response.status_code} {response.text[:300]}")
    return time.perf_counter() - started


def mlflow_history(client: Any, run_id: str) -> int:
    """Read the whole history of the read series, following next_page_token if the server pages."""
    import orjson

    params: dict[str, Any] = {"run_id": run_id, "metric_key": READ_SERIES, "max_results": 25_000}
    count = 0
    while True:
        response = client.get("/api/2.0/mlflow/metrics/get-history", params=params)
        response.raise_for_status()
        body = orjson.loads(response.content)  # the parser Saddle's client uses
        count += len(body.get("metrics", []))
        token = body.get("next_page_token")
        if not token:
            return count
        params["page_token"] = token


def mlflow_read(client: Any, run_id: str) -> list[float]:
    samples: list[float] = []
    for i in range(WARMUP_READS + READ_REPEATS):
        elapsed = mlflow_read_once(client, run_id)
        if i >= WARMUP_READS:
            samples.append(elapsed)
    return samples


def mlflow_read_once(client: Any, run_id: str) -> float:
    started = time.perf_counter()
    count = mlflow_history(client, run_id)
    elapsed = time.perf_counter() - started
    if count != READ_POINTS:
        raise RuntimeError(f"mlflow get-history returned {count} points, expected {READ_POINTS}")
    return elapsed


def alternated_reads(
    client: Any, run_id: str, reader: tuple[str, str, str]
) -> tuple[list[float], list[float]]:
    """MLflow's reads and Saddle's, one of each in turn (which goes first alternates), so that both
    medians come from the same minutes of a machine whose load changes from one minute to the next;
    Saddle's API has been up since its own phase. Returns (mlflow samples, saddle samples)."""
    from saddle.client import Client

    base_url, token, job_id = reader
    mlflow_samples: list[float] = []
    saddle_samples: list[float] = []
    with Client(base_url, token, timeout=60) as saddle:
        for i in range(WARMUP_READS + READ_REPEATS):
            if i % 2:
                saddle_samples.append(saddle_read_once(saddle, job_id))
            mlflow_samples.append(mlflow_read_once(client, run_id))
            if not i % 2:
                saddle_samples.append(saddle_read_once(saddle, job_id))
    return mlflow_samples[WARMUP_READS:], saddle_samples[WARMUP_READS:]


def wait_mlflow(base_url: str, process: subprocess.Popen[bytes], tmp: Path) -> None:
    from saddle.processes import wait_ready

    try:
        # First start on an empty database runs MLflow's own migrations, which takes a while.
        wait_ready(f"{base_url}/health", timeout=180, process=process)
    except (RuntimeError, TimeoutError) as exc:
        tail = (tmp / "mlflow.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{exc}\n--- mlflow.log (tail) ---\n{tail}") from exc


def run_mlflow(args: argparse.Namespace, db_name: str, tmp: Path, results: Results, procs: list[Any]) -> None:
    import httpx

    from saddle.processes import free_port

    create_database(db_name)
    port = free_port()
    # MLflow 3.x maps a bare postgresql:// to psycopg 3; the bench venv has psycopg2, so name it.
    server = start_mlflow(f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db_name}", port, tmp)
    procs.append(server)
    base_url = f"http://127.0.0.1:{port}"
    wait_mlflow(base_url, server, tmp)

    with httpx.Client(base_url=base_url, timeout=120) as client:
        experiment = mlflow_post(client, "experiments/create", {"name": f"bench-{uuid.uuid4().hex[:8]}"})
        run_ids = [
            mlflow_run(client, experiment["experiment_id"])
            for _ in range(len(job_sizes(args.mlflow_points)) + 1)
        ]
        spare = run_ids.pop()
        seconds = mlflow_ingest(client, mlflow_bodies(run_ids, args.mlflow_points))
        results.mlflow_rate = args.mlflow_points / seconds
        results.rows.append(
            Row(
                "mlflow", f"log-batch, {MLFLOW_BATCH:,}/batch", args.mlflow_points, seconds,
                f"{results.mlflow_rate:,.0f} points/s",
            )
        )  # fmt: skip
        read_run = run_ids[0]
        if args.mlflow_points < POINTS_PER_JOB:  # as for Saddle: a spare run, filled untimed
            mlflow_ingest(client, mlflow_bodies([spare], POINTS_PER_JOB))
            read_run = spare
        if results.saddle_reader is None:
            samples = mlflow_read(client, read_run)
        else:
            samples, ours = alternated_reads(client, read_run, results.saddle_reader)
    results.mlflow_read = add_read_row(results, "mlflow", "GET metrics/get-history", samples)
    if results.saddle_reader is not None:
        results.saddle_read = add_read_row(
            results, "saddle", "GET /v1/jobs/{id}/metrics, alternated with mlflow's", ours
        )


# ---------------------------------------------------------------- report


def print_report(results: Results, load_before: float) -> bool:
    header = ("system", "operation", "points", "seconds", "throughput / latency")
    table = [header] + [
        (r.system, r.operation, f"{r.points:,}", f"{r.seconds:.3f}", r.figure) for r in results.rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    # Both systems share the CPUs with whatever else runs; a busy machine slows them unequally.
    print(
        f"\n{os.cpu_count()} cores; load average (1 min): {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    if results.mlflow_rate is None or results.mlflow_read is None:
        return True
    print("\nconcurrent writing jobs (metric writer, 1,000-point batches):")
    print("jobs  total points/s  x mlflow  per-job p95 commit")
    for n, rate, p95 in results.curve:
        print(f"{n:>4}  {rate:>14,.0f}  {rate / results.mlflow_rate:>7.1f}x  {p95 * 1000:>15.1f} ms")
    ingest = min(rate for _, rate, _ in results.curve) / results.mlflow_rate
    read = results.saddle_read / results.mlflow_read
    alone = results.saddle_read_alone / results.mlflow_read
    ok_ingest, ok_read = ingest >= TARGET_INGEST, read <= 1 / TARGET_READ
    ok_long = results.long_p95 is not None and results.long_p95 <= TARGET_DOWNSAMPLED_P95
    print(f"\ningestion: saddle/mlflow = {ingest:,.1f}x (1,000-point batches, worst of 1-8 jobs; target >= {TARGET_INGEST:g}x)"
          f"  {'PASS' if ok_ingest else 'FAIL'}")  # fmt: skip
    print(f"read 10,000 points: saddle/mlflow = {read:.4f} = 1/{1 / read:,.1f} (median; target <= 1/{TARGET_READ:g})"
          f"  {'PASS' if ok_read else 'FAIL'}")  # fmt: skip
    print(f"  (reads alternated with mlflow's; saddle's reads alone, minutes earlier: 1/{1 / alone:,.1f})")
    print(f"1,000,000 -> 2,000 points: p95 {(results.long_p95 or 0) * 1000:.1f} ms (target <= {TARGET_DOWNSAMPLED_P95 * 1000:g} ms)"
          f"  {'PASS' if ok_long else 'FAIL'}")  # fmt: skip
    ok_read = ok_read and ok_long
    return ok_ingest and ok_read


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=200_000, help="points Saddle ingests per batch size")
    parser.add_argument("--mlflow-points", type=int, default=50_000, help="points MLflow ingests")
    parser.add_argument("--no-mlflow", action="store_true", help="measure Saddle only")
    args = parser.parse_args()
    if args.points < 1 or args.mlflow_points < 1:
        parser.error("--points and --mlflow-points must be positive")
    return args


def service_env(run_id: str, tmp: Path) -> dict[str, str]:
    return {
        "SADDLE_DATABASE_URL": f"{PG_SERVER}/saddle_bench_{run_id}",
        "SADDLE_BROKER_URL": REDIS_URL,
        "SADDLE_QUEUE": f"bench-{run_id}",
        "SADDLE_ARTIFACTS": str(tmp / "artifacts"),
    }


def cleanup(procs: list[Any], databases: list[str], tmp: Path) -> None:
    """Every step runs even when an earlier one fails, so one stuck server cannot leave a database."""
    from models.db import _engines
    from saddle.processes import stop

    steps: list[tuple[str, Any]] = [(f"stop pid {p.pid}", lambda p=p: stop(p)) for p in procs]
    # Our pooled connections go first, so the drop does not have to terminate them.
    steps += [("dispose engines", lambda: [engine.dispose() for engine in _engines.values()])]
    steps += [(f"drop {name}", lambda name=name: drop_database(name)) for name in databases]
    for label, step in steps:
        try:
            step()
        except Exception as exc:  # report it and go on with the rest
            print(f"cleanup: {label} failed: {exc}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    args = parse_args()
    run_id = uuid.uuid4().hex[:10]
    tmp = Path(tempfile.mkdtemp(prefix=f"saddle-bench-{run_id}-"))
    # Settings are read once per process, so the environment is set before models is imported.
    os.environ.update(service_env(run_id, tmp))
    saddle_db, mlflow_db = f"saddle_bench_{run_id}", f"mlflow_bench_{run_id}"
    databases: list[str] = []
    procs: list[Any] = []
    results = Results()
    load_before = os.getloadavg()[0]
    try:
        create_database(saddle_db)
        databases.append(saddle_db)
        run_saddle(args, tmp, results, procs)
        if not args.no_mlflow:
            databases.append(mlflow_db)
            run_mlflow(args, mlflow_db, tmp, results, procs)
    except BaseException:
        print_report(results, load_before)  # what was measured before the failure is still worth seeing
        raise
    finally:
        cleanup(procs, databases, tmp)
    return 0 if print_report(results, load_before) else 1


if __name__ == "__main__":
    sys.exit(main())
