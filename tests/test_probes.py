"""analysis.probes: an underfitting job launches probe runs and its verdict cites them."""

from __future__ import annotations

import time

import pytest
import yaml

from saddle.client import Client
from tests.test_scenarios import SCENARIOS

pytestmark = pytest.mark.usefixtures("worker_process")


def test_probes_confirm_model_bias_of_a_linear_model_on_moons(sdk: Client) -> None:
    spec = yaml.safe_load(SCENARIOS["model_bias_moons"].read_text())["spec"]
    spec["epochs"] = 40
    spec["analysis"] = {"probes": True, "hessian": {"every_epochs": 0, "samples": 256}}
    job = sdk.wait(sdk.submit(spec)["id"], timeout=300)
    assert job["status"] == "succeeded" and job["verdict"].startswith("underfitting")
    deadline = time.monotonic() + 300
    while True:
        verdict = next(d for d in sdk.diagnoses(job["id"]) if d["kind"] == "verdict")
        if "probes" in verdict["evidence"]:
            break
        assert time.monotonic() < deadline, "probes never concluded"
        time.sleep(1)
    probes = {p["what"]: p for p in verdict["evidence"]["probes"]["probes"]}
    assert set(probes) == {"larger_model", "other_optimizer"}
    assert probes["larger_model"]["train_loss"] < 0.7 * verdict["evidence"]["probes"]["parent_train_loss"]
    assert verdict["code"] == "underfitting.model_bias" and sdk.job(job["id"])["verdict"] == verdict["code"]
    children = sdk.jobs(parent=job["id"], kind="probe")["items"]
    assert {c["id"] for c in children} == {p["job"] for p in probes.values()}
