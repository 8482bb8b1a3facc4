"""Fine-tuning: start from another job's checkpoint, freeze layers, refuse incompatible models."""

from __future__ import annotations

import pytest

from saddle.client import Client
from tests.conftest import tiny_spec

pytestmark = pytest.mark.usefixtures("worker_process")


def test_a_child_starts_from_the_parent_and_frozen_layers_do_not_move(sdk: Client) -> None:
    parent = sdk.wait(sdk.submit(tiny_spec(name="ft-parent", epochs=4))["id"], timeout=180)
    assert parent["status"] == "succeeded", parent["error"]
    init = {"job": parent["id"], "checkpoint": "best", "freeze": ["blocks.0"]}
    child = sdk.wait(sdk.submit(tiny_spec(name="ft-child", epochs=2, init_from=init))["id"], timeout=180)
    assert child["status"] == "succeeded", child["error"]
    assert child["parent_id"] == parent["id"]
    assert child["summary"]["init_from"]["frozen"] == ["blocks.0.linear.weight", "blocks.0.linear.bias"]
    # Started from trained weights: the child's loss before its first update is the parent's best.
    child_start = sdk.metrics(child["id"], ["val/loss"])["series"][0]["values"][0]
    assert child_start == pytest.approx(parent["summary"]["best_val_loss"], rel=1e-5)
    grads = {s["name"] for s in sdk.metrics(child["id"])["series"] if s["name"].startswith("grad/")}
    assert "grad/blocks.0.linear.weight" not in grads and "grad/head.weight" in grads


def test_an_incompatible_architecture_is_refused_saying_what_differs(sdk: Client) -> None:
    parent = sdk.wait(sdk.submit(tiny_spec(name="ft-parent-2", epochs=1))["id"], timeout=180)
    init = {"job": parent["id"], "checkpoint": "last"}
    r = sdk.http.post("/v1/jobs", json=tiny_spec(init_from=init, model={"hidden": [16]}))
    assert r.status_code == 422 and "model.hidden: parent [8], this job [16]" in r.json()["detail"]
    r = sdk.http.post("/v1/jobs", json=tiny_spec(init_from=init, data={"dataset": "wine"}))
    assert r.status_code == 422 and "input features: parent 4, this job 13" in r.json()["detail"]
    r = sdk.http.post("/v1/jobs", json=tiny_spec(init_from={"job": "0" * 32}))
    assert r.status_code == 422 and "not found" in r.json()["detail"]
