"""The database schema (SQLAlchemy 2, typed). Postgres is the one source of truth.

Alembic migrations under ``migrations/`` must produce exactly these tables; a test runs autogenerate
against a migrated database and expects no difference.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from models.settings import get_settings

# JSONB on Postgres (indexable, compact), plain JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY; Postgres gets a 64-bit key.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class MetricValue(TypeDecorator):
    """A metric's value, NaN included: a diverged run's loss is a fact to store, not an error.

    Postgres keeps NaN and ±inf in a double column. SQLite keeps ±inf but turns NaN into NULL, so
    there NULL *is* NaN: written as NULL, read back as NaN."""

    impl = Float
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Any) -> float | None:
        if value is not None and dialect.name == "sqlite" and math.isnan(value):
            return None
        return value

    def process_result_value(self, value: float | None, dialect: Any) -> float:
        return math.nan if value is None else value


JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When a worker last started one of its jobs: projects take turns for free worker slots, the
    # one served longest ago first (dispatch.fairness).
    last_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A bearer token. Only its SHA-256 is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="running")
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    best_job_id: Mapped[str | None] = mapped_column(String(32))
    findings: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("project_id", "idempotency_key", name="uq_sweeps_idempotency"),)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(8))  # csv | npz | images
    sha256: Mapped[str] = mapped_column(String(64))
    artifact: Mapped[str] = mapped_column(String(300))  # artifact-store key, derived from the id only
    n_rows: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(16))  # classification | regression
    input_shape: Mapped[list[int] | None] = mapped_column(JSONType)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Image uploads (format "images"): the source format, class names and the per-channel mean and
    # std the worker normalizes with; None for CSV and NPZ.
    image_info: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    # A spec may name an upload by its name (models.dataset_refs): one per name in a project.
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_datasets_project_name"),)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    tags: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    verdict: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    # The worker polls this flag between steps; a queued job with it set never starts.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Fencing token: the worker that holds the current attempt writes; a stale one is refused.
    attempt_token: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(200))
    # The Celery queue of the pool that runs it (the inserting process's SADDLE_QUEUE), so that a
    # reaper serving another pool puts it back where it belongs. None on rows from before 0004.
    queue: Mapped[str | None] = mapped_column(String(200), default=lambda: get_settings().queue)
    device: Mapped[str | None] = mapped_column(String(64))
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16), default="train")  # train | probe | remedy | trial
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when a delivery found its project at SADDLE_MAX_RUNNING_JOBS: the job waits without a
    # message until one of its project's jobs ends (dispatch.fairness.release sends it again).
    parked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key", name="uq_jobs_idempotency"),
        # The jobs waiting for a worker, by pool and project: what each claim's fair turn reads.
        Index(
            "ix_jobs_waiting",
            "queue",
            "project_id",
            "created_at",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        # The list endpoint pages newest first within a project, often filtered by status or verdict.
        Index("ix_jobs_project_created", "project_id", "created_at", "id"),
        Index("ix_jobs_project_status_created", "project_id", "status", "created_at"),
        Index("ix_jobs_project_verdict_created", "project_id", "verdict", "created_at"),
        Index("ix_jobs_sweep", "sweep_id"),
        Index("ix_jobs_parent", "parent_id"),
        # Tag filters and text equality on spec paths add a containment test these answer (see
        # api.services.query). Postgres only: on SQLite they are declared empty (WHERE 0).
        Index("ix_jobs_tags", "tags", postgresql_using="gin", sqlite_where=text("0")),
        Index(
            "ix_jobs_spec",
            "spec",
            postgresql_using="gin",
            postgresql_ops={"spec": "jsonb_path_ops"},
            sqlite_where=text("0"),
        ),
    )


# Sorting by the summary's headline metric (sort=summary.best_val_loss, either direction) walks this
# index in order and stops at the page's end instead of sorting every matching job: the expression
# is the one api.services.query sorts by. Other summary keys sort the filtered rows.
Index(
    "ix_jobs_project_best_val_loss",
    Job.project_id,
    Job.summary[("best_val_loss",)].as_float(),
    Job.id,
)


class SweepTrial(Base):
    """One trial of a sweep: what Optuna knows about it. Each scheduling step rebuilds an in-memory
    Optuna study from these rows, so no process holds sweep state (see ``sweeps``)."""

    __tablename__ = "sweep_trials"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)  # 0, 1, ... in launch order (Optuna's trial number)
    # Null when the sampled point gave an invalid spec and no job could be created (see ``error``).
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)  # dotted spec path -> value
    # The sampler's and pruner's per-trial memory (GridSampler's grid_id, successive-halving rungs).
    system_attrs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="running")  # see sweeps.spec.TRIAL_STATES
    value: Mapped[float | None] = mapped_column(Float)  # the objective, once complete
    intermediate: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # epoch -> metric value
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("sweep_id", "number", name="uq_sweep_trials_number"),
        Index("ix_sweep_trials_sweep_state", "sweep_id", "state"),
    )


class MetricChunk(Base):
    """A stretch of one series: its points in step order, packed into three arrays (one row per
    block of steps instead of one per point, see ``models.metrics``). Steps are big-endian int64,
    epochs and values big-endian float64 (Postgres's own ``int8send``/``float8send`` byte order, so
    SQL can build chunks too). NaN and ±inf are stored as themselves, on SQLite as well.

    The chunks of a series never overlap: ``[first_step, last_step]`` ranges are disjoint, so a
    point lives in exactly one chunk and a re-logged step replaces its value (``write_points``)."""

    __tablename__ = "metric_chunks"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # "<split>/<metric>", e.g. "val/loss"
    first_step: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_step: Mapped[int] = mapped_column(BigInteger)
    n: Mapped[int] = mapped_column(Integer)
    steps: Mapped[bytes] = mapped_column(LargeBinary)
    epochs: Mapped[bytes] = mapped_column(LargeBinary)
    vals: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_metric_chunks_last_step", "job_id", "name", "last_step"),)


class MetricRollup(Base):
    """Aggregates of one series over aligned step buckets of one width (a power of two): a cache
    that reads fill and writes invalidate (see ``models.metrics``), so a 1,000,000-point series is
    downsampled from a few thousand rows. Row (job, name, width, bucket) covers the steps
    ``[bucket * width, (bucket + 1) * width)``; for each width the rows form a prefix of the series,
    up to the largest bucket stored (a row with ``n`` 0 marks how far an empty stretch was filled)."""

    __tablename__ = "metric_rollups"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    width: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_step: Mapped[int] = mapped_column(BigInteger)  # (bucket + 1) * width - 1, what writes invalidate by
    n: Mapped[int] = mapped_column(Integer)
    n_finite: Mapped[int] = mapped_column(Integer)
    step_sum: Mapped[float] = mapped_column(Float)
    epoch_sum: Mapped[float] = mapped_column(Float)
    value_sum: Mapped[float] = mapped_column(Float)  # of the finite values
    value_min: Mapped[float | None] = mapped_column(Float)  # null when no value is finite
    value_max: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_metric_rollups_last_step", "job_id", "name", "last_step"),)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # periodic | best | last
    artifact: Mapped[str] = mapped_column(String(300))
    val_loss: Mapped[float | None] = mapped_column(Float)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("job_id", "kind", "epoch", name="uq_checkpoints_job_kind_epoch"),)


class Spectrum(Base):
    __tablename__ = "spectra"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(16))  # periodic | best | final | on_demand
    method: Mapped[str] = mapped_column(String(16))
    samples: Mapped[int] = mapped_column(Integer)
    hvps: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    top: Mapped[list[float]] = mapped_column(JSONType)
    bottom: Mapped[list[float]] = mapped_column(JSONType)
    trace: Mapped[float | None] = mapped_column(Float)
    trace_stderr: Mapped[float | None] = mapped_column(Float)
    grad_norm: Mapped[float] = mapped_column(MetricValue, nullable=True)  # NaN at a diverged point
    hg_norm: Mapped[float | None] = mapped_column(Float)
    critical_point: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    density: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    escape_artifact: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Diagnosis(Base):
    __tablename__ = "diagnoses"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # verdict | finding
    severity: Mapped[str] = mapped_column(String(16))  # info | warning | error
    confidence: Mapped[float] = mapped_column(Float)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    recommendation: Mapped[str] = mapped_column(Text, default="")
    patch: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    provisional: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_diagnoses_code", "code"),)


class WorkerArchitectures(Base):
    """The model architectures one live worker can build (built-ins and its ``saddle.models``
    plug-ins), refreshed by the worker while it runs; the API reads them to validate ``model.arch``
    without importing any plug-in (models.archs)."""

    __tablename__ = "worker_architectures"

    worker: Mapped[str] = mapped_column(String(200), primary_key=True)  # Celery hostname
    archs: Mapped[list[str]] = mapped_column(JSONType, default=list)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
