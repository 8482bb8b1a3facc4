"""A rate too high for rows visited in sorted order: each update fits the stretch of rows just seen,
so the minibatches' loss during an epoch stays low while the loss over every row after it is high.

On the diagnosis benchmark, 48 label-sorted regressions trained at least 30% lower at a rate 10-1000x
lower (the label of `learning_rate.too_high`), and the rule saw one of them: their curvature is far
from the stable limit. Every one of them that the service finds underfit showed the loss over all
rows at 2.1-6.0x the minibatches' own; shuffled, the two agree."""

from __future__ import annotations

from tests.test_contained_model import run
from worker.diagnosis import diagnose
from worker.diagnosis.evidence import Evidence


def with_minibatch_loss(ev: Evidence, times_lower: float) -> Evidence:
    """The minibatches' own loss during each epoch: the full-pass training loss / ``times_lower``."""
    ev.epoch_series["train/data_loss"] = ev.series("train/loss")[1:] / times_lower
    return ev


def too_high(ev: Evidence):  # noqa: ANN201
    verdict, *found = diagnose(ev)
    return verdict, next((x for x in found if x.code == "learning_rate.too_high"), None)


def test_sorted_rows_whose_minibatches_fit_far_better_than_all_rows_get_a_lower_rate() -> None:
    verdict, finding = too_high(with_minibatch_loss(run(0.5, [32], shuffle=False), 3.0))
    assert finding is not None and finding.severity == "warning"
    assert finding.evidence["all_rows_loss_over_minibatch_loss"] == 3.0
    assert finding.patch == {"optimizer": {"lr": 0.001}}  # a tenth of the default SGD rate 0.01
    assert "sorted order" in finding.recommendation and "Shuffle" in finding.recommendation
    # The order is the root cause: the fix offered first is still to shuffle.
    assert verdict.code == "underfitting.optimization" and verdict.patch == {"data": {"shuffle": True}}


def test_sorted_rows_whose_minibatches_fit_no_better_than_all_rows_keep_their_rate() -> None:
    _, finding = too_high(with_minibatch_loss(run(0.5, [32], shuffle=False), 1.3))
    assert finding is None


def test_shuffled_rows_are_not_read_for_chasing() -> None:
    _, finding = too_high(with_minibatch_loss(run(0.5, [32], shuffle=True), 3.0))
    assert finding is None


def test_a_sorted_run_that_fits_is_not_told_to_lower_its_rate() -> None:
    ev = with_minibatch_loss(run(0.12, [32], shuffle=False), 3.0)  # below the linear model's 0.15
    verdict, finding = too_high(ev)
    assert verdict.code == "good_fit" and finding is None
