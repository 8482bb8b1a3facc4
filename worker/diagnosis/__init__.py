"""The diagnosis engine: findings from the rules, one verdict decided from them, stored with the job.

``diagnose(evidence)`` is pure (tests and notebooks call it on in-memory runs); ``diagnose_job`` reads
a stored job, runs it, and replaces the job's diagnoses and verdict in one transaction.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import delete, update

from models.db import session_scope, with_retries
from models.jsonsafe import json_safe
from models.tables import Diagnosis, Job
from worker.diagnosis import rules
from worker.diagnosis.evidence import Evidence, from_database
from worker.diagnosis.rules import Finding, facts


def findings(ev: Evidence) -> tuple[list[Finding], Finding | None, dict[str, Any] | None]:
    """All findings, the divergence or overfitting/mismatch verdict finding if any, and underfit facts."""
    f = facts(ev)
    div = rules.diverged(ev)
    found: list[Finding] = []
    lr_high = rules.learning_rate_too_high(ev, div)
    if lr_high:
        found.append(lr_high)
    found += [x for x in (rules.label_encoding(ev), rules.unshuffled(ev)) if x]
    if div:
        return found, with_likely_cause(ev, div, found), None
    under = rules.underfit_evidence(ev, f)
    underfit = under is not None
    nc = rules.not_converged(ev, f, underfit)
    cps = rules.critical_points(ev, underfit)
    saddle = any(c.code == "critical_point.saddle" for c in cps)
    found += cps
    stalled = nc is not None
    found += [
        x
        for x in (
            nc,
            rules.oscillation(ev, f),
            rules.gradient_flow(ev),
            rules.ill_conditioned_features(ev, underfit, stalled),
            rules.plateau(ev, f, underfit, saddle),
            rules.learning_rate_too_low(ev, nc, underfit),
        )
        if x
    ]
    found += rules.units(ev, underfit)
    if underfit:
        return found, None, under
    verdict = rules.overfitting(ev, f) or rules.mismatch(ev, f)
    return found, verdict, None


def with_likely_cause(ev: Evidence, div: Finding, found: list[Finding]) -> Finding:
    """The diverged verdict names its likely cause and carries that cause's fix: a rate past the
    stable limit when the curvature or the early loss says so, else unscaled features, else the
    generic cure (a 10x lower rate and gradient clipping)."""
    causes = {x.code: x for x in found}
    scale = (ev.summary.get("data") or {}).get("feature_scale") or {}
    if "learning_rate.too_high" in causes:
        cause, patch = "learning_rate.too_high", causes["learning_rate.too_high"].patch
    elif ev.spec.data.scaling == "none" and scale.get("ratio", 1.0) >= 100:
        cause, patch = "ill_conditioned_features", {"data": {"scaling": "standardize"}}
    else:
        cause = "unknown"
        patch = {
            "optimizer": {"lr": float(f"{ev.spec.optimizer.lr / 10:.2g}")},
            "regularization": {"grad_clip": 1.0},
        }
    div.evidence["likely_cause"] = cause
    div.patch = patch
    return div


# Which cause's fix to offer first when several explain a stuck optimizer: root causes in the setup
# (initialization, data order, feature scale, architecture) before symptoms of the optimizer.
CAUSE_PRIORITY = [
    "unshuffled_data",
    "ill_conditioned_features",
    "vanishing_gradients",
    "exploding_gradients",
    "critical_point.saddle",
    "dead_units",
    "saturated_units",
    "plateau.flat_surface",
    "learning_rate.too_low",
    "oscillation",
    "not_converged",
]


def cause_rank(ev: Evidence, finding: Finding) -> int:
    # A saddle made by all-zero initialization is itself a setup error: it goes first.
    if finding.code == "critical_point.saddle" and ev.spec.model.init.weights == "zeros":
        return -1
    return CAUSE_PRIORITY.index(finding.code)


def underfit_verdict(ev: Evidence, found: list[Finding], under: dict[str, Any]) -> Finding:
    """Model bias or optimization trouble. A convex model (linear, no hidden layer) that converged
    cannot be stuck, so it is bias; otherwise any finding that blames the optimizer makes it
    optimization trouble; with none, the optimizer reached the model's best: bias."""
    convex = ev.spec.model.arch == "linear"
    blamed = sorted((x for x in found if x.blames_optimizer), key=lambda x: cause_rank(ev, x))
    if convex:  # a convex loss has no saddles or bad minima: only "not finished yet" blames the optimizer
        blamed = [
            x
            for x in blamed
            if x.code in ("not_converged", "ill_conditioned_features", "learning_rate.too_low")
        ]
    if blamed:
        patch = next((x.patch for x in blamed if x.patch), {})
        return Finding(
            "underfitting.optimization",
            "warning",
            max(x.confidence for x in blamed),
            under | {"causes": [x.code for x in blamed]},
            "The training loss is large because optimization is in trouble, not because the model is too "
            f"small: {', '.join(x.code for x in blamed)}. Apply the first cause's fix.",
            patch,
            kind="verdict",
        )
    why = (
        "a convex model that converged has reached its global optimum"
        if convex
        else "the optimizer converged with no sign of trouble (gradient, curvature, units)"
    )
    return Finding(
        "underfitting.model_bias",
        "warning",
        0.8,
        under | {"convex_model": convex},
        f"The training loss is large and {why}: the model is too simple for the data. Add capacity.",
        bigger_model(ev),
        kind="verdict",
    )


