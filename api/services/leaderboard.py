"""A sweep's leaderboard: its trials ranked by the sweep's objective, best first.

A trial is ranked once it completed with a finite objective (the value ``sweeps.scheduler`` recorded
for it: the objective metric at the best epoch, or at the last one). Each entry carries the sampled
parameters, the objective, a few summary metrics of its job, the last value of the validation and
test series, the verdict and the status. One statement reads the page; the last values are index
probes of the metric table's primary key, so a 500-entry page costs a few milliseconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.services.sweeps import progress
from models.metrics import last_values
from models.numeric import finite_or_none
from models.summary import RunSummary
from models.tables import Job, Sweep, SweepTrial
from sweeps.spec import sweep_spec

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# From the job's summary (models.summary.RunSummary).
SUMMARY_KEYS = (
    "best_val_loss",
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "n_parameters",
    "seconds_per_epoch",
)
# The last logged value of each (absent for a regression task's accuracies).
FINAL_SERIES = ("val/loss", "val/accuracy", "test/loss", "test/accuracy")


class LeaderboardEntry(BaseModel):
    rank: int = Field(description="1 is the best objective; ties go to the earlier trial")
    number: int = Field(description="the trial's number in launch order")
    job_id: str
    params: dict[str, Any] = Field(description="the sampled point: dotted spec path -> value")
    objective: float
    status: str
    verdict: str | None
    summary: dict[str, Any] = Field(description=f"from the job's summary: {', '.join(SUMMARY_KEYS)}")
    final: dict[str, float | None] = Field(description=f"last logged value of {', '.join(FINAL_SERIES)}")
    finished_at: datetime | None


class LeaderboardOut(BaseModel):
    sweep_id: str
    name: str
    status: str
    objective: dict[str, Any] = Field(description="metric, mode (min or max) and at (best or last)")
    progress: dict[str, int] = Field(description="trials by status, as GET /v1/sweeps/{id} counts them")
    ranked: int = Field(description="trials with an objective value; entries holds the first `limit`")
    entries: list[LeaderboardEntry]


def leaderboard(session: Session, *, sweep: Sweep, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """``sweep`` is the caller's (``api.deps.OwnedSweep``)."""
    spec = sweep_spec(sweep)
    mode = spec.objective.mode or "min"
    ranked = (
        SweepTrial.sweep_id == sweep.id,
        SweepTrial.state == "complete",
        SweepTrial.value.is_not(None),
        SweepTrial.job_id.is_not(None),
    )
    order = SweepTrial.value.desc() if mode == "max" else SweepTrial.value.asc()
    # The page of trials first, then their jobs: the join and the per-series probes run `limit` times.
    top = (
        select(
            SweepTrial.number, SweepTrial.job_id, SweepTrial.params, SweepTrial.value, SweepTrial.finished_at
        )
        .where(*ranked)
        .order_by(order, SweepTrial.number)
        .limit(limit)
        .subquery()
    )
    top_order = top.c.value.desc() if mode == "max" else top.c.value.asc()
    rows = session.execute(
        select(
            top.c.number,
            top.c.job_id,
            top.c.params,
            top.c.value,
            top.c.finished_at,
            Job.status,
            Job.verdict,
            Job.summary,
        )
        .join(Job, Job.id == top.c.job_id)
        .order_by(top_order, top.c.number)
    ).all()
    finals = last_values(session, [row.job_id for row in rows], FINAL_SERIES)
    entries = [
        {
            "rank": rank,
            "number": number,
            "job_id": job_id,
            "params": params,
            "objective": value,
            "status": status,
            "verdict": verdict,
            "summary": RunSummary.of(summary).model_dump(include=set(SUMMARY_KEYS)),
            "final": {name: finite_or_none(finals.get((job_id, name))) for name in FINAL_SERIES},
            "finished_at": finished_at,
        }
        for rank, (
            number,
            job_id,
            params,
            value,
            finished_at,
            status,
            verdict,
            summary,
        ) in enumerate(rows, start=1)
    ]
    return {
        "sweep_id": sweep.id,
        "name": sweep.name,
        "status": sweep.status,
        "objective": spec.objective.model_dump(),
        "progress": progress(session, sweep=sweep),
        "ranked": session.scalar(select(func.count()).select_from(SweepTrial).where(*ranked)) or 0,
        "entries": entries,
    }
