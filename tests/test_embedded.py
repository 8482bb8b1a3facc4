"""The README's first command: the embedded default on SQLite and the filesystem broker, with a real
worker and API process, and no SADDLE_* URLs set; then what a new user met starting it a second
time and stopping it (issue 17), with the demo as a real process in its own folder."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from saddle import processes
from saddle.demo import embedded_env
from saddle.processes import free_port
from tests.conftest import tiny_spec


def run_demo_job(folder: Path, spec: dict) -> subprocess.CompletedProcess:
    """`saddle demo --exit` in ``folder`` (its own .saddle, SQLite, filesystem broker) on ``spec``."""
    spec_file = folder / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SADDLE_")}
    command = [sys.executable, "-m", "saddle.cli", "demo", "--exit", "--port", str(free_port())]
    return subprocess.run(
        [*command, "--spec", str(spec_file)], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


def test_demo_runs_a_job_end_to_end_without_postgres_or_redis(tmp_path) -> None:
    result = run_demo_job(tmp_path, tiny_spec(name="embedded", epochs=3))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout and "API: http://127.0.0.1:" in result.stdout
    assert (tmp_path / ".saddle" / "saddle.db").exists()
    assert (tmp_path / ".saddle" / "token").read_text().startswith("sdl_")


# ----- the first hour (issue 17): a busy port, and stopping the demo --------------------------------
def demo_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SADDLE_")} | extra


@contextlib.contextmanager
def another_server() -> Iterator[int]:
    """A server that answers 200 to every GET, /readyz included, on a port of its own."""

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run_demo(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec(name="embedded", epochs=2)))
    return subprocess.run(
        [sys.executable, "-m", "saddle.cli", "demo", "--exit", "--spec", str(spec_file), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_busy_port_named_with_port_is_refused_before_anything_says_ready(tmp_path: Path) -> None:
    with another_server() as busy:
        result = run_demo(tmp_path, "--port", str(busy), env=demo_env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"port {busy} is in use" in result.stderr and "saddle demo --port N" in result.stderr
    assert "ready" not in result.stdout and "refused" not in result.stdout + result.stderr


def test_a_busy_default_port_moves_the_demo_to_a_free_one(tmp_path: Path) -> None:
    with another_server() as busy:
        result = run_demo(tmp_path, env=demo_env(SADDLE_DEMO_PORT=str(busy)))
    assert result.returncode == 0, result.stdout + result.stderr
    moved = re.search(
        rf"port {busy} is in use \(another server listens there\): this demo uses port (\d+)", result.stdout
    )
    assert moved, result.stdout
    port = int(moved.group(1))
    assert port != busy and f"API ready at http://127.0.0.1:{port} " in result.stdout
    assert "succeeded" in result.stdout and f"--api http://127.0.0.1:{port}" in result.stdout


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc): the API, the worker and its pool processes."""
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in map(int, children.read_text().split()):
            found |= {child} | descendants(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(what: str, check, timeout: float = 120.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def job_row(home: Path, job_id: str) -> dict:
    with sqlite3.connect(home / "saddle.db") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("select status, error, attempts from jobs where id = ?", (job_id,)).fetchone())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_whole_demo_and_its_job_goes_back_to_the_queue(
    tmp_path: Path, signum: signal.Signals
) -> None:
    spec_file = tmp_path / "long.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec(name="embedded-long", epochs=5000, batch_size=4)))
    out = tmp_path / "demo.out"
    home = tmp_path / ".saddle"
    with out.open("w") as stdout:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "saddle.cli",
                "demo",
                "--port",
                str(free_port()),
                "--spec",
                str(spec_file),
            ],
            cwd=tmp_path,
            env=demo_env(),
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
    try:
        job_id = wait_for("the job", lambda: re.search(r"submitted job ([0-9a-f]{32})", out.read_text()))[1]
        # Past epoch 5: a periodic checkpoint exists to resume from.
        wait_for("a checkpoint", lambda: re.search(r"epoch ([6-9]|\d\d+)/5000", out.read_text()))
        children = descendants(demo.pid)
        assert len(children) >= 3, children  # the API, the worker, its pool process

        started = time.monotonic()
        demo.send_signal(signum)
        assert demo.wait(timeout=60) == 0, out.read_text()
        took = time.monotonic() - started
    finally:
        if demo.poll() is None:
            demo.kill()
    assert took < 20, f"the demo took {took:.1f} s to stop"  # the worker did not wait for the job
    assert not [pid for pid in children if alive(pid)], out.read_text()
    assert f"stopping the API and the worker ({signum.name})" in out.read_text()
    # Not failed, not left running: queued again, to resume from its checkpoint on the next worker.
    assert job_row(home, job_id) == {"status": "queued", "error": None, "attempts": 1}
    assert f"job {job_id}: handed back to its queue" in (home / "logs" / "worker.log").read_text()
    messages = [m.read_text() for m in (home / "broker" / "queue").iterdir()]
    assert [m for m in messages if job_id in m], "no message on the queue would start the job again"

    # The next worker resumes it from its checkpoint; asked to stop, it too hands it back at once.
    log = home / "logs" / "worker-2.log"
    worker = processes.start_worker(embedded_env(home.resolve()), log, name="second")
    try:
        resumed = f"job {job_id}: attempt 2 resumes from epoch"
        wait_for("the resume", lambda: log.exists() and resumed in log.read_text())
        started = time.monotonic()
        processes.stop(worker)
        took = time.monotonic() - started
    finally:
        processes.stop(worker)
    assert worker.returncode == 0 and took < 10, (worker.returncode, took)
    assert job_row(home, job_id) == {"status": "queued", "error": None, "attempts": 2}
