"""Start the API and worker as child processes (embedded demo, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    return subprocess.Popen(
        [sys.executable, "-m", "saddle.cli", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_worker(
    env: dict[str, str], log_path: Path, concurrency: int = 1, name: str = "worker"
) -> subprocess.Popen:
    return _spawn(
        ["worker", f"--concurrency={concurrency}", "--loglevel=info", f"--hostname={name}@%h"], env, log_path
    )


def start_api(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    return _spawn(["api", "--host", "127.0.0.1", "--port", str(port)], env, log_path)


def wait_ready(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready within {timeout} s")


def wait_worker_ready(log_path: Path, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Celery prints 'ready.' once its pool is up and it consumes from the queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}; see {log_path}")
        if log_path.exists() and b" ready." in log_path.read_bytes():
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready within {timeout} s; see {log_path}")


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(5)
