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
from worker.diagnosis import contradicted_fixes, diagnose, rules, underfit_verdict
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


def deep_sigmoid_stuck(linear_train_loss: float) -> Evidence:
    """``stuck_run`` as eight sigmoid layers of 8 units, flat at chance from its first epoch, whose
    first layer's gradient is 1/1000 of the head's: the rules find vanishing gradients in it."""
    ev = stuck_run(linear_train_loss=linear_train_loss, tuned_train_loss=1.09)
    ev.epoch_series["train/loss"] = np.r_[1.2, np.full(10, 1.09)]
    ev.epoch_series["val/loss"] = np.r_[1.2, np.full(10, 1.10)]
    ev.spec = JobSpec.model_validate(
        {"data": {"dataset": "iris"}, "epochs": 10, "model": {"hidden": [8] * 8, "activation": "sigmoid"}}
    )
    norms = {"layers.0.weight": 1e-4, "layers.4.weight": 1e-2, "head.weight": 0.1}
    ev.summary["layer_sizes"] = dict.fromkeys(norms, 64)
    ev.epoch_series |= {f"grad/{name}": np.full(11, norm) for name, norm in norms.items()}
    return ev


def test_a_verdict_that_overrules_depth_does_not_list_the_vanishing_fix_beside_it() -> None:
    result = diagnose(deep_sigmoid_stuck(linear_train_loss=1.08))
    verdict, codes = result[0], [x.code for x in result[1:]]
    assert verdict.code == "underfitting.model_bias", verdict.code
    assert "vanishing_gradients" in verdict.evidence["depth_symptoms_overruled"]
    # "ReLU with He initialization in these layers" is what the verdict just said will not help:
    # the warning is not listed, and what it measured stays with the verdict.
    assert "vanishing_gradients" not in codes, codes
    assert verdict.evidence["set_aside"]["vanishing_gradients"]["first_over_last_rms"] == 1e-3


def test_a_verdict_that_blames_depth_keeps_the_vanishing_fix() -> None:
    # The linear model trains far lower: the optimizer is blamed, and vanishing gradients is the cause.
    result = diagnose(deep_sigmoid_stuck(linear_train_loss=0.31))
    verdict, codes = result[0], [x.code for x in result[1:]]
    assert verdict.code == "underfitting.optimization", verdict.code
    assert "vanishing_gradients" in codes and "vanishing_gradients" in verdict.evidence["causes"]
    assert "set_aside" not in verdict.evidence


def test_the_vanishing_fix_is_set_aside_where_a_large_loss_comes_to_no_verdict() -> None:
    # No underfitting verdict (labels with little signal, probes found nothing lower: a good fit).
    found = [blaming("vanishing_gradients"), blaming("critical_point.saddle")]
    assert [x.code for x in contradicted_fixes(None, found)] == ["vanishing_gradients"]
    optimization = verdict_of(stuck_run(linear_train_loss=0.31, tuned_train_loss=1.09), found)
    assert contradicted_fixes(optimization, found) == []
