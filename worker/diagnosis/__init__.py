"""The diagnosis engine: findings from the rules, one verdict decided from them, stored with the job.

``diagnose(evidence)`` is pure (tests, notebooks and benchmarks/diagnosis call it on in-memory
runs); ``diagnose_job`` reads a stored job, runs it, and replaces the job's diagnoses and verdict in
one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update

from models.db import session_scope, with_retries
from models.findings import Finding, write_diagnoses
from models.spec import JobSpec
from models.tables import Job
from worker.diagnosis import rules
from worker.diagnosis.evidence import Evidence, from_database
from worker.diagnosis.recipes import larger_model, probe_patches
from worker.diagnosis.rules import Facts, facts


@dataclass
class Reading:
    """What the rules found, before a verdict is chosen."""

    found: list[Finding]
    verdict: Finding | None  # diverged, overfitting or mismatch, when one applies
    underfit: dict[str, Any] | None  # the large-training-loss evidence, when the loss is large


def read(ev: Evidence) -> Reading:
    f = facts(ev)
    div = rules.diverged(ev)
    under = None if div else rules.underfit_evidence(ev, f)
    found = [
        x
        for x in (
            rules.learning_rate_too_high(ev, f, div, under is not None),
            rules.label_encoding(ev),
            rules.unshuffled(ev, under is not None),
        )
        if x
    ]
    if div:
        return Reading(found, with_likely_cause(ev, div, found), None)
    found += underfit_findings(ev, f, under is not None)
    if under is not None:
        return Reading(found, None, under)
    return Reading(found, rules.overfitting(ev, f) or rules.mismatch(ev, f), None)


def underfit_findings(ev: Evidence, f: Facts, underfit: bool) -> list[Finding]:
    nc = rules.not_converged(ev, f, underfit)
    cps = rules.critical_points(ev, underfit)
    saddle = any(c.code == "critical_point.saddle" for c in cps)
    flow, units = rules.gradient_flow(ev), rules.units(ev, underfit)
    found = [
        *cps,
        *(
            x
            for x in (
                nc,
                rules.oscillation(ev, f),
                flow,
                rules.ill_conditioned_features(ev, f, underfit, nc is not None),
                rules.plateau(ev, f, underfit, saddle),
            )
            if x
        ),
        *units,
    ]
    # A larger step does not revive dead or saturated units: the rate is not the cause then.
    stuck_elsewhere = bool(units)
    too_low = rules.learning_rate_too_low(ev, f, underfit, stuck_elsewhere, nc)
    return found + ([too_low] if too_low else [])


def with_likely_cause(ev: Evidence, div: Finding, found: list[Finding]) -> Finding:
    """The diverged verdict names its likely cause and carries that cause's fix: unscaled features
    when their scales span more than a factor 100 (the inputs themselves blow the activations up),
    else a rate past the stable limit."""
    causes = {x.code: x for x in found}
    scale = (ev.summary.get("data") or {}).get("feature_scale") or {}
    if ev.spec.data.scaling == "none" and scale.get("ratio", 1.0) >= 100:
        cause, patch = "ill_conditioned_features", {"data": {"scaling": "standardize"}}
    else:
        cause = "learning_rate.too_high"
        patch = causes["learning_rate.too_high"].patch if cause in causes else {}
    div.evidence["likely_cause"] = cause
    div.patch = patch
    return div


# Which cause's fix to offer first when several explain a stuck optimizer: root causes in the setup
# (initialization, data order, feature scale, architecture) before symptoms of the optimizer.
CAUSE_PRIORITY = [
    "unshuffled_data",
    "ill_conditioned_features",
    "learning_rate.too_high",
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
    # Units saturated by unscaled inputs are the feature scale's doing, a setup error like
    # ill-conditioning, and the saddle or flat stretch they make is its symptom: their fix (standardize)
    # ranks with the feature scale's. (On the benchmark, 16 unscaled runs whose first cause would
    # have been the saddle got gradient noise, which lowered none of their training losses.)
    if finding.code == "saturated_units" and ev.spec.data.scaling == "none":
        return CAUSE_PRIORITY.index("ill_conditioned_features")
    return CAUSE_PRIORITY.index(finding.code)


# The large-loss readings (keys of rules.underfit_evidence) that stand whatever the probes show.
READINGS_PROBES_CANNOT_OVERRULE = (
    "below_reference",
    "held_out_at_chance",
    "still_falling",
    "sorted_rows_hold_loss_up",
    "nonlinear_reference",
)


def underfit_verdict(ev: Evidence, found: list[Finding], under: dict[str, Any]) -> Finding | None:
    """Model bias or optimization trouble. Probe runs decide when they are conclusive (the same
    model trained with a standard recipe does clearly better: optimization; only a larger model
    does: bias). Otherwise: a convex model (linear, no hidden layer) that converged cannot be stuck,
    so it is bias; any finding that blames the optimizer makes it optimization trouble (unless only
    depth's symptoms do, and nothing simpler learns the data: ``rules.nothing_simpler_learns``);
    with none, the optimizer reached the model's best: bias.

    None (not underfitting) when the loss was judged large only for being near chance, the model
    fits its training rows as well as the k-NN reference does, and both probes ran and neither
    trained clearly lower: the labels carry little signal (heavy noise, overlapping classes), and
    the experiment shows no fix that lowers the loss."""
    outcome, probes = rules.probe_outcome(ev, facts(ev))
    if probes:
        under = under | {"probes": probes}
    # (Probes, a fraction of the job's compute, cannot show what 4x its epochs would: a run judged
    # large for still falling keeps that reading; nor what a whole run on shuffled rows would: one
    # judged large for its sorted rows (the minibatches it met fit far better) keeps it too, and so
    # does a model that the trees, fitted to the end, clearly beat.)
    decided = any(under.get(reading) for reading in READINGS_PROBES_CANNOT_OVERRULE)
    if outcome == "neither" and not decided:
        return None
    convex = ev.spec.model.arch == "linear"
    if rules.at_linear_optimum(ev, facts(ev)):  # a linear model in disguise that reached its optimum
        return bias_verdict(ev, under | {"linear_optimum": True}, "it reached the best linear model's loss")
    blamed = sorted((x for x in found if x.blames_optimizer), key=lambda x: cause_rank(ev, x))
    overruled = depth_symptoms_only(ev, outcome, blamed, under)
    if overruled:
        under = under | {"depth_symptoms_overruled": [x.code for x in blamed]}
        blamed = []
    if convex:  # a convex loss has no saddles or bad minima: only "not finished yet" blames the optimizer
        blamed = [
            x
            for x in blamed
            if x.code in ("not_converged", "ill_conditioned_features", "learning_rate.too_low")
        ]
    if outcome == "optimization" or (outcome != "model_bias" and blamed):
        return optimization_verdict(ev, blamed, under, outcome)
    why = (
        "only a larger model trains clearly further (probe runs)"
        if outcome == "model_bias"
        else "a convex model that converged has reached its global optimum"
        if convex
        else "nothing simpler learns the data either (the linear model and the same model with a standard "
        "recipe train no lower), so the deep stack's vanishing gradients or flat directions are not what "
        "holds it back"
        if overruled
        else "the optimizer converged with no sign of trouble (gradient, curvature, units)"
    )
    verdict = bias_verdict(ev, under | {"convex_model": convex}, why, 0.9 if outcome == "model_bias" else 0.7)
    if overruled:
        # A deeper, wider ReLU stack under the job's own plain SGD trains no better than the
        # sigmoid one did: offer it with the standard recipe, as the larger-model probe ran it.
        verdict.patch = probe_patches(ev.spec)["larger_model"]
    return verdict


def depth_symptoms_only(
    ev: Evidence, outcome: str | None, blamed: list[Finding], under: dict[str, Any]
) -> bool:
    """Only depth's symptoms blame the optimizer, no probe settled it, and nothing shows that this
    model could learn the data: no evidence against the optimizer, so the verdict falls to the
    larger model. Not for all-zero weights: the saddle they make is a setup error that the default
    initialization removes (the labels' better-optimized run), whatever a short probe showed."""
    return (
        outcome in (None, "neither")
        and bool(blamed)
        and {x.code for x in blamed} <= rules.DEPTH_SYMPTOMS
        and ev.spec.model.init.weights != "zeros"
        and rules.nothing_simpler_learns(ev, under)
    )


def linear_regression_bias(ev: Evidence) -> Finding | None:
    """Model bias for a converged linear regression whose loss no reading calls large, when the
    larger-model probe fits clearly more of the target's variance (``rules.linear_regression_unvouched``,
    ``rules.only_larger_probe_lower``); None otherwise (a linear target is fitted as well as it can be)."""
    f = facts(ev)
    if not rules.linear_regression_unvouched(ev, f):
        return None
    probes = rules.only_larger_probe_lower(ev, f)
    if probes is None:
        return None
    evidence = rules.loss_against_chance(f) | {
        "convex_model": ev.spec.model.arch == "linear",
        "probes": probes,
    }
    why = "a larger network, probed for a fraction of the job's compute, fits clearly more of the target's variance"
    return bias_verdict(ev, evidence, why)


def bias_verdict(ev: Evidence, evidence: dict[str, Any], why: str, confidence: float = 0.9) -> Finding:
    return Finding(
        code="underfitting.model_bias",
        severity="warning",
        confidence=confidence,
        evidence=evidence,
        recommendation=f"The training loss is large and {why}: the model is too simple for the data. Add capacity.",
        patch=larger_model(ev.spec),
        kind="verdict",
    )


def optimization_verdict(
    ev: Evidence, blamed: list[Finding], under: dict[str, Any], outcome: str | None
) -> Finding:
    """The first cause's fix; where no finding names a cause but a probe showed the standard recipe
    trains the same model clearly further, that recipe."""
    patch = next((x.patch for x in blamed if x.patch), None)
    if patch is None:
        patch = probe_patches(ev.spec)["tuned_optimizer"] if outcome == "optimization" else {}
    causes = [x.code for x in blamed]
    said = (
        f": {', '.join(causes)}. Apply the first cause's fix."
        if causes
        else ": the same model trains clearly further with Adam, standardized and shuffled data (probe run)."
    )
    return Finding(
        code="underfitting.optimization",
        severity="warning",
        confidence=max([x.confidence for x in blamed], default=0.8),
        evidence=under | {"causes": causes},
        recommendation="The training loss is large because optimization is in trouble, not because the model is "
        "too small" + said,
        patch=patch,
        kind="verdict",
    )


def diagnose(ev: Evidence) -> list[Finding]:
    """Verdict first, then findings sorted by severity."""
    reading = read(ev)
    verdict, found, set_aside = reading.verdict, reading.found, []
    if verdict is None and reading.underfit is not None:
        verdict = underfit_verdict(ev, reading.found, reading.underfit)
        set_aside = contradicted_fixes(verdict, found)
        aside = {x.code for x in set_aside}
        found = [x for x in found if x.code not in aside]
    elif verdict is None:
        # Outside the underfit path on purpose: no reading calls this loss large, so the findings
        # stay those of a fitted run (a large-loss reading would turn on the rate and convergence
        # findings for every linear regression); only the probe can make it model bias.
        verdict = linear_regression_bias(ev)
    if verdict is None:
        verdict = Finding(
            code="good_fit",
            severity="info",
            confidence=0.8,
            evidence=good_fit_evidence(ev),
            recommendation="Training and validation losses are low and stable; nothing to fix.",
            kind="verdict",
        )
    if set_aside:  # what those findings measured stays with the verdict that set them aside
        verdict.evidence["set_aside"] = {x.code: x.evidence for x in set_aside}
    order = {"error": 0, "warning": 1, "info": 2}
    return [verdict, *sorted(found, key=lambda x: order[x.severity])]


# Depth's symptoms whose finding is its fix rather than a measurement: "vanishing gradients" means
# "ReLU with He initialization in these layers would train the early layers, and the loss with
# them". (A saddle or a flat stretch is a measured property of the point training reached: it
# stays listed.)
DEPTH_FIXES = frozenset({"vanishing_gradients"})


def contradicted_fixes(verdict: Finding | None, found: list[Finding]) -> list[Finding]:
    """Depth fixes that the large training loss's conclusion contradicts, so that listing them
    beside it would say two things: the verdict overruled depth's symptoms (nothing simpler learns
    the data, so they are not what holds the model back), or there is no verdict (the loss is near
    chance on labels with little signal, and the probes found nothing that trains lower). On the
    diagnosis benchmark's deep sigmoid stacks judged either way, ReLU with He initialization in the
    same layers trained no clearly lower on most (benchmarks/diagnosis/README.md)."""
    if verdict is None:
        codes: set[str] = set(DEPTH_FIXES)
    else:
        codes = set(verdict.evidence.get("depth_symptoms_overruled") or ()) & DEPTH_FIXES
    return [x for x in found if x.code in codes]


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
    _, probes = rules.probe_outcome(ev, f)
    if probes:  # the loss was near chance and the probe runs found nothing that trains lower
        out["probes"] = probes
    return out


def diagnose_job(
    job_id: str, provisional: bool = False, spec: JobSpec | None = None, ev: Evidence | None = None
) -> list[Finding]:
    """Diagnose the stored job (``ev``: the job as stored, when the caller has already read it) and
    write its findings, and its verdict unless ``provisional``."""
    if ev is None:
        ev, _ = from_database(job_id, spec)
    result = diagnose(ev)

    def transaction() -> None:
        with session_scope() as session:
            write_diagnoses(session, job_id, result, provisional=provisional)
            verdict = None if provisional else result[0].code
            session.execute(update(Job).where(Job.id == job_id).values(verdict=verdict))

    with_retries(transaction)
    return result
