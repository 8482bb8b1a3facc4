"""A linear model is judged against a nonlinear reference (gradient-boosted trees on the same
rows): where the data hold structure a linear model cannot fit, it is model bias, even when a k-NN
blurred by irrelevant columns does no better than the linear model. A network on a regression whose
loss stays material is compared with the trees too: that they beat it makes its loss large, and the
probes and findings say why (the trees alone do not make it too small)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_friedman1

from models.spec import JobSpec
from saddle.client import Client
from worker.data import RawData, prepare
from worker.diagnosis import diagnose, rules
from worker.diagnosis.evidence import Evidence
from worker.diagnosis.probes import wanted
from worker.diagnosis.reference import reference_scores, regression_trees


def friedman_rows() -> tuple[JobSpec, object]:
    # Friedman's first regression: 5 informative columns, 5 irrelevant ones.
    X, y = make_friedman1(n_samples=800, n_features=10, noise=1.0, random_state=0)
    spec = JobSpec.model_validate({"data": {"dataset": "diabetes"}, "model": {"arch": "linear"}})
    raw = RawData(X.astype(np.float32), y.astype(np.float32), "regression", 0)
    return spec, prepare(spec.data, raw, 0)


def test_the_trees_are_fitted_for_linear_models_and_for_material_regression_losses() -> None:
    spec, data = friedman_rows()
    assert spec.model.computes_linear_function
    assert "tree_val_loss" not in reference_scores(data, 0)
    ref = reference_scores(data, 0, linear_model=True)
    assert ref["tree_val_loss"] < 0.7 * ref["linear_val_loss"], ref
    chance = ref["chance_loss"]
    # Any model, once its final training loss is known: only a loss of 10% of chance or more.
    assert "tree_val_loss" in reference_scores(data, 0, train_loss=0.2 * chance)
    assert "tree_val_loss" not in reference_scores(data, 0, train_loss=0.05 * chance)
    assert "tree_val_loss" not in reference_scores(data, 0, train_loss=float("nan"))
    assert regression_trees(data, 0, ref, 0.5 * chance) == {}  # already there: not fitted again


def test_a_classification_network_gets_no_trees() -> None:
    X, y = make_classification(n_samples=400, n_features=6, random_state=0)
    spec = JobSpec.model_validate({"data": {"dataset": "iris"}, "model": {"hidden": [8]}})
    data = prepare(spec.data, RawData(X.astype(np.float32), y, "classification", 2), 0)
    assert "tree_val_loss" not in reference_scores(data, 0, train_loss=10.0)


def linear_run(tree_val_loss: float, arch: str = "linear") -> Evidence:
    """A regression run at the linear optimum (train 0.28, best validation 0.20 of chance 1.0),
    whose k-NN reference is no better than it (as on Friedman's data, with 5 irrelevant columns)."""
    model = {"arch": arch} if arch == "linear" else {"arch": "mlp", "hidden": [2], "activation": "relu"}
    spec = JobSpec.model_validate({"data": {"dataset": "diabetes"}, "model": model, "epochs": 10})
    summary = {
        "epochs_run": 10,
        "diverged_step": None,
        "data": {"task": "regression", "n_train": 600, "n_val": 200},
        "reference": {
            "chance_loss": 1.0,
            "knn_cv_loss": 0.25,
            "knn_val_loss": 0.19,
            "linear_train_loss": 0.28,
            "linear_val_loss": 0.20,
            "tree_val_loss": tree_val_loss,
        },
    }
    epochs = np.arange(11)
    series = {"train/loss": 0.28 + 0.7 * np.exp(-epochs), "val/loss": 0.20 + 0.7 * np.exp(-epochs)}
    return Evidence(spec, summary, series, {})


def test_a_linear_model_that_trees_clearly_beat_is_model_bias() -> None:
    verdict = diagnose(linear_run(tree_val_loss=0.05))[0]
    assert verdict.code == "underfitting.model_bias", verdict.code
    assert verdict.evidence["nonlinear_reference"]["val_loss"] == 0.05
    assert verdict.patch  # a larger, nonlinear model to resubmit


def test_trees_no_clearly_better_leave_a_linear_model_alone() -> None:
    # 0.16 against the model's 0.20: lower, but not by 30% (nor by 10% of chance).
    ev = linear_run(tree_val_loss=0.16)
    assert rules.nonlinear_reference_clearly_lower(ev, rules.facts(ev)) is None
    assert diagnose(ev)[0].code == "good_fit"


def test_a_regression_network_the_trees_clearly_beat_has_a_large_loss() -> None:
    # The k-NN reference calls the network's 0.28 fine (its cross-validated loss is 0.25), the curve
    # has flattened: only the trees (0.05 against a best of 0.20 on validation rows) show the loss
    # is large; the probes run and the verdict is underfitting, with the trees as its evidence.
    ev = linear_run(tree_val_loss=0.05, arch="mlp")
    assert not ev.spec.model.computes_linear_function
    f = rules.facts(ev)
    assert rules.nonlinear_reference_clearly_lower(ev, f)["val_loss"] == 0.05
    assert "nonlinear_reference" in rules.underfit_evidence(ev, f)
    assert wanted(ev)
    verdict = diagnose(ev)[0]
    assert verdict.code.startswith("underfitting."), verdict.code
    assert verdict.evidence["nonlinear_reference"]["val_loss"] == 0.05
    # Trees not clearly lower (0.16 against 0.20): the network is left alone.
    assert diagnose(linear_run(tree_val_loss=0.16, arch="mlp"))[0].code == "good_fit"


def test_a_classification_network_is_not_held_to_the_trees() -> None:
    ev = linear_run(tree_val_loss=0.05, arch="mlp")
    ev.summary["data"] = {"task": "classification", "n_classes": 2, "n_train": 600, "n_val": 200}
    assert rules.nonlinear_reference_clearly_lower(ev, rules.facts(ev)) is None


def test_short_probes_that_find_nothing_lower_do_not_overrule_the_trees() -> None:
    # Both probes ran (the same model with the standard recipe, and a larger network) inside their
    # budget and neither trained clearly lower than 0.28: a larger network given a quarter of the
    # job's compute has not shown what it reaches, while the trees were fitted to the end.
    ev = linear_run(tree_val_loss=0.05)
    ev.summary["reference"]["knn_cv_loss"] = 0.3  # the k-NN fits the training rows no better either
    probe = {"train_loss": 0.27, "val_loss": 0.2, "epochs": 2, "rows": 600}
    ev.summary["probes"] = {
        "parent_train_loss": 0.28,
        "runs": {"tuned_optimizer": probe, "larger_model": probe},
    }
    assert rules.probe_outcome(ev, rules.facts(ev))[0] == "neither"
    verdict = diagnose(ev)[0]
    assert verdict.code == "underfitting.model_bias", verdict.code
    assert verdict.evidence["nonlinear_reference"]["val_loss"] == 0.05


def with_probes(ev: Evidence, larger_train: float, larger_val: float = 0.15) -> Evidence:
    """The probes' results on ``linear_run``'s job (training loss 0.28, best validation 0.20): the
    same model with the standard recipe ends where the job did; the larger network as given."""
    ev.summary["probes"] = {
        "parent_train_loss": 0.28,
        "runs": {
            "tuned_optimizer": {"train_loss": 0.28, "val_loss": 0.2, "epochs": 2, "rows": 600},
            "larger_model": {"train_loss": larger_train, "val_loss": larger_val, "epochs": 3, "rows": 600},
        },
    }
    return ev


def test_a_linear_regression_the_references_call_fine_is_still_probed() -> None:
    # 28% of the target's variance unexplained, no reading calls it large (the trees only match it):
    # the larger-model probe is what can tell.
    ev = linear_run(tree_val_loss=0.16)
    f = rules.facts(ev)
    assert rules.underfit_evidence(ev, f) is None
    assert rules.linear_regression_unvouched(ev, f)
    assert wanted(ev)


def test_only_a_larger_network_fitting_clearly_more_makes_a_linear_regression_model_bias() -> None:
    verdict = diagnose(with_probes(linear_run(tree_val_loss=0.16), larger_train=0.1))[0]
    assert verdict.code == "underfitting.model_bias", verdict.code
    assert [p["what"] for p in verdict.evidence["probes"]["probes"] if p["clearly_lower"]] == ["larger_model"]
    assert verdict.patch  # the larger network to resubmit
    # Lower, but by less than 10% of chance: a linear target fitted as well as it can be.
    assert diagnose(with_probes(linear_run(tree_val_loss=0.16), larger_train=0.2))[0].code == "good_fit"
    # Clearly lower on the training rows, but worse on validation rows than the job's best: memorizing.
    memorizing = with_probes(linear_run(tree_val_loss=0.16), larger_train=0.1, larger_val=0.3)
    assert diagnose(memorizing)[0].code == "good_fit"


def test_a_linear_classifier_or_a_small_loss_is_not_probed_for_this() -> None:
    run = linear_run(tree_val_loss=0.16)
    small = Evidence(
        run.spec,
        run.summary,
        {"train/loss": 0.05 + 0.9 * np.exp(-np.arange(11)), "val/loss": 0.06 + 0.9 * np.exp(-np.arange(11))},
        {},
    )
    assert not rules.linear_regression_unvouched(small, rules.facts(small))  # 5% of chance: not material
    classifier = linear_run(tree_val_loss=0.16)
    classifier.summary["data"] = {"task": "classification", "n_classes": 2, "n_train": 600, "n_val": 200}
    assert classifier.classification
    assert not rules.linear_regression_unvouched(classifier, rules.facts(classifier))


@pytest.mark.usefixtures("worker_process")
def test_the_worker_fits_the_trees_after_training_a_regression_network_that_leaves_a_material_loss(
    sdk: Client,
) -> None:
    # Diabetes: a small network leaves about half of the target's variance, so once training has
    # ended (the loss is known only then) the worker fits the trees and stores their loss with the
    # reference the diagnosis reads.
    spec = {
        "data": {"dataset": "diabetes"},
        "model": {"arch": "mlp", "hidden": [16]},
        "epochs": 10,
        "analysis": {"hessian": {"enabled": False}},
    }
    job = sdk.wait(sdk.submit(spec)["id"], timeout=300)
    assert job["status"] == "succeeded", job.get("error")
    reference = job["summary"]["reference"]
    assert job["progress"]["train_loss"] >= 0.1 * reference["chance_loss"]
    assert reference["tree_val_loss"] > 0
