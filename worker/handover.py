"""The next delivery without Celery's hand-over: a pool process that ended a job takes the next
message of its queue itself.

Celery gives a pool process its next message only after the task returned: the main process acks
the one that ended, fetches the next from Redis and passes it down a pipe to the pool process, which
unpacks it (7 ms a job on a quiet machine, 10 ms and more under load; a third of the time between
one 0.2 s sweep trial and the next, benchmarks/sweep.py). So a task whose job ran takes the next
message itself (kombu's ``basic_get``: RPOP from the queue into Redis's unacked set, the same two
steps as Celery's own consumer), runs it as Celery would — the same task function, ``task_prerun``
and ``task_postrun``, Celery's log lines, ``Reject`` back on the queue, any other error acked — acks
it, and takes the next, until the queue is empty, a delivery is skipped (it ran nothing: a deferred
trial, a duplicate), the worker shuts down, or a message is no task of ours. Then the task returns
and Celery acks the message it delivered.

The guarantees stay as they were. Each message is one turn (dispatch.fairness) taken by one process,
and the claim decides what runs, as for a delivery. A message held this way sits in Redis's unacked
set exactly like one a Celery consumer holds, so a worker killed while holding it is repaired the
same way (the reaper re-queues the job whose heartbeat went stale, and puts back a message whose job
is still queued); the message Celery delivered stays unacked until the chain ends (acks_late), and
if it is redelivered after a kill its job has ended: a skipped delivery. The main process reserves
nothing meanwhile (one slot, prefetch 1: the message it holds is that slot's), so no message waits
behind a running job. Only with Redis as the broker; other brokers keep Celery's path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import Reject
from celery.signals import task_postrun, task_prerun

from models.settings import get_settings
from worker.celery_app import app

log = logging.getLogger("saddle.worker")
trace_log = logging.getLogger("celery.app.trace")  # where Celery logs a task's end

# What a task whose job ran nothing returns (worker.runner, worker.timing): the chain stops there.
RAN_NOTHING = ("skipped",)

_connection: Any = None
_connection_pid = 0


def _channel() -> Any:
    """This process's channel to the broker (a forked pool process opens its own)."""
    global _connection, _connection_pid
    if _connection is None or _connection_pid != os.getpid():
        _connection, _connection_pid = app.connection_for_read(), os.getpid()
    return _connection.default_channel


def _forget_connection() -> None:
    global _connection
    connection, _connection = _connection, None
    if connection is not None:
        try:
            connection.release()
        except Exception:
            log.debug("closing the broker connection failed", exc_info=True)


def enabled() -> bool:
    return get_settings().broker_url.startswith(("redis://", "rediss://"))


def take(queue: str | None = None) -> Any | None:
    """The next message of this worker's queue, now unacked and this process's; None when the queue
    is empty or the broker cannot be reached (Celery's consumer then delivers as before)."""
    try:
        return _channel().basic_get(queue or get_settings().queue)
    except Exception as exc:
        log.warning("could not take the next message from the broker: %s: %s", type(exc).__name__, exc)
        _forget_connection()
        return None


def run_following(
    runs: dict[str, Callable[..., Any]], stopping: Callable[[], bool], queue: str | None = None
) -> int:
    """Take and run the next messages of this worker's queue (or ``queue``) until one runs nothing,
    the queue is empty, the worker stops, or a message is no task in ``runs``; returns how many
    ran. Never raises."""
    if not enabled():
        return 0
    ran = 0

    while not stopping():
        message = take(queue)
        if message is None:
            break
        try:
            result = _run(message, runs)
        except Exception:  # the broker went away while acking: the reaper repairs what is left
            log.exception("running a message taken from the queue failed")
            _forget_connection()
            break
        if result is None:
            break
        ran += 1
        if result in RAN_NOTHING:
            break
    return ran


def _run(message: Any, runs: dict[str, Callable[..., Any]]) -> Any | None:
    """Run one message as Celery's worker would; its result, or None when the chain must stop (not
    ours, rejected back to its queue, or failed)."""
    name = message.headers.get("task")
    run = runs.get(name)
    if run is None:  # another task on this queue: back for Celery's consumer
        message.reject(requeue=True)
        return None
    task_id = message.headers.get("id")
    args, kwargs, _embed = message.decode()
    task = app.tasks.get(name)
    task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
    started = time.monotonic()
    state, result = "SUCCESS", None
    try:
        result = run(*args, **kwargs)
    except Reject as exc:  # the database is away, or the worker shuts down: back on its queue
        state = "REJECTED"
        message.reject(requeue=exc.requeue)
        trace_log.warning("Task %s[%s] rejected: %s", name, task_id, exc.reason)
    except Exception as exc:  # as Celery does with acks_late: acked, logged with its traceback
        state = "FAILURE"
        message.ack()
        trace_log.error("Task %s[%s] raised unexpected: %r", name, task_id, exc, exc_info=True)
    else:
        message.ack()
        trace_log.info(
            "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
            {
                "name": name,
                "id": task_id,
                "runtime": time.monotonic() - started,
                "return_value": repr(result),
            },
        )
    finally:
        task_postrun.send(
            sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs, retval=result, state=state
        )
    return result if state == "SUCCESS" else None
