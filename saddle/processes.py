"""Start the API and worker as child processes (embedded demo, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
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


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (bound the way uvicorn binds: SO_REUSEADDR, so
    connections of a server that just ended do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


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
        if answers(url):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready within {timeout} s")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_api_ready(url: str, log_path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Ready when *this* API process has bound its port and ``url`` answers 200. Another server on
    the same port would answer too: uvicorn logs "Uvicorn running on" only once its own bind
    succeeded, so the log line decides whose answer it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ApiExited(process.returncode, last_error(log_path))
        if log_path.exists() and b"Uvicorn running on" in log_path.read_bytes() and answers(url):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready within {timeout} s; see {log_path}")


class ApiExited(RuntimeError):
    """The API process ended while starting; ``reason`` is its last error line."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the API exited with {code}: {reason}")
        self.reason = reason


def last_error(log_path: Path) -> str:
    """The message of the log's last error record (logfmt or JSON lines), else its last line."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    errors = [line for line in lines if "level=error" in line or '"level": "error"' in line]
    line = (errors or lines or ["(no log)"])[-1]
    for marker in ('msg="', '"msg": "'):
        if marker in line:
            return line.split(marker, 1)[1].split('"', 1)[0]
    return line


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
    """SIGTERM to the process itself, which stops its own children the way it knows best (a Celery
    worker hands its running jobs back to the queue, then ends its pool; its pool processes die
    with it); if it is still there after ``timeout``, its whole process group is killed."""
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
