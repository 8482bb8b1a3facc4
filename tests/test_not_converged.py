"""``not_converged`` on a run whose training loss is not large: judged on the validation loss, which
must still fall in every epoch at the end (a loss that bounces has found its level)."""

from __future__ import annotations

import math

import numpy as np

from models.findings import Finding
from models.spec import JobSpec
from worker.diagnosis import rules
from worker.diagnosis.evidence import Evidence


def run_with_val(val: list[float]) -> Evidence:
    """A 3-class run of len(val) - 1 epochs with a small training loss and this validation loss."""
    spec = JobSpec.model_validate({"data": {"dataset": "iris"}, "epochs": len(val) - 1})
    summary = {
        "epochs_run": len(val) - 1,
        "diverged_step": None,
        "data": {"task": "classification", "n_classes": 3},
        "reference": {"chance_loss": math.log(3)},
    }
    train = np.linspace(1.1, 0.05, len(val))
    return Evidence(spec, summary, {"train/loss": train, "val/loss": np.array(val)}, {})


def finding(val: list[float]) -> Finding | None:
    ev = run_with_val(val)
    return rules.not_converged(ev, rules.facts(ev), underfit=False)


def test_a_validation_loss_falling_in_every_epoch_at_the_end_is_not_converged() -> None:
    # 20 epochs; the last fifth (4 epochs) falls 2% an epoch: 7.8% in the window, every epoch down.
    val = [1.0 - 0.03 * i for i in range(16)] + [0.55 * 0.98**k for k in range(1, 6)]
    found = finding(val)
    assert found is not None and found.severity == "info"
    assert found.evidence["fraction_of_epochs_falling"] == 1.0
    assert found.patch == {"epochs": 80}


def test_a_validation_loss_that_bounces_at_the_end_has_found_its_level() -> None:
    # The same window with a larger drop overall (12%) but one epoch up: not a steady descent.
    val = [1.0 - 0.03 * i for i in range(16)] + [0.55, 0.50, 0.52, 0.49, 0.484]
    assert finding(val) is None


def test_a_small_drop_is_not_enough_however_steady() -> None:
    val = [1.0 - 0.03 * i for i in range(16)] + [0.55 * 0.995**k for k in range(1, 6)]
    assert finding(val) is None
