"""``saddle demo``: the whole service on one machine with nothing installed but this package.

SQLite is the database and Celery's filesystem transport is the broker (message files in a folder):
both come with Python and kombu, so a fresh machine needs no Docker, no Postgres and no Redis. The
worker is a real Celery worker process and the API a real uvicorn server; only the URLs differ from
production.

The demo owns its two child processes: Ctrl-C, SIGTERM and SIGHUP all stop both (the worker hands a
running job back to its queue first), and a port another server holds is found before anything
says "ready".

Nothing of the server reads its settings when imported: this module sets the embedded environment
before the first read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click

from api.auth import create_token
from migrations import run_upgrade
from models.db import session_scope
from saddle import processes
from saddle.client import Client
from saddle.commands import EXIT_USAGE
from saddle.inputs import load_spec_file
from saddle.output import describe_result
from saddle.progress import ProgressDisplay

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits.yaml"
DEFAULT_PORT = 8000
# Tried in order when the default port is taken, so the address stays easy to type.
FALLBACK_PORTS = range(DEFAULT_PORT + 1, DEFAULT_PORT + 20)


class DemoError(Exception):
    """The demo cannot start; the message says why and what to do instead."""


class Stop(BaseException):
    """SIGTERM or SIGHUP: leave the way Ctrl-C does (a BaseException, like KeyboardInterrupt)."""


def embedded_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SADDLE_")}
    env.update(
        {
            "SADDLE_DATABASE_URL": f"sqlite:///{home / 'saddle.db'}",
            "SADDLE_BROKER_URL": "filesystem://",
            "SADDLE_BROKER_FOLDER": str(home / "broker"),
            "SADDLE_ARTIFACTS": str(home / "artifacts"),
            "SADDLE_QUEUE": "saddle",
        }
    )
    return env


def default_port() -> int:
    """``SADDLE_DEMO_PORT``, else 8000."""
    return int(os.environ.get("SADDLE_DEMO_PORT") or DEFAULT_PORT)


def choose_port(requested: int | None) -> int:
    """The port asked for with --port, which must be free; else the default port or, when another
    server holds it, the next free one (said so on the terminal)."""
    if requested is not None:
        if not processes.port_is_free(requested):
            raise DemoError(
                f"port {requested} is in use (another server listens there); "
                "choose a free one with `saddle demo --port N` (make demo ARGS='--port N')"
            )
        return requested
    port = default_port()
    if processes.port_is_free(port):
        return port
    fallback = next((p for p in FALLBACK_PORTS if processes.port_is_free(p)), None) or processes.free_port()
    say(
        f"port {port} is in use (another server listens there): this demo uses port {fallback} instead "
        "(choose one with `saddle demo --port N`)"
    )
    return fallback


@contextlib.contextmanager
def single_demo(home: Path) -> Iterator[IO[str]]:
    """One demo per .saddle folder: a second one would share its database and broker folder, and
    its token file and logs. The lock is released when the process ends, however it ends."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "demo.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise DemoError(
                f"a demo already runs from {home} ({holder}); stop it first (Ctrl-C there), "
                "or run this one from another folder"
            ) from None
        yield lock


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Stop in the main thread, so the demo stops its API and worker on
    `kill` or a closed terminal exactly as on Ctrl-C; while it is stopping them, repeats are ignored."""
    caught = (signal.SIGTERM, signal.SIGHUP)

    def stop(signum: int, _frame: object) -> None:
        for sig in caught:
            signal.signal(sig, signal.SIG_IGN)
        raise Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in caught}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(port: int | None, serve: bool, spec_path: str | None, home: Path = Path(".saddle")) -> int:
    home = home.resolve()
    try:
        with single_demo(home) as lock, stop_on_signals():
            port = choose_port(port)
            lock.truncate(0)
            lock.write(f"pid {os.getpid()}, API at http://127.0.0.1:{port}\n")
            lock.flush()
            return _run(home, port, serve, spec_path)
    except DemoError as err:
        print(f"saddle demo: {err}", file=sys.stderr)
        return EXIT_USAGE


def _run(home: Path, port: int, serve: bool, spec_path: str | None) -> int:
    env = embedded_env(home)
    os.environ.update(env)  # this process migrates and mints the token with the same settings
    say(f"embedded mode: database {home / 'saddle.db'}, broker folder {home / 'broker'}")
    run_upgrade(env["SADDLE_DATABASE_URL"])
    with session_scope() as session:
        _, token = create_token(session, "demo", "demo")
    (home / "token").write_text(token + "\n")
    worker_log, api_log = home / "logs" / "worker.log", home / "logs" / "api.log"
    worker_log.unlink(missing_ok=True)
    api_log.unlink(missing_ok=True)  # the readiness check reads this run's lines only
    worker = processes.start_worker(env, worker_log)
    api = processes.start_api(env, port, api_log)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            processes.wait_api_ready(f"{url}/readyz", api_log, api)
        except processes.ApiExited as exited:
            if "in use" not in exited.reason:
                raise DemoError(f"the API did not start: {exited.reason} (log: {api_log})") from None
            raise DemoError(
                f"port {port} was taken while the API started ({exited.reason}); "
                "run again, or choose a port with `saddle demo --port N`"
            ) from None
        processes.wait_worker_ready(worker_log, process=worker)
        say(
            f"API ready at {url} (OpenAPI: {url}/openapi.json); worker ready "
            f"(pids: API {api.pid}, worker {worker.pid}; logs in {home / 'logs'})"
        )
        client = Client(url, token)
        job = client.submit(load_spec_file(spec_path or str(EXAMPLE)))
        say(f"submitted job {job['id']} ({job['name']}); training:")
        display = ProgressDisplay(sys.stdout)
        final = client.wait(job["id"], on_progress=display)
        display.close()
        print(describe_result(final))
        spectra = client.spectra(job["id"])
        for s in spectra:
            top = ", ".join(f"{v:.3g}" for v in s["top"][:3])
            say(
                f"  Hessian at epoch {s['epoch']} ({s['reason']}): top {top}; λ_min "
                f"{s['bottom'][0] if s['bottom'] else float('nan'):.3g}; {s['critical_point'].get('class')}"
            )
        say(f"\nAPI: {url}   token: {token}   (also saved in {home / 'token'})")
        say(f"dashboard: {url}/  (paste the token once)")
        say(next_steps(job["id"], url, token))
        if serve:
            say("serving; Ctrl-C (or SIGTERM) stops the API and the worker")
            while api.poll() is None and worker.poll() is None:
                time.sleep(1)
        return 0 if final["status"] == "succeeded" else 1
    except (KeyboardInterrupt, Stop) as why:
        say(f"\nstopping the API and the worker ({why or 'Ctrl-C'})")
        return 0
    finally:
        processes.stop(api)
        processes.stop(worker)


def next_steps(job_id: str, url: str, token: str) -> str:
    """What to try next, as commands that work from this folder (they read .saddle/token)."""
    saddle = command_path()
    api = "" if url.endswith(f":{DEFAULT_PORT}") else f" --api {url}"
    return "\n".join(
        [
            "next, in another terminal in this folder:",
            f"  {saddle} diagnose {job_id}{api}        # the verdict, its evidence and fix",
            f"  {saddle} sweep create examples/sweep.yaml{api}   # a search over learning rates",
            f"  {saddle} submit examples/overfit.yaml --watch{api}   # a run that overfits; then:",
            f"  {saddle} remedy JOB --watch{api}        # resubmit it with the diagnosis' fix",
            f"  curl -H 'Authorization: Bearer {token}' {url}/v1/jobs/{job_id}/metrics?name=val/loss",
        ]
    )


def command_path() -> str:
    """How to type `saddle` here: the installed script beside this Python (.venv/bin/saddle after
    make demo, which puts nothing on PATH), relative to this folder when it is inside it."""
    script = Path(sys.executable).parent / "saddle"
    if not script.exists():
        return "saddle"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def say(text: str) -> None:
    print(text, flush=True)


@click.command()
@click.option(
    "--port",
    type=int,
    help="the API's port (default 8000, or $SADDLE_DEMO_PORT; when taken, the next free one)",
)
@click.option("--spec", help="spec to run instead of the built-in example")
@click.option("--exit", "exit_after", is_flag=True, help="stop the services after the job instead of serving")
def command(port: int | None, spec: str | None, exit_after: bool) -> int:
    return run_demo(port=port, serve=not exit_after, spec_path=spec)
