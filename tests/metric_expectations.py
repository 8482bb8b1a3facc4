"""Which metric rows a finished job must have, derived from its spec alone, and what is off.

Used by the fault tests (S3 resume, Postgres restart) and by ``benchmarks/soak.py``: a job that was
interrupted and resumed must end with exactly the rows of an uninterrupted run, no row missing and
none twice. The pattern of steps follows ``worker.training``: per-update series at steps 1..E·U,
per-epoch series at the steps where epochs end (e·U, with or without epoch 0), the gradient
statistics on every ``Trainer.grad_stats_stride(U)``-th update of each epoch, where
U = ceil(n_train / batch_size).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from models.metrics import load_blocks

PER_UPDATE = ("train/lr", "train/batch_loss")
PER_EPOCH_FROM_0 = ("train/loss", "val/loss")
PER_EPOCH_FROM_1 = ("time/epoch_seconds", "train/data_loss")


def updates_per_epoch(spec: dict[str, Any], n_rows_data: Any = None) -> int:
    """U for a spec on a built-in dataset (or on ``n_rows_data``, a RawData of an uploaded one)."""
    from models.spec import JobSpec
    from worker.data import load_builtin, prepare

    parsed = JobSpec.model_validate(spec)
    raw = n_rows_data or load_builtin(parsed.data.dataset, parsed.data.params, parsed.seed)
    n_train = len(prepare(parsed.data, raw, parsed.seed).y_train)
    return math.ceil(n_train / parsed.batch_size)


def expected_patterns(epochs: int, updates: int) -> dict[str, set[int]]:
    from worker.training import Trainer

    ends = {e * updates for e in range(epochs + 1)}
    stride = Trainer.grad_stats_stride(updates)
    per_epoch_stats = math.ceil(updates / stride)
    return {
        "per_update": set(range(1, epochs * updates + 1)),
        "per_epoch_from_0": ends,
        "per_epoch_from_1": ends - {0},
        "grad_stats": {e * updates + k * stride + 1 for e in range(epochs) for k in range(per_epoch_stats)},
    }


def metric_problems(session: Session, job_id: str, epochs: int, updates: int) -> tuple[list[str], int]:
    """Everything missing, duplicated or unexpected in a job's metric rows, and how many rows it has.

    Every series must follow one of the expected step patterns exactly; the named series must
    follow theirs."""
    rows = [
        (block.name, step, count)
        for _, block in load_blocks(session, [job_id])
        for step, count in zip(*(a.tolist() for a in np.unique(block.steps, return_counts=True)), strict=True)
    ]
    patterns = expected_patterns(epochs, updates)
    steps: dict[str, set[int]] = {}
    problems: list[str] = []
    total = 0
    for name, step, count in rows:
        steps.setdefault(name, set()).add(step)
        total += count
        if count != 1:
            problems.append(f"{name} step {step}: {count} rows")
    required = (
        {n: "per_update" for n in PER_UPDATE}
        | {n: "per_epoch_from_0" for n in PER_EPOCH_FROM_0}
        | {n: "per_epoch_from_1" for n in PER_EPOCH_FROM_1}
    )
    for name, pattern in required.items():
        got = steps.get(name, set())
        if got != patterns[pattern]:
            missing, extra = patterns[pattern] - got, got - patterns[pattern]
            problems.append(
                f"{name}: {len(missing)} missing (first {sorted(missing)[:5]}), {len(extra)} unexpected"
            )
    for name, got in steps.items():
        if name not in required and got not in patterns.values():
            nearest = min(patterns, key=lambda p: len(patterns[p] ^ got))
            missing = patterns[nearest] - got
            problems.append(f"{name}: steps match no pattern (nearest {nearest}, {len(missing)} missing)")
    return problems, total
