"""The Celery application. Torch-free, so the API can import it to enqueue without loading torch.

Job state lives in Postgres; a message only says "run job <id>". Late acks with reject-on-worker-lost
make a message that a dying worker held go back to the queue, and the job's attempt token (see
``worker.lifecycle``) keeps two deliveries of one job from both training it.
"""

from __future__ import annotations

from celery import Celery

from models.settings import Settings, get_settings

RUN_JOB = "saddle.run_job"
ON_DEMAND_SPECTRUM = "saddle.on_demand_spectrum"
BATCH_TIMING_TASK = "saddle.batch_size_timing"
# Which task runs a job row of each kind; anything not listed trains (RUN_JOB).
TASK_FOR_KIND = {"study": BATCH_TIMING_TASK}
# Redis re-delivers an unacked message after this long; jobs may run for days (resources.max_minutes
# is bounded by a week), and the attempt token protects against an early second delivery anyway.
VISIBILITY_TIMEOUT_SECONDS = 8 * 24 * 3600


def broker_options(settings: Settings) -> dict:
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_folder.resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    return {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("saddle", broker=settings.broker_url)
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


app = make_celery()


def enqueue_job(job_id: str, kind: str = "train", queue: str | None = None) -> None:
    """Send a job to its pool: ``queue`` is the job row's, else this process's SADDLE_QUEUE."""
    app.send_task(TASK_FOR_KIND.get(kind, RUN_JOB), args=[job_id], queue=queue or get_settings().queue)


def enqueue_spectrum(job_id: str, checkpoint_id: int, settings: dict) -> None:
    app.send_task(ON_DEMAND_SPECTRUM, args=[job_id, checkpoint_id, settings], queue=get_settings().queue)
