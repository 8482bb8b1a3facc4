"""Compare several jobs: where their specs differ, and their per-epoch series aligned by epoch."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.errors import Invalid, NotFound
from models.metrics import read_series
from models.tables import Job, Project

DEFAULT_SERIES = ("train/loss", "val/loss", "test/loss", "train/accuracy", "val/accuracy", "test/accuracy")
MAX_JOBS = 20


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value}


def spec_diff(specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Dotted path → {job id: value} for every path whose value is not the same in all jobs."""
    flat = {job_id: flatten(spec) for job_id, spec in specs.items()}
    paths = sorted(set().union(*(f.keys() for f in flat.values())))
    return {
        path: {job_id: f.get(path) for job_id, f in flat.items()}
        for path in paths
        if len({repr(f.get(path)) for f in flat.values()}) > 1
    }


def aligned(session: Session, *, job_ids: list[str], names: list[str]) -> dict[str, Any]:
    """Per series name: the union of epochs, and each job's value at each epoch (null where missing)."""
    per_job = {
        job_id: {s.name: s for s in read_series(session, job_id, names, max_points=100_000)}
        for job_id in job_ids
    }
    out: dict[str, Any] = {}
    for name in names:
        by_job = {
            j: dict(zip(s[name].epochs, s[name].values, strict=True)) for j, s in per_job.items() if name in s
        }
        if not by_job:
            continue
        epochs = sorted(set().union(*(v.keys() for v in by_job.values())))
        out[name] = {"epochs": epochs, "values": {j: [v.get(e) for e in epochs] for j, v in by_job.items()}}
    return out


def compare(
    session: Session, *, project: Project, job_ids: list[str], names: list[str] | None
) -> dict[str, Any]:
    if not 2 <= len(job_ids) <= MAX_JOBS:
        raise Invalid(f"ids: give 2 to {MAX_JOBS} job ids")
    jobs = session.scalars(select(Job).where(Job.project_id == project.id, Job.id.in_(job_ids))).all()
    missing = sorted(set(job_ids) - {j.id for j in jobs})
    if missing:
        raise NotFound(f"jobs not found: {', '.join(missing)}")
    return {
        "jobs": [{"id": j.id, "name": j.name, "status": j.status, "verdict": j.verdict} for j in jobs],
        "spec_diff": spec_diff({j.id: j.spec for j in jobs}),
        "series": aligned(session, job_ids=[j.id for j in jobs], names=names or list(DEFAULT_SERIES)),
    }
