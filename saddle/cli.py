"""The ``saddle`` command: run the services, manage tokens, submit and watch jobs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

TOKEN_FILE = Path(".saddle/token")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API = 0, 1, 2, 3


def _default_token() -> str | None:
    if os.environ.get("SADDLE_TOKEN"):
        return os.environ["SADDLE_TOKEN"]
    return TOKEN_FILE.read_text().strip() if TOKEN_FILE.exists() else None


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("api.app:app", host=args.host, port=args.port, workers=args.workers, log_level="info")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    # Split the cores between the worker's processes so they do not oversubscribe the CPU.
    os.environ.setdefault("SADDLE_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // args.concurrency)))
    import worker.tasks  # noqa: F401  (registers the task before the pool forks)
    from models.settings import get_settings
    from worker.celery_app import app

    argv = [
        "worker",
        f"--concurrency={args.concurrency}",
        f"--queues={get_settings().queue}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        f"--hostname={args.hostname}",
    ]
    if get_settings().broker_url.startswith("filesystem://"):
        app.conf.worker_enable_remote_control = False  # the filesystem broker has no broadcast
    app.worker_main(argv)
    return EXIT_OK


def cmd_reaper(args: argparse.Namespace) -> int:
    from worker.reaper import Reaper

    reaper = Reaper(args.interval)
    print(f"reaper: every {reaper.interval:g} s (Ctrl-C stops)")
    try:
        while True:
            reaper.once()
            reaper._stop_event.wait(reaper.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from migrations import run_upgrade

    run_upgrade(revision=args.revision)
    print("database is at", args.revision)
    return EXIT_OK


def cmd_token_create(args: argparse.Namespace) -> int:
    from api.auth import create_token
    from models.db import session_scope

    with session_scope() as session:
        project, token = create_token(session, args.project, args.name)
        project_id = project.id
    if args.json:
        print(json.dumps({"project": args.project, "project_id": project_id, "token": token}))
    else:
        print(token)
    return EXIT_OK


def load_spec_file(path: str) -> dict[str, Any]:
    import yaml

    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    data = yaml.safe_load(text)
    if isinstance(data, dict) and "spec" in data and "data" not in data:
        data = data["spec"]  # a scenario file: {expect, spec}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: a JobSpec must be a mapping")
    return data


def _client(args: argparse.Namespace):  # noqa: ANN202
    from saddle.client import Client

    token = args.token or _default_token()
    if not token:
        raise SystemExit(
            "no token: pass --token, set SADDLE_TOKEN, or run `saddle token create --project NAME`"
        )
    return Client(args.api, token)


def cmd_submit(args: argparse.Namespace) -> int:
    from saddle.client import ApiError

    client = _client(args)
    try:
        job = client.submit(load_spec_file(args.spec), args.idempotency_key)
    except ApiError as err:
        print(f"rejected: {err.detail}", file=sys.stderr)
        return EXIT_API
    if not args.watch:
        print(json.dumps(job) if args.json else job["id"])
        return EXIT_OK
    print(f"job {job['id']} submitted", file=sys.stderr)
    return watch(client, job["id"], args.json)


def watch(client, job_id: str, as_json: bool = False) -> int:  # noqa: ANN001
    from saddle.progress import ProgressLine

    line = ProgressLine()
    final = client.wait(job_id, on_progress=line)
    line.close()
    if as_json:
        print(json.dumps(final))
    else:
        print(describe_result(final))
    return EXIT_OK if final["status"] == "succeeded" else EXIT_FAILED


def describe_result(job: dict[str, Any]) -> str:
    p, s = job.get("progress") or {}, job.get("summary") or {}
    lines = [
        f"job {job['id']} {job['status']}" + (f" — verdict: {job['verdict']}" if job.get("verdict") else "")
    ]
    for split in ("train", "val", "test"):
        loss, acc = p.get(f"{split}_loss"), p.get(f"{split}_accuracy")
        if loss is not None:
            lines.append(
                f"  {split:5s} loss {loss:.4f}" + (f"  accuracy {acc:.3f}" if acc is not None else "")
            )
    if s.get("best_epoch") is not None and s.get("best_epoch", -1) >= 0:
        lines.append(
            f"  best epoch {s['best_epoch']} (val loss {s.get('best_val_loss') or float('nan'):.4f})"
        )
    if s.get("diverged_step"):
        lines.append(f"  diverged at step {s['diverged_step']}")
    if job.get("error"):
        lines.append(f"  error: {job['error'].strip().splitlines()[0]}")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from saddle.demo import run_demo

    return run_demo(port=args.port, serve=not args.exit, spec_path=args.spec)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saddle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a Celery training worker")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--loglevel", default="info")
    p.add_argument("--hostname", default="saddle@%h")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("reaper", help="re-queue jobs whose worker or broker was lost (the API runs one too)")
    p.add_argument("--interval", type=float, default=None)
    p.set_defaults(func=cmd_reaper)

    p = sub.add_parser("migrate", help="create or upgrade the database schema (alembic upgrade)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True)
    t = tsub.add_parser("create", help="create a token for a project (the project is created if new)")
    t.add_argument("--project", required=True)
    t.add_argument("--name", default="")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_token_create)

    for name, func, helptext in (
        ("submit", cmd_submit, "submit a JobSpec (YAML or JSON file, - for stdin)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("spec")
        p.add_argument(
            "--watch", action="store_true", help="show progress until the job ends, then its result"
        )
        p.add_argument("--idempotency-key")
        p.add_argument("--json", action="store_true")
        p.add_argument("--api", default=os.environ.get("SADDLE_API_URL", "http://127.0.0.1:8000"))
        p.add_argument("--token")
        p.set_defaults(func=func)

    p = sub.add_parser(
        "demo", help="embedded mode: SQLite, filesystem broker, a real worker; runs an example job"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--spec", default=None, help="spec to run instead of the built-in example")
    p.add_argument("--exit", action="store_true", help="stop the services after the job instead of serving")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
