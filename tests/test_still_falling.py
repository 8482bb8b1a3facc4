"""A training loss the k-NN reference calls small is still underfitting when the run is far from
done: a power law fitted to the second half of its curve predicts that 4x the epochs would train it
clearly lower, and its validation loss is still falling too. The verdict then blames the optimizer
(train longer); a curve that has flattened, or whose validation loss has turned up, stays as it was.
And Adam below its standard rate, still creeping down in every epoch, has a rate too low."""

from __future__ import annotations

import math

import numpy as np

from models.spec import JobSpec
from worker.diagnosis import diagnose, rules
from worker.diagnosis.evidence import Evidence

CHANCE = math.log(3)


def run(train: np.ndarray, val: np.ndarray) -> Evidence:
    """A 3-class run whose training accuracy matches its k-NN reference (so the loss is not large
    by the reference's test), with these per-epoch losses."""
    spec = JobSpec.model_validate({"data": {"dataset": "iris"}, "epochs": len(train) - 1})
    summary = {
        "epochs_run": len(train) - 1,
        "diverged_step": None,
        "data": {"task": "classification", "n_classes": 3, "n_train": 90, "n_val": 30},
        "reference": {
            "chance_loss": CHANCE,
            "knn_cv_accuracy": 0.90,
            "knn_val_accuracy": 0.90,
            "n_train": 90,
            "n_held": 30,
            "linear_val_loss": 0.6,
        },
    }
    accuracy = np.full(len(train), 0.90)
    series = {"train/loss": train, "val/loss": val, "train/accuracy": accuracy, "val/accuracy": accuracy}
    return Evidence(spec, summary, series, {})


def power_law(epochs: int, start: float, exponent: float) -> np.ndarray:
    """Loss at epoch 0 (before training) = ``start``, then start * epoch^-exponent."""
    return np.concatenate([[start], start * np.arange(1, epochs + 1, dtype=float) ** -exponent])


def test_a_loss_still_falling_like_a_power_law_is_underfitting_that_training_longer_fixes() -> None:
    # 40 epochs of 4.0 * epoch^-0.8: 0.21 at the end (19% of chance, under the reference's bar), and
    # 4^-0.8 = 0.33 of that at 160 epochs: lower by 13% of chance.
    train = power_law(40, 4.0, 0.8)
    val = train * 1.1
    ev = run(train, val)
    falling = rules.still_falling(rules.facts(ev))
    assert falling is not None
    assert math.isclose(falling["power_law_exponent"], 0.8, rel_tol=1e-3)
    result = diagnose(ev)
    verdict = result[0]
    assert verdict.code == "underfitting.optimization", verdict.code
    assert verdict.evidence["still_falling"] == falling
    assert "not_converged" in {x.code for x in result[1:]}
    assert verdict.patch == {"epochs": 160}


def test_a_drop_too_small_to_matter_is_left_alone() -> None:
    # The same shape 20x smaller: 0.01 at the end, so 4x the epochs would gain 0.7% of chance.
    train = power_law(40, 0.2, 0.8)
    assert rules.still_falling(rules.facts(run(train, train * 1.1))) is None


def test_a_flattened_curve_or_a_validation_loss_turning_up_is_not_still_falling() -> None:
    flat = power_law(40, 4.0, 0.1)  # 4^-0.1 = 0.87: not clearly lower
    assert rules.still_falling(rules.facts(run(flat, flat * 1.1))) is None
    train = power_law(40, 4.0, 0.8)
    turned = train * 1.1
    turned[-6:] = turned[-7] * np.linspace(1.02, 1.12, 6)  # the validation loss rises at the end
    assert rules.still_falling(rules.facts(run(train, turned))) is None


def test_adam_below_its_standard_rate_creeping_down_from_chance_is_a_rate_too_low() -> None:
    # 4 epochs of Adam at 3e-4 on 3 classes: the loss creeps down 1% an epoch from chance. Too slow
    # for not_converged, but down in every epoch: the rate, not the model, is what holds it.
    train = np.array([1.104, 1.097, 1.089, 1.083, 1.078])
    ev = run(train, train + 0.01)
    ev.spec = JobSpec.model_validate(
        {"data": {"dataset": "iris"}, "epochs": 4, "optimizer": {"name": "adam", "lr": 3e-4}}
    )
    f = rules.facts(ev)
    found = rules.learning_rate_too_low(ev, f, under=True, stuck_elsewhere=False, nc=None)
    assert found is not None and found.patch == {"optimizer": {"lr": 3e-3}}
    # One epoch up in the window: it has levelled off, and nothing says the rate is the cause.
    bounced = np.array([1.104, 1.097, 1.089, 1.091, 1.086])
    ev.epoch_series["train/loss"] = bounced
    assert rules.learning_rate_too_low(ev, rules.facts(ev), True, False, None) is None
