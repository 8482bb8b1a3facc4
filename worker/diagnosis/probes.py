"""Probe runs (``analysis.probes: true``): settle model bias against optimization trouble by experiment.

When a job underfits, two small sibling runs are launched from its spec: one with a larger model
(same optimizer), one with the same model under Adam at its standard rate. When both have finished,
the parent's verdict is decided from their training losses:
    the other optimizer reaches a clearly lower training loss with the *same* model → the model could
    fit; the original optimizer did not get there: optimization trouble;
    only the larger model does → the model was too small: model bias;
"clearly" is 30% lower than the parent's final training loss, several times the run-to-run spread
of a training loss across seeds on these sizes. Otherwise the rules' verdict stands. The probes are
linked as evidence on the parent's verdict.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from models.db import session_scope
from models.patch import merge_patch
from models.tables import Diagnosis, Job
from worker.celery_app import enqueue_job

log = logging.getLogger("saddle.diagnosis")
CLEARLY_LOWER = 0.7


def probe_patches(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    model = spec.get("model") or {}
    hidden = model.get("hidden") or [64]
    larger = (
        {"model": {"arch": "mlp", "hidden": [64, 64]}}
        if model.get("arch") == "linear"
        else {"model": {"hidden": [min(65_536, 2 * h) for h in hidden] + [min(65_536, 2 * hidden[-1])]}}
    )
    return {
        "larger_model": larger,
        "other_optimizer": {"optimizer": {"name": "adam", "lr": 0.001, "momentum": 0.0, "nesterov": False}},
    }


def launch_probes(job: Job) -> list[str]:
    """Insert and enqueue the probe jobs of an underfitting parent; returns their ids."""
    base = merge_patch(job.spec, {"analysis": {"probes": False, "hessian": {"enabled": False}}})
    ids = []
    with session_scope() as session:
        for what, patch in probe_patches(job.spec).items():
            spec = merge_patch(base, patch) | {"name": f"{job.name or 'job'}-probe-{what}"[:200]}
            probe = Job(
                project_id=job.project_id,
                name=spec["name"],
                spec=spec,
                tags={"probe": what},
                status="queued",
                kind="probe",
                parent_id=job.id,
            )
            session.add(probe)
            session.flush()
            ids.append(probe.id)
    for probe_id in ids:
        enqueue_job(probe_id)
    return ids


def _final_train_loss(job: Job) -> float | None:
    return (job.progress or {}).get("train_loss")


def conclude(parent_id: str) -> str | None:
    """Once every probe of ``parent_id`` has finished, decide its verdict from them."""
    with session_scope() as session:
        parent = session.get(Job, parent_id)
        probes = session.scalars(select(Job).where(Job.parent_id == parent_id, Job.kind == "probe")).all()
        if parent is None or not probes or any(p.status in ("queued", "running") for p in probes):
            return None
        base = _final_train_loss(parent)
        results = {(p.tags or {}).get("probe"): (p.id, p.status, _final_train_loss(p)) for p in probes}
        if base is None:
            return None
        better = {
            what: loss is not None and loss < CLEARLY_LOWER * base for what, (_, _, loss) in results.items()
        }
        if better.get("other_optimizer"):
            verdict = "underfitting.optimization"
        elif better.get("larger_model"):
            verdict = "underfitting.model_bias"
        else:
            return parent.verdict
        evidence = {
            "parent_train_loss": base,
            "probes": [
                {"what": w, "job": j, "status": st, "train_loss": loss}
                for w, (j, st, loss) in results.items()
            ],
            "rule": f"a probe is better when its training loss is below {CLEARLY_LOWER} x the parent's",
        }
        row = session.scalars(
            select(Diagnosis).where(Diagnosis.job_id == parent_id, Diagnosis.kind == "verdict")
        ).first()
        if row is not None:
            changed = row.code != verdict
            row.code = verdict
            row.evidence = {**(row.evidence or {}), "probes": evidence}
            if changed:
                row.recommendation = "Probe runs decided it: " + (
                    "the same model trains much further with Adam, so the optimizer, "
                    "not the model, held it back."
                    if verdict.endswith("optimization")
                    else "only a larger model trains much further, so the model is too small."
                )
                row.patch = probe_patches(parent.spec)[
                    "other_optimizer" if verdict.endswith("optimization") else "larger_model"
                ]
        parent.verdict = verdict
        log.info("job %s: probes decided %s", parent_id, verdict)
        return verdict


def after_diagnosis(job_id: str) -> None:
    """Called when a job's final diagnosis is stored: launch probes, or conclude a parent's."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        session.expunge(job)
    if job.kind == "probe" and job.parent_id:
        conclude(job.parent_id)
    elif (job.spec.get("analysis") or {}).get("probes") and (job.verdict or "").startswith("underfitting"):
        launch_probes(job)
