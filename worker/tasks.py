"""Celery tasks. Importing this module loads torch; only worker processes import it."""

from __future__ import annotations

from worker.celery_app import RUN_JOB, app
from worker.runner import run_job


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: str) -> str:
    return run_job(job_id)
