"""Losses at chance: on labels that carry no signal it is the data's noise, not underfitting; on
held-out rows, after training well below chance, it is never a good fit.

The first run, its k-NN reference and its probe runs are the service's own (``Trainer``,
``reference_scores``, ``run_probes``), in this process; only the database is left out."""

from __future__ import annotations

import math

import numpy as np
import torch

from models.spec import JobSpec
from worker.data import load_builtin, prepare
from worker.diagnosis import diagnose, rules
from worker.diagnosis.evidence import Evidence, from_points
from worker.diagnosis.probes import run_probes
from worker.diagnosis.reference import reference_scores
from worker.recorders import MemoryRecorder
from worker.training import Trainer

CPU = torch.device("cpu")


def diagnosed(body: dict) -> list:
    spec = JobSpec.model_validate(body)
    raw = load_builtin(spec.data.dataset, dict(spec.data.params or {}), spec.seed)
    data = prepare(spec.data, raw, spec.seed, None)
    recorder = MemoryRecorder()
    summary = Trainer(spec, data, recorder, CPU).fit()
    summary["reference"] = reference_scores(data, spec.seed)
    ev = from_points(spec, summary, recorder.points, [])
    ev.summary["probes"] = run_probes(spec, data, ev)
    return diagnose(ev)


def spec_on(label_noise: float, optimizer: dict) -> dict:
    return {
        "seed": 0,
        # Three blobs that barely overlap; label_noise replaces that share of labels at random.
        "data": {
            "dataset": "blobs",
            "params": {"n_samples": 600, "cluster_std": 1.0},
            "scaling": "standardize",
            "label_noise": label_noise,
        },
        "model": {"arch": "mlp", "hidden": [16], "activation": "relu"},
        "optimizer": optimizer,
        "batch_size": 32,
        "epochs": 12,
        "analysis": {"hessian": {"enabled": False}},
    }


def test_a_loss_at_chance_on_noisy_labels_is_a_good_fit_when_the_probes_find_nothing_better() -> None:
    # Heavily overlapping blobs with 10% of labels replaced, batch 1 and momentum: the loss stays at
    # chance, the k-NN does no better on the training rows (cross-validated), and neither the
    # standard recipe nor a larger model trains clearly lower. Nothing is left to fix but the
    # oscillation, which stays a finding.
    body = spec_on(0.1, {"name": "sgd", "lr": 0.02, "momentum": 0.9})
    body["data"]["params"] = {"n_samples": 400, "cluster_std": 3.0}
    body |= {"model": {"arch": "mlp", "hidden": [50], "activation": "relu"}, "batch_size": 1, "epochs": 20}
    result = diagnosed(body)
    verdict = result[0]
    assert verdict.code == "good_fit", (verdict.code, verdict.evidence)
    assert verdict.evidence["train_loss"] >= 0.9 * verdict.evidence["chance_loss"]
    # The experiment that decided it is shown with the verdict.
    probes = verdict.evidence["probes"]["probes"]
    assert {p["what"] for p in probes} == {"tuned_optimizer", "larger_model"}
    assert not any(p["clearly_lower"] for p in probes)
    assert "oscillation" in {x.code for x in result[1:]}


def synthetic(train_end: float, val_end: float, **reference: float) -> Evidence:
    """A 3-class run's evidence, written out: training loss from 3.0 down to ``train_end``,
    validation loss from 3.0 down to ``val_end`` (chance is ln 3 = 1.10), training accuracy 0.75
    (no worse than the k-NN's 0.70), validation accuracy 0.35 (far below its 0.70)."""
    spec = JobSpec.model_validate({"data": {"dataset": "iris"}, "epochs": 10})
    epochs = np.arange(11)
    summary = {
        "epochs_run": 10,
        "diverged_step": None,
        "data": {"task": "classification", "n_classes": 3, "n_train": 90, "n_val": 30},
        "reference": {
            "chance_loss": math.log(3),
            "knn_cv_accuracy": 0.70,
            "knn_val_accuracy": 0.70,
            "n_train": 90,
            "n_held": 30,
            "linear_val_loss": 0.5,
            **reference,
        },
    }
    series = {
        "train/loss": 3.0 + (train_end - 3.0) * epochs / 10,
        "val/loss": 3.0 + (val_end - 3.0) * epochs / 10,
        "train/accuracy": np.full(11, 0.75),
        "val/accuracy": np.full(11, 0.35),
    }
    return Evidence(spec, summary, series, {})


