"""analysis.probes (on by default): an underfitting job runs short probe trainings inside the worker,
and their outcome, stored as evidence, decides model bias against optimization trouble."""

from __future__ import annotations

import pytest
import yaml

from models.jsonsafe import json_safe
from models.patch import merge_patch
from models.spec import JobSpec
from saddle.client import Client
from tests.test_scenarios import SCENARIOS
from worker.diagnosis import diagnose
from worker.diagnosis.evidence import from_database
from worker.diagnosis.probes import UPDATE_OVERHEAD
from worker.diagnosis.recipes import larger_model

pytestmark = pytest.mark.usefixtures("worker_process")


def verdict_of(sdk: Client, job_id: str) -> dict:
    return next(d for d in sdk.diagnoses(job_id) if d["kind"] == "verdict")


def test_probes_run_inside_an_underfitting_job_within_a_quarter_of_its_time(sdk: Client) -> None:
    spec = yaml.safe_load(SCENARIOS["model_bias_moons"].read_text())["spec"]
    spec["epochs"] = 40
    spec["analysis"] = {"hessian": {"every_epochs": 0, "samples": 256}}  # probes: the default
    job = sdk.wait(sdk.submit(spec)["id"], timeout=300)
    assert job["status"] == "succeeded" and job["verdict"] == "underfitting.model_bias"
    verdict = verdict_of(sdk, job["id"])
    probes = {p["what"]: p for p in verdict["evidence"]["probes"]["probes"]}
    assert set(probes) == {"tuned_optimizer", "larger_model"}
    assert verdict["evidence"]["probes"]["parent_train_loss"] == pytest.approx(
        job["progress"]["train_loss"], rel=1e-3
    )
    runs = job["summary"]["probes"]["runs"]
    assert runs["larger_model"]["patch"]["model"]["arch"] == "mlp" and runs["larger_model"]["train_loss"] > 0
    # The worker diagnosed the run it held in memory, probes added; the stored run, read back,
    # gives the same findings with the same evidence.
    reread = diagnose(from_database(job["id"])[0])
    stored = sdk.diagnoses(job["id"])
    assert {f.code: json_safe(f.evidence) for f in reread} == {d["code"]: d["evidence"] for d in stored}
    # Inside the job: no sibling jobs, and each probe's budget an eighth of the job's training
    # compute (parameter-row passes: 3 per row of an update, 1 per row evaluated each epoch, and
    # an update's fixed cost).
    assert sdk.jobs(parent=job["id"])["items"] == []
    s, batch = job["summary"], job["spec"]["batch_size"]
    rows = s["data"]["n_train"] + s["data"]["n_val"] + s["data"]["n_test"]
    job_compute = s["n_parameters"] * (3 * s["steps"] * batch + s["epochs_run"] * rows)
    job_compute += UPDATE_OVERHEAD * s["steps"]
    for run in runs.values():
        assert run["budget_compute"] == pytest.approx(0.125 * job_compute)
        # Checked before every update: at most one update and one evaluation past the budget.
        assert (
            run["budget_compute"]
            <= run["compute"]
            <= run["budget_compute"] + run["parameters"] * (3 * batch + run["rows"]) + UPDATE_OVERHEAD
        )


def test_a_rate_far_too_low_is_optimization_trouble_not_model_bias(sdk: Client) -> None:
    """SGD at 1e-6: the loss sits at chance. The same model with a standard recipe trains clearly
    further (the probe), so the verdict blames the optimizer and names the rate."""
    spec = {
        "name": "lr-1e-6",
        "data": {"dataset": "digits", "scaling": "standardize"},
        "model": {"arch": "mlp", "hidden": [64]},
        "optimizer": {"name": "sgd", "lr": 1e-6},
        "epochs": 20,
        "analysis": {"hessian": {"every_epochs": 0, "samples": 256}},
    }
    job = sdk.wait(sdk.submit(spec)["id"], timeout=300)
    assert job["status"] == "succeeded" and job["verdict"] == "underfitting.optimization"
    verdict = verdict_of(sdk, job["id"])
    assert "learning_rate.too_low" in verdict["evidence"]["causes"]
    assert verdict["patch"]["optimizer"]["lr"] > 1e-5
    assert {d["code"] for d in sdk.diagnoses(job["id"])} >= {"learning_rate.too_low"}


def test_probes_can_be_turned_off(sdk: Client) -> None:
    spec = yaml.safe_load(SCENARIOS["model_bias_moons"].read_text())["spec"]
    spec["epochs"] = 20
    spec["analysis"] = {"probes": False, "hessian": {"every_epochs": 0, "samples": 256}}
    job = sdk.wait(sdk.submit(spec)["id"], timeout=300)
    assert job["status"] == "succeeded" and job["verdict"].startswith("underfitting")
    assert "probes" not in job["summary"] and "probes" not in verdict_of(sdk, job["id"])["evidence"]


def test_the_larger_model_offered_for_an_all_zero_network_starts_from_the_default_initialization() -> None:
    # A larger network started at zero sits on the same symmetric saddle; the probe that showed the
    # gain ran from the default initialization, and so does the remedy.
    zeros = JobSpec.model_validate(
        {"data": {"dataset": "diabetes"}, "model": {"hidden": [32], "init": {"weights": "zeros"}}}
    )
    patched = JobSpec.model_validate(merge_patch(zeros.model_dump(mode="json"), larger_model(zeros)))
    assert patched.model.hidden == [64, 64] and patched.model.init.weights == "default"
    kaiming = JobSpec.model_validate(
        {"data": {"dataset": "diabetes"}, "model": {"hidden": [32], "init": {"weights": "kaiming"}}}
    )
    assert "init" not in larger_model(kaiming)["model"]  # a chosen nonzero initialization is kept
