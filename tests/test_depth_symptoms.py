"""A deep stack of sigmoid units stuck at chance shows vanishing gradients and a saddle. Those blame
the optimizer only where something shows that this model, better optimized, could learn the data: a
linear model that trains lower, or the same model with the standard recipe training lower, or
weights initialized to zero (a setup error). With none of them, the verdict is model bias, whether
or not a k-NN sees structure in the data."""

from __future__ import annotations

import numpy as np

from models.findings import Finding
from models.spec import JobSpec
from tests.test_diagnosis_noise import synthetic
from worker.diagnosis import rules, underfit_verdict
from worker.diagnosis.evidence import Evidence

AT_CHANCE = {"chance_accuracy": 0.34, "knn_val_accuracy": 0.35, "knn_cv_accuracy": 0.35}


def stuck_run(linear_train_loss: float, tuned_train_loss: float, **reference: float) -> Evidence:
    """Training and validation losses at chance (ln 3 = 1.10) with accuracy at the majority share,
    and both probe runs trained a few epochs."""
    ev = synthetic(
        train_end=1.09, val_end=1.10, **(AT_CHANCE | {"linear_train_loss": linear_train_loss} | reference)
    )
    ev.epoch_series["train/accuracy"] = np.full(11, 0.35)
    ev.epoch_series["val/accuracy"] = np.full(11, 0.34)
    ev.summary["probes"] = {
        "parent_train_loss": 1.09,
        "runs": {
            "tuned_optimizer": {"train_loss": tuned_train_loss, "val_loss": 1.10, "epochs": 7, "rows": 90},
            "larger_model": {"train_loss": 0.95, "val_loss": 1.0, "epochs": 6, "rows": 90},
        },
    }
    return ev


def blaming(code: str) -> Finding:
    return Finding(
        code=code, severity="warning", confidence=0.9, evidence={}, recommendation="", blames_optimizer=True
    )


def depth_findings() -> list[Finding]:
    return [blaming("vanishing_gradients"), blaming("critical_point.saddle")]


def verdict_of(ev: Evidence, found: list[Finding]) -> Finding:
    under = rules.underfit_evidence(ev, rules.facts(ev))
    assert under is not None
    verdict = underfit_verdict(ev, found, under)
    assert verdict is not None
    return verdict


def test_depth_symptoms_where_nothing_simpler_learns_are_model_bias() -> None:
    verdict = verdict_of(stuck_run(linear_train_loss=1.08, tuned_train_loss=1.09), depth_findings())
    assert verdict.code == "underfitting.model_bias", verdict.code
    assert verdict.evidence["depth_symptoms_overruled"] == ["vanishing_gradients", "critical_point.saddle"]
    assert "nothing simpler learns" in verdict.recommendation
    # The larger model is offered as the larger-model probe trained it, with the standard recipe:
    # a deeper ReLU stack under the job's plain SGD trains no better than the sigmoid one.
    assert verdict.patch["model"]["activation"] == "relu"
    assert verdict.patch["optimizer"]["name"] == "adam"


def test_a_linear_model_that_trains_lower_keeps_the_blame_on_the_optimizer() -> None:
    # Moons through eight sigmoid layers: the linear model reaches 0.31 where the stack sits at chance.
    verdict = verdict_of(stuck_run(linear_train_loss=0.31, tuned_train_loss=1.09), depth_findings())
    assert verdict.code == "underfitting.optimization", verdict.code


def test_other_causes_keep_the_blame_on_the_optimizer() -> None:
    # A rate far too low is not a symptom of depth: the same evidence stays optimization trouble.
    rate = blaming("learning_rate.too_low")
    ev = stuck_run(linear_train_loss=1.08, tuned_train_loss=1.09)
    assert verdict_of(ev, [rate]).code == "underfitting.optimization"
    assert verdict_of(ev, [*depth_findings(), rate]).code == "underfitting.optimization"


def test_a_knn_that_sees_the_data_does_not_keep_the_blame_on_the_optimizer() -> None:
    # A checkerboard through eight sigmoid layers: the k-NN sees the cells (0.9), but neither the
    # linear model nor the same stack with the standard recipe trains lower; the benchmark labels
    # these runs model bias (only a larger model trains clearly lower).
    ev = stuck_run(linear_train_loss=1.08, tuned_train_loss=1.09, knn_cv_accuracy=0.9, knn_val_accuracy=0.9)
    under = rules.underfit_evidence(ev, rules.facts(ev))
    assert under is not None and not under.get("reference_at_chance")
    verdict = verdict_of(ev, depth_findings())
    assert verdict.code == "underfitting.model_bias", verdict.code
    assert verdict.evidence["depth_symptoms_overruled"] == ["vanishing_gradients", "critical_point.saddle"]


def test_zero_initialized_weights_keep_the_blame_on_the_optimizer() -> None:
    # The saddle of all-zero weights is a setup error the default initialization removes, even where
    # a short probe of the standard recipe did not yet train lower.
    ev = stuck_run(linear_train_loss=1.08, tuned_train_loss=1.09)
    ev.spec = JobSpec.model_validate(
        {"data": {"dataset": "iris"}, "epochs": 10, "model": {"init": {"weights": "zeros"}}}
    )
    assert verdict_of(ev, depth_findings()).code == "underfitting.optimization"
