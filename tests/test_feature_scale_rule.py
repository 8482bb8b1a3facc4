"""Unscaled features: `ill_conditioned_features` is raised only where something shows the scaling
could matter, and a fix for inputs that saturate units carries the rate that scaled features need.

On the diagnosis benchmark, 43 unscaled runs on data their small tanh network could not learn in its
epochs however it was set up (spirals, shells, a checkerboard) were flagged ill-conditioned although
standardizing, at any rate, trained them no clearly lower; for 33 of them the probe of the same model
on standardized features with the standard recipe showed it (0.77-0.97x of the run's loss), where on
every run that scaling did help it trained to at most 0.66x."""

from __future__ import annotations

import numpy as np

from models.spec import JobSpec
from tests.test_diagnosis_noise import synthetic
from worker.diagnosis import diagnose, rules
from worker.diagnosis.evidence import Evidence


def unscaled_run(*, probe_train_loss: float | None, saturated: float = 0.0) -> Evidence:
    """A 3-class run on raw features whose scales span 10⁵, under plain SGD at 1e-5, stuck near
    chance (ln 3 = 1.10); the probe of the same model with the standard recipe reached
    ``probe_train_loss`` (None: no probe ran)."""
    ev = synthetic(train_end=1.08, val_end=1.09)
    ev.spec = JobSpec.model_validate(
        {
            "data": {"dataset": "iris", "scaling": "none"},
            "model": {"hidden": [32], "activation": "tanh"},
            "optimizer": {"name": "sgd", "lr": 1e-5},
            "epochs": 10,
        }
    )
    ev.summary["data"]["feature_scale"] = {"ratio": 1e5, "min_std": 0.01, "max_std": 1000.0}
    ev.epoch_series["train/accuracy"] = np.full(11, 0.40)
    if saturated:
        ev.epoch_series["units/hidden.0/saturated_fraction"] = np.full(11, saturated)
    if probe_train_loss is not None:
        probe = {"train_loss": probe_train_loss, "val_loss": probe_train_loss, "epochs": 3, "rows": 90}
        ev.summary["probes"] = {"parent_train_loss": 1.08, "runs": {"tuned_optimizer": probe}}
    return ev


def codes(ev: Evidence) -> set[str]:
    return {x.code for x in diagnose(ev)[1:]}


def test_scaling_is_blamed_when_the_standardized_probe_trains_clearly_lower_or_none_ran() -> None:
    assert "ill_conditioned_features" in codes(unscaled_run(probe_train_loss=0.30))
    assert "ill_conditioned_features" in codes(unscaled_run(probe_train_loss=None))


def test_scaling_is_not_blamed_when_the_standardized_probe_trains_no_lower() -> None:
    ev = unscaled_run(probe_train_loss=1.00)  # 0.93x the run's loss: not clearly lower
    assert rules.recipe_found_nothing(ev, rules.facts(ev))
    assert "ill_conditioned_features" not in codes(ev)


def test_units_saturated_by_unscaled_inputs_are_fixed_first_with_a_rate_for_scaled_features() -> None:
    # Without ill-conditioning the first cause is the saturation the raw inputs cause: standardize,
    # and raise a rate that only survived unscaled inputs to the optimizer's standard one.
    verdict, *found = diagnose(unscaled_run(probe_train_loss=1.00, saturated=0.9))
    assert verdict.code == "underfitting.optimization"
    assert verdict.evidence["causes"][0] == "saturated_units"
    assert verdict.patch == {"data": {"scaling": "standardize"}, "optimizer": {"lr": 0.01}}
    saturated = next(x for x in found if x.code == "saturated_units")
    assert "use a rate of 0.01" in saturated.recommendation
