"""ResNets, precision and model plug-ins through the API and a real worker process.

The worker reports the architectures it can build (its ``saddle.models`` entry points: the example
plug-in in examples/plugin/ is installed by ``make install``); the API validates ``model.arch``
against them without importing a plug-in.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from models.archs import resnet_parameters

pytestmark = pytest.mark.usefixtures("worker_process")
PLUGIN = "example_convnet"
QUICK = {
    "data": {"dataset": "digits", "scaling": "minmax", "train_size": 64},
    "batch_size": 32,
    "epochs": 1,
    "optimizer": {"name": "adam", "lr": 1e-3},
    "analysis": {"hessian": {"enabled": False}, "probes": False},
    "checkpoints": {"every_epochs": 100, "keep_best": False},
}


def offered(client: Any, arch: str, timeout: float = 60.0) -> list[str]:
    """The available archs once a live worker reports ``arch`` (it writes its row when ready)."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/v1/architectures").json()
        if arch in body["available"] or time.monotonic() > deadline:
            return body["available"]
        time.sleep(0.5)


def finished(client: Any, spec: dict[str, Any], timeout: float = 240.0) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id, deadline = response.json()["id"], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def test_an_arch_no_worker_offers_is_a_422_listing_those_that_are(client: Any) -> None:
    available = offered(client, PLUGIN)
    assert available[:6] == ["mlp", "linear", "cnn", "resnet18", "resnet34", "resnet50"]
    assert PLUGIN in available
    response = client.post("/v1/jobs", json={**QUICK, "model": {"arch": "resnet9000"}})
    assert response.status_code == 422
    message = str(response.json())
    assert "model.arch: unknown architecture 'resnet9000'" in message and PLUGIN in message


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"data": {"dataset": "iris"}, "model": {"arch": "resnet18"}}, "model.arch: resnet18 needs images"),
        ({"model": {"arch": "resnet34", "hidden": [32]}}, "model.hidden"),
        ({"model": {"arch": "resnet50", "norm": "layer"}}, "model.norm"),
        ({"resources": {"device": "cpu", "precision": "fp16"}}, "resources.precision"),
        ({"resources": {"precision": "int8"}}, "precision"),
    ],
)
def test_knobs_that_do_not_apply_are_422s_naming_the_field(client: Any, spec: dict, field: str) -> None:
    response = client.post("/v1/jobs", json={**QUICK, **spec})
    assert response.status_code == 422 and field in str(response.json()), response.text


def test_resnet18_in_bf16_trains_through_the_worker(client: Any) -> None:
    spec = {**QUICK, "model": {"arch": "resnet18", "norm": "batch"}, "resources": {"precision": "bf16"}}
    job = finished(client, spec)
    assert job["status"] == "succeeded", job["error"]
    assert job["summary"]["n_parameters"] == resnet_parameters("resnet18", 1, 10, norm=True, small=True)
    names = {s["name"] for s in client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]}
    assert {"units/layer1/dead_fraction", "grad/layer4.1.conv2.weight", "grad/fc.weight"} <= names


def test_a_plugin_arch_is_submitted_by_name_and_trained_by_the_worker(client: Any) -> None:
    assert PLUGIN in offered(client, PLUGIN)
    job = finished(client, {**QUICK, "model": {"arch": PLUGIN, "channels": [4, 8]}})
    assert job["status"] == "succeeded", job["error"]
    # 1->4 and 4->8 3x3 convs with biases, then 8 -> 10 classes.
    assert job["summary"]["n_parameters"] == (9 * 1 + 1) * 4 + (9 * 4 + 1) * 8 + (8 + 1) * 10
