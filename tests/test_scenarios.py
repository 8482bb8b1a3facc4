"""Every scenario spec gets the verdict and findings it expects, end to end through the service:
HTTP submit → worker trains, takes spectra, diagnoses → verdict and diagnoses read over HTTP.

Scenarios are read from ../shared/scenarios (the team's list) with tests/scenarios as the copy this
repository carries; all are submitted at once so the worker's two processes run them in parallel.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from saddle.client import Client

HERE = Path(__file__).resolve().parent
SOURCES = [HERE.parent.parent / "shared" / "scenarios", HERE / "scenarios"]


def scenario_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in reversed(SOURCES):  # shared/ wins over the local copy
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = path
    return found


SCENARIOS = scenario_files()


@pytest.fixture(scope="module")
def finished(sdk: Client, worker_process) -> dict[str, dict]:
    submitted = {
        name: sdk.submit(yaml.safe_load(path.read_text())["spec"]) for name, path in SCENARIOS.items()
    }
    return {name: sdk.wait(job["id"], poll_seconds=1.0, timeout=1500) for name, job in submitted.items()}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_gets_its_diagnosis(name: str, finished: dict[str, dict], sdk: Client) -> None:
    expect = yaml.safe_load(SCENARIOS[name].read_text())["expect"]
    job = finished[name]
    assert job["status"] == "succeeded", job["error"]
    diagnoses = sdk.diagnoses(job["id"])
    verdicts = [d for d in diagnoses if d["kind"] == "verdict"]
    codes = {d["code"] for d in diagnoses if d["kind"] == "finding"}
    assert len(verdicts) == 1 and verdicts[0]["code"] == job["verdict"]
    if expect.get("verdict"):
        assert job["verdict"] == expect["verdict"], (job["verdict"], codes)
    assert set(expect.get("findings") or []) <= codes, codes
    assert not set(expect.get("absent") or []) & codes, codes
    for d in diagnoses:
        assert d["recommendation"] and d["evidence"] and 0 < d["confidence"] <= 1
        assert d["severity"] in ("info", "warning", "error")
        if d["code"] != "good_fit" and d["severity"] != "info":
            assert d["patch"] or d["code"] in ("diverged", "mismatch"), d


def test_remedy_resubmits_the_fix_and_shows_whether_it_helped(finished: dict[str, dict], sdk: Client) -> None:
    parent = finished["saddle_zero_init"]
    response = sdk.http.post(f"/v1/jobs/{parent['id']}/remedy", json={})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["applied"] == ["underfitting.optimization"]
    assert (
        body["job"]["spec"]["model"]["init"]["weights"] == "default"
        and body["job"]["parent_id"] == parent["id"]
    )
    child = sdk.wait(body["job"]["id"], timeout=300)
    assert child["status"] == "succeeded" and child["verdict"] == "good_fit"
    side_by_side = sdk.http.get(f"/v1/jobs/{parent['id']}/remedies").json()
    assert side_by_side["remedies"][0]["id"] == child["id"]
    assert side_by_side["remedies"][0]["train_loss"] < side_by_side["job"]["train_loss"] / 10
