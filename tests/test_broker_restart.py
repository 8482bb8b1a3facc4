"""Redis restarted mid-run loses every message (it keeps nothing on disk): no job may be lost.

Runs against a private redis-server on its own port (restarting the shared one would disturb other
test runs), with its own API (and reaper) and worker. Marked slow: `pytest -m slow`.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from saddle import processes
from saddle.client import Client
from tests.conftest import RUN_ID, SERVICE_ENV, TMP, tiny_spec

pytestmark = pytest.mark.slow


def start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "redis did not start"
        time.sleep(0.1)
    return proc


def test_jobs_survive_a_redis_restart(database: str, token: str) -> None:
    port = processes.free_port()
    redis = start_redis(port)
    env = {
        **os.environ,
        **SERVICE_ENV,
        "SADDLE_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "SADDLE_QUEUE": f"saddle-redis-{RUN_ID}",
    }
    api_port = processes.free_port()
    api = processes.start_api(env, api_port, TMP / "logs" / "redis-api.log")
    worker = processes.start_worker(env, TMP / "logs" / "redis-worker.log", concurrency=1, name="redis")
    try:
        processes.wait_ready(f"http://127.0.0.1:{api_port}/healthz", process=api)
        processes.wait_worker_ready(TMP / "logs" / "redis-worker.log", process=worker)
        sdk = Client(f"http://127.0.0.1:{api_port}", token)
        jobs = [sdk.submit(tiny_spec(name=f"redis-{i}", epochs=30, batch_size=4)) for i in range(4)]
        deadline = time.monotonic() + 60
        while sdk.job(jobs[0]["id"])["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        redis.kill()  # every queued message is gone with it
        redis.wait(10)
        time.sleep(1)
        redis = start_redis(port)
        finals = [sdk.wait(j["id"], timeout=300) for j in jobs]
        assert [f["status"] for f in finals] == ["succeeded"] * 4, [(f["status"], f["error"]) for f in finals]
    finally:
        processes.stop(worker)
        processes.stop(api)
        redis.kill()
