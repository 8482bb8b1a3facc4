"""The ``saddle`` command: run the services, manage tokens, submit, watch, inspect and fix jobs.

Exit codes a script can rely on: 0 ok; 1 the job failed or was cancelled (submit --watch, remedy
--watch); 2 usage (bad arguments, no token, unreadable file); 3 the API refused the request (4xx/5xx,
the message is printed); 4 the API could not be reached.
"""

from __future__ import annotations

import argparse
import contextvars
import csv
import json
import logging
import logging.config
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saddle.client import Client

TOKEN_FILE = Path(".saddle/token")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


class UsageError(Exception):
    """Bad arguments or inputs the API never saw: exit code 2."""


def _token_and_source(args: argparse.Namespace) -> tuple[str | None, str]:
    """The token to send and where it came from (named when the API refuses it)."""
    if args.token:
        return args.token, "--token"
    if os.environ.get("SADDLE_TOKEN"):
        return os.environ["SADDLE_TOKEN"], "SADDLE_TOKEN"
    if TOKEN_FILE.exists():
        return TOKEN_FILE.read_text().strip(), f"{TOKEN_FILE} (written by saddle demo)"
    return None, ""


# ------------------------------------------------------------------------------ structured logs
# `saddle api`, `saddle worker` and `saddle reaper` log one line per record, logfmt by default
# (key=value: readable in a terminal, parsed by Loki, Vector, Datadog) or JSON lines with
# SADDLE_LOG_FORMAT=json. Every record carries job_id when one is known: an explicit
# ``extra={"job_id": ...}``, else the job the current Celery task runs, else a job id named in the
# message ("job <id>: ..." from the worker, "/v1/jobs/<id>" in the API's access log).

CURRENT_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar("saddle_job_id", default=None)
_JOB_IN_MESSAGE = re.compile(r"(?:\b(?:job|study)[ :=]+|/v1/jobs/)([0-9a-f]{32})\b")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_JOB_ID_IN_ARGS = re.compile(r"^[(\[]'([0-9a-f]{32})'")
LOG_FORMATS = ("logfmt", "json")