def test_a_model_no_better_than_chance_on_held_out_rows_is_never_a_good_fit() -> None:
    verdict = diagnose(synthetic(train_end=0.6, val_end=1.5))[0]
    assert verdict.code.startswith("underfitting."), verdict.code
    assert verdict.evidence["held_out_at_chance"] is True
    # The memorizing regime (a tiny training loss) stays overfitting.
    assert diagnose(synthetic(train_end=0.02, val_end=1.5))[0].code == "overfitting"
    # "Tiny" is judged against chance, not against a held-out loss far above it: saturated units
    # that predict held-out rows at 2.3x chance while the training loss sits at a third of chance
    # have learnt nothing that generalizes; they are not a model that memorized its rows.
    saturated = diagnose(synthetic(train_end=0.35, val_end=2.5))[0]
    assert saturated.code.startswith("underfitting."), saturated.code
    assert saturated.evidence["held_out_at_chance"] is True


def test_a_reference_at_chance_vouches_for_nothing_the_probes_decide() -> None:
    # The k-NN predicts held-out rows no better than the majority class (as in ten dimensions), so
    # a model at chance matching it proves nothing; the probe runs do: here a larger model trains
    # clearly lower where the same model, given as many epochs, does not.
    at_chance = {"chance_accuracy": 0.34, "knn_val_accuracy": 0.35, "knn_cv_accuracy": 0.35}
    ev = synthetic(train_end=1.08, val_end=1.09, **at_chance)
    ev.epoch_series["train/accuracy"] = np.full(11, 0.36)
    ev.epoch_series["val/accuracy"] = np.full(11, 0.35)
    assert rules.underfit_evidence(ev, rules.facts(ev)) is not None  # so the service runs the probes
    ev.summary["probes"] = {
        "parent_train_loss": 1.08,
        "runs": {
            "tuned_optimizer": {"train_loss": 1.05, "val_loss": 1.08, "epochs": 10, "rows": 90},
            "larger_model": {"train_loss": 0.30, "val_loss": 0.40, "epochs": 10, "rows": 90},
        },
    }
    verdict = diagnose(ev)[0]
    assert verdict.code == "underfitting.model_bias", verdict.code
    assert verdict.evidence["reference_at_chance"] is True


def test_a_reference_barely_above_chance_vouches_for_nothing_either() -> None:
    # Concentric shells in 6-D with four noise columns: the k-NN gets 0.41 of 240 held-out rows
    # right against the majority class's 0.34. It beats chance, but by less than the two margins of
    # the comparison, so a model stuck at chance would pass it: the probes decide instead.
    barely = {"chance_accuracy": 0.34, "knn_val_accuracy": 0.41, "knn_cv_accuracy": 0.41, "n_held": 240}
    ev = synthetic(train_end=1.08, val_end=1.09, **barely)
    ev.epoch_series["val/accuracy"] = np.full(11, 0.36)
    assert rules.reference_at_chance(ev)
    under = rules.underfit_evidence(ev, rules.facts(ev))
    assert under is not None and under["reference_at_chance"] is True
    # A reference that clearly beats chance on the same rows still vouches for a model that matches it.
    clear = synthetic(train_end=1.08, val_end=1.09, **(barely | {"knn_val_accuracy": 0.55}))
    assert not rules.reference_at_chance(clear)


def test_probes_stopped_inside_their_first_epoch_prove_nothing() -> None:
    # A loss at chance whose reference vouches for nothing: probes that trained a few epochs and
    # found nothing lower settle it as the data's noise (good_fit); probes that the budget stopped
    # before one epoch (a 4-epoch job on a few hundred rows) settle nothing, and the loss stays large.
    at_chance = {"chance_accuracy": 0.34, "knn_val_accuracy": 0.35, "knn_cv_accuracy": 0.35}

    def verdict(probe_epochs: int) -> str:
        ev = synthetic(train_end=1.08, val_end=1.09, **at_chance)
        ev.epoch_series["train/accuracy"] = np.full(11, 0.36)
        ev.epoch_series["val/accuracy"] = np.full(11, 0.35)
        flat = {"train_loss": 1.07, "val_loss": 1.09, "epochs": probe_epochs, "rows": 90}
        ev.summary["probes"] = {
            "parent_train_loss": 1.08,
            "runs": {"tuned_optimizer": dict(flat), "larger_model": dict(flat)},
        }
        return diagnose(ev)[0].code

    assert verdict(3) == "good_fit"
    assert verdict(0).startswith("underfitting."), verdict(0)
