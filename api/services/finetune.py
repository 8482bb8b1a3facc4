"""Checks on init_from before a fine-tuning job is accepted: the parent exists in this project, has
the checkpoint asked for, and its model has the same shapes (the worker checks tensor by tensor
again when it loads the weights)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.budget import dataset_shape
from models.errors import Invalid
from models.spec import JobSpec
from models.tables import Checkpoint, Dataset, Job, Project

# The fields of model that decide parameter shapes (activation, dropout and init do not).
SHAPE_FIELDS = ("arch", "hidden", "norm", "channels")


def _features(session: Session, *, spec: JobSpec) -> tuple[int, int]:
    uploaded = None
    if spec.data.dataset and len(spec.data.dataset) == 32:
        row = session.execute(
            select(Dataset.n_rows, Dataset.n_features).where(Dataset.id == spec.data.dataset)
        ).first()
        uploaded = (row[0], row[1]) if row else None
    _, features, outputs = dataset_shape(spec, uploaded)
    return features, outputs


def differences(session: Session, *, parent: JobSpec, child: JobSpec) -> list[str]:
    diffs = [
        f"model.{name}: parent {getattr(parent.model, name)!r}, this job {getattr(child.model, name)!r}"
        for name in SHAPE_FIELDS
        if getattr(parent.model, name) != getattr(child.model, name)
    ]
    (pf, po), (cf, co) = _features(session, spec=parent), _features(session, spec=child)
    if pf != cf:
        diffs.append(f"input features: parent {pf}, this job {cf}")
    if po != co or parent.data.task != child.data.task:
        diffs.append(f"outputs: parent {po} ({parent.data.task}), this job {co} ({child.data.task})")
    return diffs


def check_parent_exists(session: Session, *, project: Project, job_id: str) -> Job:
    parent = session.scalars(select(Job).where(Job.id == job_id, Job.project_id == project.id)).one_or_none()
    if parent is None:
        raise Invalid(f"init_from.job: job {job_id} not found in this project")
    return parent


def check_init_from(session: Session, *, project: Project, spec: JobSpec) -> None:
    ref = spec.init_from
    if ref is None:
        return
    parent = check_parent_exists(session, project=project, job_id=ref.job)
    has_checkpoint = session.scalar(
        select(Checkpoint.id).where(Checkpoint.job_id == ref.job, Checkpoint.kind == ref.checkpoint).limit(1)
    )
    if has_checkpoint is None:
        raise Invalid(f"init_from.checkpoint: job {ref.job} has no {ref.checkpoint} checkpoint (yet)")
    diffs = differences(session, parent=JobSpec.model_validate(parent.spec), child=spec)
    if diffs:
        raise Invalid("init_from: incompatible architecture: " + "; ".join(diffs))
