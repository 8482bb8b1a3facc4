"""A separate test set from another distribution: the verdict `mismatch` rests on the test loss
against the best validation loss (> 1.5x, and above it by at least 5% of chance). Accuracy is shown
as evidence but not required: on overlapping stretched blobs a rescaled test set costs the model
2-3x its loss and only 4-8 points of accuracy, and the counterfactual label (the same model scored
on an in-distribution test split) calls those runs mismatch."""

from __future__ import annotations

import numpy as np

from tests.test_diagnosis_noise import synthetic
from worker.diagnosis import diagnose, rules
from worker.diagnosis.evidence import Evidence


def run_with_test_set(*, val_end: float, test_loss: float, test_accuracy: float) -> Evidence:
    """A 3-class run that fits well and has converged (training loss settled at 0.2, validation
    loss at ``val_end``, validation accuracy 0.91), scored at the end on a separate test set."""
    ev = synthetic(train_end=0.2, val_end=val_end)
    epochs = np.arange(11)
    ev.epoch_series |= {
        "train/loss": 0.2 + 1.6 * np.exp(-2.0 * epochs),
        "val/loss": val_end + (1.8 - val_end) * np.exp(-2.0 * epochs),
        "train/accuracy": np.full(11, 0.93),
        "val/accuracy": np.full(11, 0.91),
        "test/loss": np.full(11, test_loss),
        "test/accuracy": np.full(11, test_accuracy),
    }
    ev.test_is_separate = True
    return ev


def test_a_test_loss_three_times_validation_is_mismatch_even_with_accuracy_close() -> None:
    ev = run_with_test_set(val_end=0.25, test_loss=0.75, test_accuracy=0.85)  # 6 points below
    found = rules.mismatch(ev, rules.facts(ev))
    assert found is not None
    assert found.evidence["ratio"] == 3.0
    assert found.evidence["test_accuracy"] == 0.85 and found.evidence["val_accuracy"] == 0.91
    assert diagnose(ev)[0].code == "mismatch"


def test_a_ratio_between_tiny_losses_is_no_mismatch() -> None:
    # 0.004 against 0.002 is twice the loss, but 0.2% of chance: no evidence of another distribution.
    ev = run_with_test_set(val_end=0.002, test_loss=0.004, test_accuracy=0.91)
    assert rules.mismatch(ev, rules.facts(ev)) is None


def test_a_test_set_like_validation_is_no_mismatch() -> None:
    ev = run_with_test_set(val_end=0.25, test_loss=0.3, test_accuracy=0.9)
    assert rules.mismatch(ev, rules.facts(ev)) is None
    assert diagnose(ev)[0].code != "mismatch"
