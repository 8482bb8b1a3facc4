"""``saddle worker``: a Celery training worker. Its own module because it loads torch (through the
tasks), which no other command needs."""

from __future__ import annotations

import os

import click

import worker.tasks  # noqa: F401  (registers the tasks before the pool forks)
from models.settings import get_settings
from saddle.commands import EXIT_OK
from saddle.logs import configure_logging, log_format_option, track_celery_jobs
from worker.celery_app import app


@click.command("worker")
@click.option("--concurrency", type=int, default=1, show_default=True, help="training processes")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--hostname", default="saddle@%h", show_default=True)
@log_format_option
def run_worker(concurrency: int, loglevel: str, hostname: str, log_format: str | None) -> int:
    settings = get_settings()
    if not settings.torch_threads:
        # Split the cores between the pool's processes so they do not oversubscribe the CPU; they
        # are forked from this one and so share its settings.
        settings.torch_threads = max(1, (os.cpu_count() or 1) // concurrency)
    configure_logging(log_format, loglevel)
    track_celery_jobs(log_format)
    if settings.broker_url.startswith("filesystem://"):
        app.conf.worker_enable_remote_control = False  # the filesystem broker has no broadcast
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--queues={settings.queue}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--hostname={hostname}",
        ]
    )
    return EXIT_OK