class JobIdFilter(logging.Filter):
    """Sets ``record.job_id`` (None when no job is involved); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = (
                CURRENT_JOB.get() or job_in_message(record.getMessage()) or job_in_celery_record(record)
            )
        return True


def job_in_message(message: str) -> str | None:
    match = _JOB_IN_MESSAGE.search(message)
    return match.group(1) if match else None


def job_in_celery_record(record: logging.LogRecord) -> str | None:
    """Celery's task lines ("Task saddle.run_job[<task id>] received/succeeded") name the task, not
    the job, but carry the task's arguments in ``record.data``; the first one is the job id."""
    data = getattr(record, "data", None)
    args = data.get("args") if isinstance(data, dict) else None
    match = _JOB_ID_IN_ARGS.search(args) if isinstance(args, str) else None
    return match.group(1) if match else None


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not re.search(r'[\s="\\]', text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class StructuredFormatter(logging.Formatter):
    """One line per record: ts, level, logger, pid, job_id (if any), msg, exc (if any)."""

    def __init__(self, fmt: str = "logfmt") -> None:
        super().__init__()
        if fmt not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            fields["job_id"] = job_id
        fields["msg"] = record.getMessage()
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.fmt == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


def logging_config(fmt: str | None = None, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict; uvicorn applies it in each of its worker processes too."""
    fmt = fmt or os.environ.get("SADDLE_LOG_FORMAT", "logfmt")
    return {
        "version": 1,
        # Loggers created at import time (saddle.api, saddle.worker, ...) must keep working.
        "disable_existing_loggers": False,
        "filters": {"job_id": {"()": "saddle.cli.JobIdFilter"}},
        "formatters": {"structured": {"()": "saddle.cli.StructuredFormatter", "fmt": fmt}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "structured",
                "filters": ["job_id"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # uvicorn's own config would give these loggers handlers of their own; here they propagate.
        "loggers": {
            name: {"level": level.upper()} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(fmt: str | None = None, level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(fmt, level))


def _track_celery_jobs() -> None:
    """Within a task, its job id (the tasks' first argument) tags every record the task logs."""
    from celery.signals import setup_logging, task_postrun, task_prerun

    tokens: dict[str, contextvars.Token[str | None]] = {}

    def prerun(task_id: str = "", args: Any = None, **_: Any) -> None:
        if args and isinstance(args[0], str) and _JOB_ID.fullmatch(args[0]):
            tokens[task_id] = CURRENT_JOB.set(args[0])

    def postrun(task_id: str = "", **_: Any) -> None:
        token = tokens.pop(task_id, None)
        if token is not None:
            CURRENT_JOB.reset(token)

    def keep_ours(loglevel: Any = None, **_: Any) -> None:
        # Connected, this receiver stops Celery from installing its own handlers and format.
        configure_logging(level=logging.getLevelName(loglevel) if isinstance(loglevel, int) else "INFO")

    task_prerun.connect(prerun, weak=False)
    task_postrun.connect(postrun, weak=False)
    setup_logging.connect(keep_ours, weak=False)


# ------------------------------------------------------------------------------------- services


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "api.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        log_config=logging_config(args.log_format),
    )
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    # Split the cores between the worker's processes so they do not oversubscribe the CPU.
    os.environ.setdefault("SADDLE_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // args.concurrency)))
    if args.log_format:
        os.environ["SADDLE_LOG_FORMAT"] = args.log_format
    configure_logging(level=args.loglevel)
    _track_celery_jobs()
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
    from dispatch.reaper import Reaper

    configure_logging(args.log_format)
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


# --------------------------------------------------------------------------------- API commands


def load_spec_file(path: str) -> dict[str, Any]:
    """A JobSpec from YAML or JSON (``-``: stdin); a scenario file's ``spec`` key is unwrapped."""
    data = _load_yaml(path)
    if isinstance(data, dict) and "spec" in data and "data" not in data:
        data = data["spec"]  # a scenario file: {expect, spec}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a JobSpec must be a mapping")
    return data


def _load_yaml(path: str) -> Any:
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        return yaml.safe_load(text)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not YAML or JSON: {exc}") from None


def _client(args: argparse.Namespace) -> Client:
    from saddle.client import Client

    token, args.token_source = _token_and_source(args)
    if not token:
        raise UsageError(
            "no token: pass --token, set SADDLE_TOKEN, or run `saddle token create --project NAME`"
        )
    return Client(args.api, token)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**7:
        value = float(value)  # huge integers from JSON (a diverged loss) read better as 2.3e+35
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3)
            else f"{value:.{digits}f}"
        )
    return str(value)


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [headers, *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _when(stamp: str | None) -> str:
    return stamp[:19].replace("T", " ") if stamp else "-"


def apply_overrides(spec: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """``--set data.train_size=200``: a dotted path and a YAML value (``[64, 64]``, ``null``, ``0.01``)."""
    import yaml

    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise UsageError(f"--set {assignment!r}: expected PATH=VALUE, e.g. optimizer.lr=0.01")
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise UsageError(f"--set {assignment!r}: {key} is not a mapping in the spec")
            node = child
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {assignment!r}: the value is not YAML: {exc}") from None
    return spec


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    spec = apply_overrides(load_spec_file(args.spec), args.set or [])
    job = client.submit(spec, args.idempotency_key)
    if not args.watch:
        if args.json:
            _print_json(job)
        else:
            print(job["id"])
        return EXIT_OK
    print(f"job {job['id']} submitted", file=sys.stderr)
    return watch(client, job["id"], args.json)


def watch(client: Client, job_id: str, as_json: bool = False) -> int:
    """Progress on stderr until the job ends, then its result on stdout; the exit code says how it ended."""
    from saddle.progress import ProgressLine

    line = ProgressLine()
    try:
        final = client.wait(job_id, on_progress=line)
    except KeyboardInterrupt:
        line.close()
        print(f"stopped watching; job {job_id} goes on (saddle cancel {job_id} stops it)", file=sys.stderr)
        return 130
    line.close()
    if as_json:
        _print_json(final)
    else:
        print(describe_result(final))
        if final.get("verdict"):
            print(f"  details: saddle diagnose {job_id}")
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
        lines.append(f"  error: {first_line(job['error'])}")
    return "\n".join(lines)


def cmd_ls(args: argparse.Namespace) -> int:
    client = _client(args)
    jobs = list(
        client.iter_jobs(
            limit=args.limit,
            status=args.status,
            verdict=args.verdict,
            finding=args.finding,
            name=args.name,
            sweep=args.sweep,
        )
    )
    if args.json:
        _print_json(jobs)
        return EXIT_OK
    rows = []
    for j in jobs:
        p = j.get("progress") or {}
        epochs = p.get("epochs") or (j.get("spec") or {}).get("epochs")
        rows.append(
            [
                j["id"],
                j["name"] or "-",
                j["kind"],
                j["status"],
                f"{p.get('epoch', 0)}/{epochs}" if epochs else "-",
                p.get("val_loss"),
                j.get("verdict"),
                _when(j["created_at"]),
            ]
        )
    print(_table(rows, ["ID", "NAME", "KIND", "STATUS", "EPOCH", "VAL LOSS", "VERDICT", "CREATED"]))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from saddle.specview import model_view, optimizer_view, schedule_view

    job = _client(args).job(args.job)
    if args.json:
        _print_json(job)
        return EXIT_OK
    p, spec = job.get("progress") or {}, job.get("spec") or {}
    error = first_line(job.get("error"))
    fields = [
        # A failed job's reason comes first: it is what the reader came for.
        *([("error", error)] if error and job["status"] == "failed" else []),
        ("name", job["name"] or "-"),
        ("kind", job["kind"]),
        ("status", job["status"] + (" (cancel requested)" if job.get("cancel_requested") else "")),
        ("progress", f"epoch {p.get('epoch', 0)}/{p.get('epochs') or spec.get('epochs')}"),
        ("verdict", job.get("verdict") or "-"),
        ("dataset", (spec.get("data") or {}).get("dataset")),
        ("model", _compact(model_view(spec.get("model") or {}))),
        ("optimizer", _compact(optimizer_view(spec.get("optimizer") or {}))),
        ("schedule", _compact(schedule_view(spec.get("schedule") or {}))),
        ("device", job.get("device") or "-"),
        ("attempts", job.get("attempts")),
        ("created", _when(job["created_at"])),
        ("started", _when(job.get("started_at"))),
        ("finished", _when(job.get("finished_at"))),
    ]
    for key, label in (("parent_id", "parent"), ("sweep_id", "sweep")):
        if job.get(key):
            fields.append((label, job[key]))
    if job.get("tags"):
        fields.append(("tags", ", ".join(f"{k}={v}" for k, v in job["tags"].items())))
    print(f"job {job['id']}")
    for key, value in fields:
        print(f"  {key:10s} {value}")
    body = [line for line in describe_result(job).splitlines()[1:] if not line.startswith("  error:")]
    if body:
        print("\n".join(body))
    for line in remedy_hint(job):
        print(line)
    return EXIT_OK


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def cmd_metrics(args: argparse.Namespace) -> int:
    client = _client(args)
    result = client.metrics(args.job, args.name, max_points=args.max_points, split=args.split)
    series = result["series"]
    if args.json:
        _print_json(result)
    elif args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["name", "step", "epoch", "value"])
        for s in series:
            for step, epoch, value in zip(s["steps"], s["epochs"], s["values"], strict=True):
                out.writerow([s["name"], step, epoch, "" if value is None else repr(value)])
    else:
        rows = []
        for s in series:
            values = [v for v in s["values"] if v is not None]
            rows.append(
                [
                    s["name"],
                    s["total_points"],
                    values[0] if values else None,
                    values[-1] if values else None,
                    min(values) if values else None,
                    max(values) if values else None,
                ]
            )
        print(_table(rows, ["NAME", "POINTS", "FIRST", "LAST", "MIN", "MAX"]))
    if not series and args.name:
        print(f"no series named {', '.join(args.name)} in job {args.job}", file=sys.stderr)
    return EXIT_OK


def _evidence_summary(evidence: dict[str, Any], limit: int = 8) -> list[str]:
    """Scalars first, one per line; nested values as compact JSON, cut so a card stays readable."""
    lines = []
    for key, value in list(evidence.items())[:limit]:
        text = _fmt(value) if not isinstance(value, dict | list) else json.dumps(value, default=str)
        lines.append(f"{key} = {text if len(text) <= 100 else text[:97] + '...'}")
    if len(evidence) > limit:
        lines.append(f"... {len(evidence) - limit} more (--json shows all)")
    return lines


def cmd_diagnose(args: argparse.Namespace) -> int:
    client = _client(args)
    job, diagnoses = client.job(args.job), client.diagnoses(args.job)
    if args.json:
        _print_json(
            {
                "job_id": job["id"],
                "status": job["status"],
                "verdict": job.get("verdict"),
                "diagnoses": diagnoses,
            }
        )
        return EXIT_OK
    print(f"job {job['id']} {job['status']} — verdict: {job.get('verdict') or 'none yet'}")
    if not diagnoses:
        print(
            "  no diagnosis yet"
            + (" (the job has not finished)" if job["status"] in ("queued", "running") else "")
        )
    for d in diagnoses:
        flag = " (provisional)" if d.get("provisional") else ""
        print(f"\n{d['kind']}: {d['code']}  [{d['severity']}, confidence {d['confidence']:.2f}]{flag}")
        if d.get("recommendation"):
            print(f"  recommendation: {d['recommendation']}")
        for line in _evidence_summary(d.get("evidence") or {}):
            print(f"  evidence: {line}")
        if d.get("patch"):
            print(f"  patch: {json.dumps(d['patch'], separators=(',', ':'))}")
    for line in remedy_hint(job):
        print(line)
    return EXIT_OK


def remedy_hint(job: dict[str, Any]) -> list[str]:
    """The remedy commands the API would accept for this job (its ``remedy`` offer), and nothing else."""
    offer = job.get("remedy") or {}
    applies = offer.get("applies") or []
    others = [code for code in offer.get("findings") or [] if code not in applies]
    lines = []
    if offer.get("available"):
        lines.append(f"apply the fix: saddle remedy {job['id']}   (applies {', '.join(applies)})")
    if others:
        lead = (
            "or one fix at a time"
            if applies
            else f"verdict {job.get('verdict')} comes with no fix; to try one"
        )
        lines.append(f"{lead}: saddle remedy {job['id']} --finding CODE   ({', '.join(others)})")
    return ["", *lines] if lines else []


def cmd_remedy(args: argparse.Namespace) -> int:
    client = _client(args)
    result = client.remedy(args.job, args.finding or None)
    job = result["job"]
    if args.json and not args.watch:
        _print_json(result)
        return EXIT_OK
    print(
        f"job {job['id']} submitted: remedy of {args.job} applying {', '.join(result['applied'])}; "
        f"patch {json.dumps(result['patch'], separators=(',', ':'))}",
        file=sys.stderr if args.watch or args.json else sys.stdout,
    )
    if not args.watch:
        return EXIT_OK
    return watch(client, job["id"], args.json)


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job)
    if args.json:
        _print_json(job)
    else:
        note = " (stops at its next step)" if job["status"] == "running" else ""
        print(f"job {job['id']} {job['status']}{note}")
    return EXIT_OK


def _sweeps_call(args: argparse.Namespace, call: Any) -> Any:
    from saddle.client import ApiError

    try:
        return call()
    except ApiError as err:
        if err.route_missing:
            raise ApiError(
                err.status, f"the API at {args.api} has no /v1/sweeps (an older server?)"
            ) from None
        raise


def cmd_sweep_create(args: argparse.Namespace) -> int:
    client = _client(args)
    config = _load_yaml(args.file)
    if not isinstance(config, dict):
        raise UsageError(f"{args.file}: a sweep must be a mapping")
    sweep = _sweeps_call(args, lambda: client.create_sweep(config, args.idempotency_key))
    if args.json:
        _print_json(sweep)
    else:
        print(sweep["id"])  # alone on stdout, for scripts: ID=$(saddle sweep create FILE)
        print(f"follow it: saddle sweep status {sweep['id']} --watch", file=sys.stderr)
    return EXIT_OK


def _param(value: Any) -> str:
    return (
        _fmt(value) if isinstance(value, int | float) and not isinstance(value, bool) else json.dumps(value)
    )


def format_sweep_progress(sweep: dict[str, Any]) -> str:
    p, best = sweep.get("progress") or {}, sweep.get("best")
    line = (
        f"sweep {sweep['status']}: {p.get('done', 0)}/{p.get('total', '?')} trials done, "
        f"{p.get('running', 0)} running, {p.get('queued', 0)} queued"
    )
    return line + (f"; best {_fmt(best.get('value'))} (trial {best['number']})" if best else "")


def watch_sweep(client: Client, args: argparse.Namespace, poll_seconds: float = 2.0) -> dict[str, Any]:
    """Progress on stderr until the sweep ends; returns its final state."""
    from saddle.progress import ProgressLine

    line = ProgressLine()
    while True:
        sweep = _sweeps_call(args, lambda: client.sweep(args.sweep))
        line.show(format_sweep_progress(sweep))
        if sweep["status"] != "running":
            line.close()
            return sweep
        time.sleep(poll_seconds)


def cmd_sweep_status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.watch:
        try:
            sweep = watch_sweep(client, args)
        except KeyboardInterrupt:
            print(f"\nstopped watching; sweep {args.sweep} goes on", file=sys.stderr)
            return 130
    else:
        sweep = _sweeps_call(args, lambda: client.sweep(args.sweep))
    if args.json:
        _print_json(sweep)
        return EXIT_OK
    p, best = sweep.get("progress") or {}, sweep.get("best")
    objective = sweep.get("objective") or {}
    print(f"sweep {sweep['id']} {sweep.get('name', '')}: {sweep['status']}")
    print(
        f"  progress {p.get('done', 0)}/{p.get('total', '?')} done "
        f"({p.get('running', 0)} running, {p.get('queued', 0)} queued, {p.get('failed', 0)} failed, "
        f"{p.get('pruned', 0)} pruned)"
    )
    print(f"  objective {objective.get('mode', '')} {objective.get('metric', '')}")
    if best:
        print(
            f"  best trial {best['number']}: {_fmt(best.get('value'))} {json.dumps(best.get('params'))} job {best.get('job_id')}"
        )
    trials = sweep.get("trials") or []
    if trials:
        names = sorted({k for t in trials for k in t.get("params", {})})
        rows = [
            [
                t["number"],
                t["status"],
                t.get("objective"),
                t.get("verdict"),
                *[_param(t["params"].get(n)) for n in names],
                t.get("job_id"),
            ]
            for t in trials
        ]
        print()
        print(_table(rows, ["#", "STATUS", "OBJECTIVE", "VERDICT", *names, "JOB"]))
    for f in sweep.get("findings") or []:
        print(f"\nfinding: {f.get('code')}  {f.get('conclusion') or f.get('recommendation') or ''}".rstrip())
    if sweep.get("conclusion"):
        print(f"\nconclusion: {sweep['conclusion']}")
    return EXIT_OK


STUDIES = ("depth", "batch-size", "batch-size-timing")


def cmd_study(args: argparse.Namespace) -> int:
    """A checklist experiment in one call: depth and batch-size studies are sweeps (followed with
    `saddle sweep status`), a batch-size timing study is a job (followed like any job)."""
    client = _client(args)
    body = _load_yaml(args.file)
    if not isinstance(body, dict):
        raise UsageError(f"{args.file}: a study must be a mapping")
    made = _sweeps_call(args, lambda: client.create_study(args.kind, body, args.idempotency_key))
    is_job = args.kind == "batch-size-timing"
    if args.watch and is_job:
        print(f"study {made['id']} submitted", file=sys.stderr)
        return watch(client, made["id"], args.json)
    if args.watch:
        args.sweep = made["id"]
        return cmd_sweep_status(args)
    if args.json:
        _print_json(made)
        return EXIT_OK
    print(made["id"])
    follow = f"saddle show {made['id']}" if is_job else f"saddle sweep status {made['id']} --watch"
    print(f"follow it: {follow}", file=sys.stderr)
    return EXIT_OK


def cmd_dataset_upload(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{args.file}: no such file")
    row = _client(args).upload_dataset(path, args.name, args.label, args.task)
    if args.json:
        _print_json(row)
        return EXIT_OK
    print(row["id"])
    label = f"label column {row['label']!r}" if row.get("label") else "labels y"
    chosen = " (found by name; --label picks another)" if row.get("label") and not args.label else ""
    print(
        f"{row['name']}: {row['n_rows']} rows, {row['n_features']} features, {label}{chosen}, task {row['task']}",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_dataset_ls(args: argparse.Namespace) -> int:
    rows = _client(args).datasets(args.limit)
    if args.json:
        _print_json(rows)
        return EXIT_OK
    table = [
        [
            d["id"],
            d["name"],
            d["format"],
            d["task"],
            d["n_rows"],
            d["n_features"],
            d.get("label"),
            _when(d["created_at"]),
        ]
        for d in rows
    ]
    print(_table(table, ["ID", "NAME", "FORMAT", "TASK", "ROWS", "FEATURES", "LABEL", "CREATED"]))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from saddle.demo import run_demo

    return run_demo(port=args.port, serve=not args.exit, spec_path=args.spec)


# --------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saddle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    # Options every API command takes, after the command name: saddle ls --status running --json
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument(
        "--api", default=os.environ.get("SADDLE_API_URL", "http://127.0.0.1:8000"), help="$SADDLE_API_URL"
    )
    api.add_argument("--token", help="bearer token (default: $SADDLE_TOKEN, then .saddle/token)")
    api.add_argument("--json", action="store_true", help="print the API's JSON instead of text")

    log_format = argparse.ArgumentParser(add_help=False)
    log_format.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="log lines (default $SADDLE_LOG_FORMAT or logfmt)",
    )

    p = sub.add_parser("api", help="run the HTTP API (uvicorn)", parents=[log_format])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a Celery training worker", parents=[log_format])
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--loglevel", default="info")
    p.add_argument("--hostname", default="saddle@%h")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "reaper",
        help="re-queue jobs whose worker or broker was lost (the API runs one too)",
        parents=[log_format],
    )
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

    p = sub.add_parser("submit", help="submit a JobSpec (YAML or JSON file, - for stdin)", parents=[api])
    p.add_argument("spec")
    p.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="override a field, e.g. --set epochs=5 --set init_from.job=ID; repeatable",
    )
    p.add_argument("--watch", action="store_true", help="show progress until the job ends, then its result")
    p.add_argument("--idempotency-key")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("ls", help="list jobs, newest first", parents=[api])
    p.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    p.add_argument(
        "--verdict", help="e.g. overfitting, good_fit (an unknown one is refused, naming the valid ones)"
    )
    p.add_argument(
        "--finding",
        action="append",
        metavar="CODE",
        help="jobs with this finding, e.g. oscillation; repeatable",
    )
    p.add_argument("--name")
    p.add_argument("--sweep", help="jobs of this sweep")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="a job's status, spec highlights, progress and result", parents=[api])
    p.add_argument("job")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("metrics", help="a job's metric series (summary, --csv or --json)", parents=[api])
    p.add_argument("job")
    p.add_argument("--name", action="append", help="series name, e.g. val/loss; repeatable (default: all)")
    p.add_argument("--split", choices=("train", "val", "test"))
    p.add_argument("--max-points", type=int, default=2000, help="downsample each series to this many points")
    p.add_argument("--csv", action="store_true", help="name,step,epoch,value rows on stdout")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser(
        "diagnose", help="a job's verdict and findings: evidence, recommendation, patch", parents=[api]
    )
    p.add_argument("job")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser(
        "remedy", help="resubmit a finished job with its diagnosis' fixes applied", parents=[api]
    )
    p.add_argument("job")
    p.add_argument(
        "--finding", action="append", metavar="CODE", help="apply this diagnosis' patch; repeatable"
    )
    p.add_argument("--watch", action="store_true", help="follow the new job until it ends")
    p.set_defaults(func=cmd_remedy)

    p = sub.add_parser("cancel", help="cancel a queued or running job", parents=[api])
    p.add_argument("job")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("sweep", help="hyperparameter sweeps (POST/GET /v1/sweeps)")
    ssub = p.add_subparsers(dest="sweep_command", required=True)
    s = ssub.add_parser("create", help="create a sweep from a YAML/JSON file", parents=[api])
    s.add_argument("file")
    s.add_argument("--idempotency-key")
    s.set_defaults(func=cmd_sweep_create)
    s = ssub.add_parser("status", help="a sweep's progress, best trial and trials", parents=[api])
    s.add_argument("sweep")
    s.add_argument("--watch", action="store_true", help="show progress until the sweep ends, then its result")
    s.set_defaults(func=cmd_sweep_status)

    p = sub.add_parser(
        "study",
        help="a one-call study: depth, batch-size (sweeps) or batch-size-timing (a job); see examples/",
        parents=[api],
    )
    p.add_argument("kind", choices=STUDIES)
    p.add_argument("file", help="the study's YAML/JSON body, e.g. examples/study-depth.yaml")
    p.add_argument("--watch", action="store_true", help="follow it until it ends")
    p.add_argument("--idempotency-key")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("dataset", help="uploaded datasets")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    d = dsub.add_parser(
        "upload", help="upload a CSV (header row, a label column) or an NPZ (arrays X, y)", parents=[api]
    )
    d.add_argument("file")
    d.add_argument("--name", required=True)
    d.add_argument("--label", help="the CSV's label column (default: a column named label, target or y)")
    d.add_argument("--task", choices=("auto", "classification", "regression"), default="auto")
    d.set_defaults(func=cmd_dataset_upload)
    d = dsub.add_parser("ls", help="list this project's datasets", parents=[api])
    d.add_argument("--limit", type=int, default=100)
    d.set_defaults(func=cmd_dataset_ls)

    p = sub.add_parser(
        "demo", help="embedded mode: SQLite, filesystem broker, a real worker; runs an example job"
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="the API's port (default 8000, or $SADDLE_DEMO_PORT; when taken, the next free one)",
    )
    p.add_argument("--spec", default=None, help="spec to run instead of the built-in example")
    p.add_argument("--exit", action="store_true", help="stop the services after the job instead of serving")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on bad usage
    from saddle.client import ApiError, Unreachable

    try:
        return args.func(args)
    except UsageError as err:
        print(f"saddle: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as err:
        print(f"saddle: the API refused: {err.detail} (HTTP {err.status})", file=sys.stderr)
        if err.status == 401 and getattr(args, "token_source", None):
            print(f"  the token came from {args.token_source}; the API is {args.api}", file=sys.stderr)
        return EXIT_API
    except Unreachable as err:
        print(f"saddle: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except BrokenPipeError:
        # `saddle metrics JOB --csv | head`: the reader left; stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    # `python -m saddle.cli` (how tests and the demo start the services): run the imported module,
    # so the logging config's "saddle.cli.JobIdFilter" and the Celery signals share one CURRENT_JOB.
    from saddle.cli import main as imported_main

    sys.exit(imported_main())