def bigger_model(ev: Evidence) -> dict[str, Any]:
    m = ev.spec.model
    if m.arch == "linear":
        return {"model": {"arch": "mlp", "hidden": [64, 64], "activation": "relu"}}
    hidden = [min(65_536, 2 * h) for h in m.hidden] or [64]
    return {"model": {"hidden": [*hidden, hidden[-1]]}}


def diagnose(ev: Evidence) -> list[Finding]:
    """Verdict first, then findings sorted by severity."""
    found, verdict, under = findings(ev)
    if verdict is None:
        if under is not None:
            verdict = underfit_verdict(ev, found, under)
        else:
            verdict = Finding(
                "good_fit",
                "info",
                0.8,
                good_fit_evidence(ev),
                "Training and validation losses are low and stable; nothing to fix.",
                kind="verdict",
            )
    order = {"error": 0, "warning": 1, "info": 2}
    return [verdict, *sorted(found, key=lambda x: order[x.severity])]


def good_fit_evidence(ev: Evidence) -> dict[str, Any]:
    f = facts(ev)
    out = {
        "train_loss": rules._r(float(f.train_loss[-1])) if len(f.train_loss) else None,
        "best_val_loss": rules._r(float(min(f.val_loss))) if len(f.val_loss) else None,
        "chance_loss": rules._r(f.chance),
    }
    if "knn_val_accuracy" in ev.reference:
        out |= {
            "val_accuracy": rules._r(ev.final("val/accuracy")),
            "reference_val_accuracy": rules._r(ev.reference["knn_val_accuracy"]),
        }
    return out


def diagnose_job(job_id: str, provisional: bool = False) -> list[Finding]:
    ev, _ = from_database(job_id)
    result = diagnose(ev)
    verdict = result[0].code

    def transaction() -> None:
        with session_scope() as session:
            session.execute(delete(Diagnosis).where(Diagnosis.job_id == job_id))
            for x in result:
                session.add(
                    Diagnosis(
                        job_id=job_id,
                        code=x.code,
                        kind=x.kind,
                        severity=x.severity,
                        confidence=_finite(x.confidence),
                        evidence=json_safe(x.evidence),
                        recommendation=x.recommendation,
                        patch=json_safe(x.patch),
                        provisional=provisional,
                    )
                )
            session.execute(
                update(Job).where(Job.id == job_id).values(verdict=None if provisional else verdict)
            )

    with_retries(transaction)
    return result


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.5
