"""Configuration shared by the API and the worker.

Every value comes from an environment variable with the ``SADDLE_`` prefix. The defaults are the
embedded mode (SQLite, Celery's filesystem broker, artifacts in a local folder), so one machine with
no services runs the same code path as production; production sets the URLs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

HOME = Path(".saddle")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SADDLE_", extra="ignore")

    database_url: str = f"sqlite:///{HOME}/saddle.db"
    broker_url: str = "filesystem://"
    # Folder that the filesystem broker uses for its message files (embedded mode only).
    broker_folder: Path = HOME / "broker"
    artifacts: Path = HOME / "artifacts"
    # Where artifacts live: empty for the folder above, or s3://bucket/prefix for an S3-compatible
    # store shared by machines that share no disk (credentials from the standard AWS_* variables).
    artifacts_url: str = ""
    s3_endpoint_url: str | None = None  # MinIO or another S3-speaking server; empty for AWS
    s3_region: str | None = None  # default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1
    queue: str = "saddle"

    # Bounds that keep one request from eating the machine.
    max_page_size: int = 500
    max_metric_points: int = 100_000
    max_epochs: int = 10_000
    max_parameters: int = 50_000_000
    max_data_bytes: int = 4 * 2**30
    max_epoch_rows: int = 1_000_000_000  # epochs × training rows of one job: the samples it will see
    max_spectra: int = 1_000  # Hessian spectra one job may take (epochs / analysis.hessian.every_epochs)
    # Request bodies, counted as they stream in whatever the framing (Content-Length or chunked):
    # uploads (multipart) up to max_request_bytes, every other body up to max_json_bytes.
    max_request_bytes: int = 50 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    # Uploads validated at once by one API process; more wait (without holding a thread or a
    # database connection) up to upload_wait_seconds, then get a 503 with Retry-After.
    upload_slots: int = 2
    upload_wait_seconds: float = 30.0

    # Per-project quotas: jobs waiting (a submission past it is a 429) and jobs running at once (the
    # rest wait their turn; projects take turns for free worker slots).
    max_queued_jobs: int = 1_000
    max_running_jobs: int = 32

    # Worker behaviour.
    heartbeat_seconds: float = 2.0
    # A running job whose heartbeat is older than this lost its worker; the reaper re-queues it.
    stale_after_seconds: float = 30.0
    reaper_seconds: float = 10.0  # how often the API's reaper looks (0 disables it)
    max_attempts: int = 3  # deliveries that ended with the worker lost before a job is failed
    # Tries of a transaction whose database connection dropped (delays 0.25 s doubling to 5 s: the
    # default 16 wait out about a minute, a restart or a managed database's failover).
    db_retry_attempts: int = 16
    metric_flush_points: int = 5_000
    # Batches of metric_flush_points the worker's metric writer holds before the trainer waits.
    metric_queue_batches: int = 8
    torch_threads: int = 0  # 0: share the cores between the worker's processes

    # Model factories an operator may add (import paths "pkg.module:function"), never from requests.
    model_plugins: list[str] = []


@lru_cache
def get_settings() -> Settings:
    return Settings()
