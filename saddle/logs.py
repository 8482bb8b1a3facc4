"""The services' log lines: `saddle api`, `saddle worker` and `saddle reaper` log one line per record.

logfmt by default (key=value: readable in a terminal, parsed by Loki, Vector, Datadog) or JSON lines
with SADDLE_LOG_FORMAT=json, rendered by structlog's renderers. The code logs through the standard
``logging`` module (so do uvicorn, Celery and SQLAlchemy): structlog is the formatter of those
records. Every record carries job_id when one is known: an explicit ``extra={"job_id": ...}``, else
the job the current Celery task runs, else a job id named in the message ("job <id>: ..." from the
worker, "/v1/jobs/<id>" in the API's access log).
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import os
import re
from datetime import UTC, datetime
from typing import Any

import click
import structlog
from structlog.typing import EventDict

CURRENT_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar("saddle_job_id", default=None)
_JOB_IN_MESSAGE = re.compile(r"(?:\b(?:job|study)[ :=]+|/v1/jobs/)([0-9a-f]{32})\b")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_JOB_ID_IN_ARGS = re.compile(r"^[(\[]'([0-9a-f]{32})'")
LOG_FORMATS = ("logfmt", "json")
# The fields every line starts with, in this order; a record's own key=values (structlog's) follow.
LEADING_FIELDS = ("ts", "level", "logger", "pid", "job_id", "msg")
# The option of every command that runs a service.
log_format_option = click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), help="log lines (default $SADDLE_LOG_FORMAT or logfmt)"
)


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


def _record_fields(_logger: Any, _method: str, event: EventDict) -> EventDict:
    """ts, level, logger, pid and job_id from the ``logging`` record; the message becomes msg."""
    record: logging.LogRecord = event["_record"]
    event.update(
        ts=datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        level=record.levelname.lower(),
        logger=record.name,
        pid=record.process,
        job_id=getattr(record, "job_id", None) or event.get("job_id"),
        msg=event.pop("event"),
    )
    return event


def _leading_fields_first(_logger: Any, _method: str, event: EventDict) -> EventDict:
    """The fixed fields first (JSON keeps this order), no empty job_id, the traceback (exc) last."""
    exc = event.pop("exception", None)
    leading = {key: event.pop(key, None) for key in LEADING_FIELDS}
    ordered = {key: value for key, value in leading.items() if value is not None}
    return ordered | event | ({"exc": exc} if exc else {})


class StructuredFormatter(structlog.stdlib.ProcessorFormatter):
    """One line per record: ts, level, logger, pid, job_id (if any), msg, exc (if any)."""

    def __init__(self, fmt: str = "logfmt") -> None:
        if fmt not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
        renderer = (
            structlog.processors.JSONRenderer(default=str)
            if fmt == "json"
            else structlog.processors.LogfmtRenderer()
        )
        super().__init__(
            processors=[
                _record_fields,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _leading_fields_first,
                renderer,
            ]
        )
        self.fmt = fmt


def logging_config(fmt: str | None = None, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict; uvicorn applies it in each of its worker processes too."""
    fmt = fmt or os.environ.get("SADDLE_LOG_FORMAT", "logfmt")
    return {
        "version": 1,
        # Loggers created at import time (saddle.api, saddle.worker, ...) must keep working.
        "disable_existing_loggers": False,
        "filters": {"job_id": {"()": "saddle.logs.JobIdFilter"}},
        "formatters": {"structured": {"()": "saddle.logs.StructuredFormatter", "fmt": fmt}},
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


def track_celery_jobs(fmt: str | None = None) -> None:
    """Within a task, its job id (the tasks' first argument) tags every record the task logs; the
    worker's pool processes log in ``fmt`` too."""
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
        configure_logging(fmt, logging.getLevelName(loglevel) if isinstance(loglevel, int) else "INFO")

    task_prerun.connect(prerun, weak=False)
    task_postrun.connect(postrun, weak=False)
    setup_logging.connect(keep_ours, weak=False)
