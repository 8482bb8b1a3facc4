"""The worker tells the API which architectures it can build (models/arch_reports.py).

When the worker's main process is ready it discovers its plug-ins (``saddle.models`` entry points,
SADDLE_MODEL_PLUGINS) and writes its row; a daemon thread refreshes the row every
``REPORT_SECONDS`` so that it outlives the TTL only while the worker does; a worker shutting down
deletes it. A failed write is logged and retried at the next refresh: it never stops the worker.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

from models.arch_reports import REPORT_SECONDS, report, withdraw
from models.db import session_scope
from worker.nets import available_architectures

log = logging.getLogger("saddle.worker")
_stop = threading.Event()


def report_once(worker: str) -> None:
    try:
        with session_scope() as session:
            report(session, worker=worker, archs=available_architectures())
    except Exception:  # the database may be away: the next refresh tries again
        log.warning("could not report this worker's architectures", exc_info=True)


def _refresh(worker: str) -> None:
    while not _stop.wait(REPORT_SECONDS):
        report_once(worker)


def _hostname(sender: Any) -> str:
    """worker_ready's sender is the consumer, worker_shutting_down's the hostname itself."""
    return sender if isinstance(sender, str) else str(getattr(sender, "hostname", None) or "worker")


def connect_arch_reports() -> None:
    """Connect the report to the worker's start and shutdown (called where the tasks are defined)."""

    @worker_ready.connect(weak=False)
    def _on_ready(sender: Any = None, **_: Any) -> None:
        worker = _hostname(sender)
        report_once(worker)
        log.info("architectures offered: %s", ", ".join(available_architectures()))
        threading.Thread(target=_refresh, args=(worker,), name="arch-reports", daemon=True).start()

    @worker_shutting_down.connect(weak=False)
    def _on_shutdown(sender: Any = None, **_: Any) -> None:
        _stop.set()
        try:
            with session_scope() as session:
                withdraw(session, worker=_hostname(sender))
        except Exception:
            log.warning("could not withdraw this worker's architectures", exc_info=True)
