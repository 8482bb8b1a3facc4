"""What a hostile or careless client costs the API (issue 14): figures for benchmarks/README.md.

1. CSV validation against the number of header columns (in process): it was quadratic.
2. One API process (uvicorn, its own database) under the probe's load: 8 NPZ "bombs" (0.5 MB each,
   500 MB of zeros once expanded) and 40 CSVs of 20,000 columns sent at once, while another project
   lists its jobs every 50 ms: the API's peak resident memory over its warm baseline, and the other
   project's latencies.
3. A 300 MiB body with no Content-Length (chunked) to POST /v1/jobs and POST /v1/datasets: how long
   until the 413, and what the API's memory did.

    .venv/bin/python benchmarks/hostile.py [--keep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PG_SERVER = os.environ.get("SADDLE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def header_scaling() -> None:
    from api.services import datasets as svc
    from tests.upload_payloads import wide_csv

    print("CSV validation by header width (12 rows):")
    for columns in (5_000, 20_000, 40_000, 100_000):
        payload = wide_csv(columns, 12)
        start = time.perf_counter()
        svc.parse_upload(payload, "wide.csv", None)
        print(f"  {columns:>7,} columns ({len(payload) / 1e6:4.1f} MB): {time.perf_counter() - start:6.2f} s")


def probe_load(url: str, pid: int, token: str, other: str) -> None:
    import httpx

    from tests.upload_payloads import npz_of_zeros, wide_csv

    bomb, csv = npz_of_zeros(), wide_csv(20_000, 3)
    hostile = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600)
    reader = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {other}"}, timeout=60)
    for _ in range(3):
        reader.get("/v1/jobs")
    hostile.post("/v1/datasets", data={"name": "warm"}, files={"file": ("w.csv", csv)})
    baseline = rss_mb(pid)
    latencies: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            start = time.perf_counter()
            reader.get("/v1/jobs", params={"limit": 5}).raise_for_status()
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    payloads = [(bomb, "bomb.npz")] * 8 + [(csv, "wide.csv")] * 40
    start = time.perf_counter()

    def send(p: tuple[bytes, str]) -> int:
        name = f"h-{uuid.uuid4().hex[:12]}"  # names are unique in a project
        return hostile.post("/v1/datasets", data={"name": name}, files={"file": (p[1], p[0])}).status_code

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        codes = list(pool.map(send, payloads))
    elapsed = time.perf_counter() - start
    done.set()
    watcher.join()
    latencies.sort()
    print(
        f"probe load: 8 NPZ bombs + 40 × 20,000-column CSVs in {elapsed:.1f} s, answers "
        f"{ {c: codes.count(c) for c in sorted(set(codes))} }"
    )
    print(
        f"  API RSS: warm {baseline:.0f} MB, peak {rss_mb(pid, 'VmHWM'):.0f} MB "
        f"(+{rss_mb(pid, 'VmHWM') - baseline:.0f} MB), after {rss_mb(pid):.0f} MB"
    )
    print(
        f"  another project's GET /v1/jobs: {len(latencies)} requests, median "
        f"{statistics.median(latencies) * 1000:.0f} ms, p95 {latencies[int(0.95 * len(latencies))] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )


def chunked_bodies(url: str, pid: int, token: str) -> None:
    import httpx

    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600)

    def body(head: bytes = b""):
        yield head
        for _ in range(300):
            yield b" " * 2**20

    boundary = "b"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.csv"\r\n\r\n').encode()
    for route, content, kind in (
        ("/v1/jobs", body(), "application/json"),
        ("/v1/datasets", body(head), f"multipart/form-data; boundary={boundary}"),
    ):
        before = rss_mb(pid)
        start = time.perf_counter()
        try:
            status = http.post(route, content=content, headers={"Content-Type": kind}).status_code
        except httpx.HTTPError as exc:
            status = f"connection closed ({type(exc).__name__})"
        print(
            f"300 MiB chunked to {route}: {status} after {time.perf_counter() - start:.2f} s, "
            f"API RSS {before:.0f} -> {rss_mb(pid):.0f} MB (peak {rss_mb(pid, 'VmHWM'):.0f} MB)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    args = parser.parse_args()
    run_id = uuid.uuid4().hex[:8]
    db = f"saddle_hostile_{run_id}"
    tmp = Path(tempfile.mkdtemp(prefix=f"saddle-hostile-{run_id}-"))
    env = {
        "SADDLE_DATABASE_URL": f"{PG_SERVER}/{db}",
        "SADDLE_BROKER_URL": "redis://127.0.0.1:6379/0",
        "SADDLE_QUEUE": f"saddle-hostile-{run_id}",  # no worker: nothing here trains
        "SADDLE_ARTIFACTS": str(tmp / "artifacts"),
        "SADDLE_REAPER_SECONDS": "0",
    }
    os.environ.update(env)
    from sqlalchemy import create_engine, text

    from api.auth import create_token
    from migrations import run_upgrade
    from models.db import session_scope
    from saddle import processes

    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    api = None
    try:
        run_upgrade(env["SADDLE_DATABASE_URL"])
        with session_scope() as session:
            token = create_token(session, "hostile", "bench")[1]
            other = create_token(session, "bystander", "bench")[1]
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        header_scaling()
        port = processes.free_port()
        api = processes.start_api({**os.environ, **env}, port, tmp / "api.log")
        url = f"http://127.0.0.1:{port}"
        processes.wait_ready(f"{url}/healthz", process=api)
        probe_load(url, api.pid, token, other)
        chunked_bodies(url, api.pid, token)
    finally:
        if api is not None:
            processes.stop(api)
        if not args.keep:
            from models.db import _engines

            for engine in _engines.values():
                engine.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
