"""Fine-tuning: start a job from another job's checkpoint, optionally freezing layers."""

from __future__ import annotations

from sqlalchemy import select

from models.artifacts import get_store
from models.db import session_scope
from models.spec import JobSpec
from models.tables import Checkpoint, Job
from worker.training import Trainer, describe_architecture, load_checkpoint


class IncompatibleParent(ValueError):
    pass


def parent_checkpoint(spec: JobSpec, project_id: str) -> tuple[Checkpoint, bytes]:
    ref = spec.init_from
    assert ref is not None
    with session_scope() as session:
        parent = session.scalars(
            select(Job).where(Job.id == ref.job, Job.project_id == project_id)
        ).one_or_none()
        if parent is None:
            raise IncompatibleParent(f"init_from.job: job {ref.job} not found in this project")
        row = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == ref.job, Checkpoint.kind == ref.checkpoint)
            .order_by(Checkpoint.step.desc())
            .limit(1)
        ).one_or_none()
    if row is None:
        raise IncompatibleParent(f"init_from.checkpoint: job {ref.job} has no {ref.checkpoint} checkpoint")
    return row, get_store().get_bytes(row.artifact)


def architecture_differences(mine: dict[str, list[int]], theirs: dict[str, list[int]]) -> list[str]:
    diffs = [f"{name}: parent has no such tensor" for name in mine if name not in theirs]
    diffs += [f"{name}: parent's model has it, this one does not" for name in theirs if name not in mine]
    diffs += [
        f"{name}: shape {theirs[name]} in the parent, {mine[name]} here"
        for name in mine
        if name in theirs and mine[name] != theirs[name]
    ]
    return diffs


def freeze(trainer: Trainer, prefixes: list[str]) -> list[str]:
    """Stop gradients for parameters whose name starts with one of ``prefixes`` (e.g. ``blocks.0``)."""
    names = [name for name, _ in trainer.model.named_parameters()]
    unknown = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n in names)]
    if unknown:
        raise IncompatibleParent(f"init_from.freeze: no layer named {unknown}; layers: {sorted(set(names))}")
    frozen = []
    for name, param in trainer.model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    trainer.reset_optimizer()
    return frozen


def initialize_from_parent(trainer: Trainer, project_id: str) -> dict | None:
    """Load the parent's weights into ``trainer.model``; returns what was done, for the summary."""
    ref = trainer.spec.init_from
    if ref is None:
        return None
    row, payload = parent_checkpoint(trainer.spec, project_id)
    state = load_checkpoint(payload)
    diffs = architecture_differences(describe_architecture(trainer.model), state["arch"])
    if diffs:
        raise IncompatibleParent("init_from: architectures differ: " + "; ".join(diffs))
    trainer.model.load_state_dict(state["model"])
    frozen = freeze(trainer, ref.freeze) if ref.freeze else []
    return {"job": ref.job, "checkpoint": ref.checkpoint, "epoch": row.epoch, "frozen": frozen}
