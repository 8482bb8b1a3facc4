"""agreement.py predicts each labelled run from the other seeds of its configuration: the majority
verdict, and the findings more than half of them carry."""

from __future__ import annotations

from benchmarks.diagnosis.agreement import leave_one_seed_out


def label(verdict: str, *findings: str) -> dict:
    return {"verdict": verdict, "findings": list(findings)}


def test_each_run_is_predicted_from_the_other_seeds_of_its_configuration() -> None:
    labels = {
        # Three seeds agree; the fourth flips its verdict and loses the finding.
        "lr_too_low/iris/0": label("underfitting.optimization", "learning_rate.too_low"),
        "lr_too_low/iris/1": label("underfitting.optimization", "learning_rate.too_low"),
        "lr_too_low/iris/2": label("underfitting.optimization", "learning_rate.too_low"),
        "lr_too_low/iris/3": label("good_fit"),
        # Another dataset of the same family is another configuration: it never votes above.
        "lr_too_low/wine/0": label("good_fit"),
        "lr_too_low/wine/1": label("good_fit"),
    }
    result = leave_one_seed_out(labels)
    assert (result["right"], result["total"]) == (5, 6)
    # Seeds 0-2 each see the finding on two of their three others (a majority); seed 3 sees it on all
    # three others but has none.
    assert dict(result["findings"]["learning_rate.too_low"]) == {"tp": 3, "fp": 1}


def test_a_configuration_of_one_seed_predicts_nothing() -> None:
    result = leave_one_seed_out({"linear/moons/0": label("underfitting.model_bias")})
    assert (result["right"], result["total"]) == (0, 0) and not result["findings"]
