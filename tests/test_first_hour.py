"""What a new user tripped over in the first hour (issue 17), each checked the way they met it: through
the CLI as a subprocess, the Python client and the HTTP API, against the real server and worker.

Finished jobs with a given diagnosis are written directly as rows (never enqueued, so no worker
touches them): the point is what the API and the CLI offer for such a job, not how training gets
there; the scenario and dashboard tests cover real diagnoses end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from api.auth import create_token, hash_token
from models.db import session_scope
from models.spec import JobSpec
from models.tables import ApiToken, Diagnosis, Job, Project
from saddle.client import Client
from tests.conftest import RUN_ID, tiny_spec
from tests.test_cli import saddle, write  # noqa: F401  (the CLI-as-a-subprocess fixture)

pytestmark = pytest.mark.usefixtures("worker_process")

LR_FIX = {"optimizer": {"lr": 0.001}}


def finished_job(
    verdict: str | None, diagnoses: list[dict[str, Any]], status: str = "succeeded", **job: Any
) -> str:
    """A finished job row of the test project with these diagnosis rows; its spec is stored with
    every default filled in, as the API stores a submitted one."""
    spec = JobSpec.model_validate(tiny_spec(name=f"first-hour-{verdict or status}")).model_dump(mode="json")
    with session_scope() as session:
        project = session.scalars(select(Project).where(Project.name == f"test-{RUN_ID}")).one()
        row = Job(project_id=project.id, name=spec["name"], spec=spec, status=status, verdict=verdict, **job)
        session.add(row)
        session.flush()
        for d in diagnoses:
            session.add(Diagnosis(job_id=row.id, confidence=0.9, **d))
        return row.id


def verdict_row(code: str, patch: dict | None = None) -> dict[str, Any]:
    return {"code": code, "kind": "verdict", "severity": "info", "patch": patch or {}}


def finding_row(code: str, patch: dict, severity: str = "warning") -> dict[str, Any]:
    return {"code": code, "kind": "finding", "severity": severity, "patch": patch}


# ----- item 4: offer only the remedy the API will accept -------------------------------------------
def test_a_good_fit_with_a_warning_offers_only_the_finding_fix(sdk: Client, saddle) -> None:  # noqa: ANN001, F811
    job_id = finished_job("good_fit", [verdict_row("good_fit"), finding_row("oscillation", LR_FIX)])

    offer = sdk.job(job_id)["remedy"]
    assert offer == {"available": False, "applies": [], "findings": ["oscillation"]}
    # What the offer says matches what the API does.
    assert sdk.http.post(f"/v1/jobs/{job_id}/remedy").status_code == 422
    made = sdk.remedy(job_id, ["oscillation"])
    assert made["applied"] == ["oscillation"]
    sdk.cancel(made["job"]["id"])

    diagnosed = saddle("diagnose", job_id)
    assert diagnosed.returncode == 0, diagnosed.stderr
    assert "apply the fix" not in diagnosed.stdout  # the bare `saddle remedy ID` would be refused
    assert f"saddle remedy {job_id} --finding CODE   (oscillation)" in diagnosed.stdout
    assert "verdict good_fit comes with no fix" in diagnosed.stdout


def test_a_verdict_with_a_fix_offers_the_remedy_in_diagnose_and_show(sdk: Client, saddle) -> None:  # noqa: ANN001, F811
    job_id = finished_job(
        "diverged",
        [verdict_row("diverged"), finding_row("learning_rate.too_high", LR_FIX, severity="error")],
        status="failed",
        error="the loss became NaN at update 12",
    )
    offer = sdk.job(job_id)["remedy"]
    assert offer == {
        "available": True,
        "applies": ["learning_rate.too_high"],
        "findings": ["learning_rate.too_high"],
    }
    for command in ("diagnose", "show"):
        out = saddle(command, job_id)
        assert f"apply the fix: saddle remedy {job_id}   (applies learning_rate.too_high)" in out.stdout
    made = sdk.remedy(job_id)  # the offer was honest
    assert made["applied"] == ["learning_rate.too_high"]
    sdk.cancel(made["job"]["id"])


def test_no_remedy_is_offered_for_a_fix_the_api_would_refuse(sdk: Client) -> None:
    # A patch that makes the spec invalid (batch_size 0) is refused at POST; so it is never offered.
    job_id = finished_job("overfitting", [verdict_row("overfitting", {"batch_size": 0})])
    assert sdk.job(job_id)["remedy"] == {"available": False, "applies": [], "findings": []}
    assert sdk.http.post(f"/v1/jobs/{job_id}/remedy").status_code == 422


def test_a_running_job_offers_no_remedy(sdk: Client) -> None:
    job_id = finished_job("overfitting", [verdict_row("overfitting", LR_FIX)], status="running")
    try:
        assert sdk.job(job_id)["remedy"]["available"] is False
        assert sdk.http.post(f"/v1/jobs/{job_id}/remedy").status_code == 409
    finally:  # a row left running would hold the project's running-jobs quota for the session
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))


# ----- item 5: a CSV's label column is found by name -----------------------------------------------
def test_csv_upload_finds_its_label_column_by_name(saddle, sdk: Client, tmp_path: Path) -> None:  # noqa: ANN001, F811
    rows = ["a,b,label", *[f"{i},{i * 3 % 7},{i % 2}" for i in range(30)]]
    path = tmp_path / "labelled.csv"
    path.write_text("\n".join(rows) + "\n")
    up = saddle("dataset", "upload", str(path), "--name", f"auto-label-{RUN_ID}")
    assert up.returncode == 0, up.stderr
    assert "label column 'label' (found by name; --label picks another)" in up.stderr
    assert sdk.dataset(up.stdout.strip())["label"] == "label"

    target = tmp_path / "target.csv"
    target.write_text("\n".join(["x,target", *[f"{i},{i % 3}" for i in range(30)]]) + "\n")
    row = sdk.upload_dataset(target, f"auto-target-{RUN_ID}")
    assert (row["label"], row["n_features"], row["task"]) == ("target", 1, "classification")

    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("\n".join(["x,z", *[f"{i},{i % 3}" for i in range(30)]]) + "\n")
    refused = saddle("dataset", "upload", str(unlabelled), "--name", "nope")
    assert refused.returncode == 3 and "no column named label, target, y" in refused.stderr


# ----- item 6: an unknown filter value is an error naming the valid ones ---------------------------
def test_ls_refuses_an_unknown_verdict_or_finding_naming_the_valid_ones(saddle) -> None:  # noqa: ANN001, F811
    typo = saddle("ls", "--verdict", "overfit")
    assert typo.returncode == 3 and typo.stdout == ""  # the API's 422, printed
    assert "overfitting" in typo.stderr and "good_fit" in typo.stderr
    finding = saddle("ls", "--finding", "saddle")
    assert finding.returncode == 3 and "critical_point.saddle" in finding.stderr
    assert saddle("ls", "--finding", "oscillation", "--limit", "1").returncode == 0


# ----- item 7: a mistyped token is not called revoked ----------------------------------------------
def test_a_wrong_token_is_not_called_revoked_and_a_revoked_one_is(saddle, api_server: str) -> None:  # noqa: ANN001, F811
    mistyped = saddle("ls", "--token", "sdl_mistyped")
    assert mistyped.returncode == 3
    assert "not a valid token for this server (HTTP 401)" in mistyped.stderr
    assert "revoked" not in mistyped.stderr
    assert f"the token came from --token; the API is {api_server}" in mistyped.stderr

    with session_scope() as session:
        _, token = create_token(session, f"revoked-{RUN_ID}")
        session.execute(update(ApiToken).where(ApiToken.token_hash == hash_token(token)).values(revoked=True))
    revoked = saddle("ls", env={"SADDLE_TOKEN": token})
    assert revoked.returncode == 3 and "this token was revoked" in revoked.stderr
    assert "the token came from SADDLE_TOKEN" in revoked.stderr


# ----- item 9: show the fields that apply, and a failed job's error first --------------------------
def test_show_lists_the_fields_that_apply_and_a_failure_first(saddle) -> None:  # noqa: ANN001, F811
    job_id = finished_job("good_fit", [verdict_row("good_fit")])
    shown = saddle("show", job_id)
    assert shown.returncode == 0, shown.stderr
    model = next(line for line in shown.stdout.splitlines() if line.strip().startswith("model"))
    assert '"hidden":[8]' in model and "channels" not in model  # an MLP has no conv channels
    optimizer = next(line for line in shown.stdout.splitlines() if line.strip().startswith("optimizer"))
    assert '"name":"adam"' in optimizer and "momentum" not in optimizer and "betas" in optimizer

    failed_id = finished_job(
        None,
        [],
        status="failed",
        error="preparing the data failed: model.arch: cnn needs image-shaped inputs",
    )
    failed = saddle("show", failed_id).stdout.splitlines()
    assert failed[0] == f"job {failed_id}"
    assert failed[1].split() == [
        "error",
        "preparing",
        "the",
        "data",
        "failed:",
        "model.arch:",
        "cnn",
        "needs",
        "image-shaped",
        "inputs",
    ]
    assert sum("image-shaped" in line for line in failed) == 1  # said once, first


# ----- item 10: one spelling of `name`; sweep create says what to run next --------------------------
def test_client_metrics_takes_name_like_the_api_and_the_cli(sdk: Client) -> None:
    job = sdk.wait(sdk.submit(tiny_spec(name=f"first-hour-metrics-{RUN_ID}", epochs=2))["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    one = sdk.metrics(job["id"], name="val/loss")["series"]
    assert [s["name"] for s in one] == ["val/loss"] and len(one[0]["values"]) == 3
    two = sdk.metrics(job["id"], name=["val/loss", "train/loss"])["series"]
    assert sorted(s["name"] for s in two) == ["train/loss", "val/loss"]
    assert sdk.metrics(job["id"], names=["val/loss"])["series"][0]["name"] == "val/loss"  # the old spelling


def test_sweep_create_says_what_to_run_next_and_status_watch_follows_it(saddle, tmp_path: Path) -> None:  # noqa: ANN001, F811
    config = {
        "name": f"first-hour-sweep-{RUN_ID}",
        "base": tiny_spec(name="first-hour-trial", epochs=2),
        "space": {"optimizer.lr": {"type": "choice", "values": [0.01, 0.05]}},
        "algorithm": "grid",
        "max_trials": 2,
    }
    created = saddle("sweep", "create", write(tmp_path, "sweep.yaml", config))
    assert created.returncode == 0, created.stderr
    sweep_id = created.stdout.strip()
    assert f"saddle sweep status {sweep_id} --watch" in created.stderr

    watched = saddle("sweep", "status", sweep_id, "--watch", "--json")
    assert watched.returncode == 0, watched.stderr
    final = json.loads(watched.stdout)
    assert final["status"] == "succeeded" and len(final["trials"]) == 2
    assert "trials done" in watched.stderr and "2/2 trials done" in watched.stderr
