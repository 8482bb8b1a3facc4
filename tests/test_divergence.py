"""Divergence is a verdict, never a crash; a failed job's error is one line in domain words."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from saddle.client import Client
from tests.conftest import tiny_spec
from tests.test_embedded import run_demo_job
from worker.failures import describe_failure

# SGD at a rate 10 on standardized digits: NaN within the first epochs (the public scenario).
DIVERGING = {
    "name": "diverges",
    "data": {"dataset": "digits", "scaling": "standardize"},
    "model": {"arch": "mlp", "hidden": [32]},
    "optimizer": {"name": "sgd", "lr": 10.0},
    "batch_size": 32,
    "epochs": 5,
    "analysis": {"hessian": {"every_epochs": 0, "samples": 128}},
}


def assert_diverged_verdict(job: dict, diagnoses: list[dict]) -> None:
    assert job["status"] == "succeeded" and job["error"] is None, job["error"]
    assert job["verdict"] == "diverged"
    verdict = next(d for d in diagnoses if d["kind"] == "verdict")
    assert verdict["code"] == "diverged" and verdict["evidence"]["step"] >= 1
    assert verdict["evidence"]["likely_cause"] == "learning_rate.too_high"
    assert "learning_rate.too_high" in {d["code"] for d in diagnoses}


@pytest.mark.usefixtures("worker_process")
def test_a_diverged_run_on_postgres_gets_its_verdict(sdk: Client) -> None:
    job = sdk.wait(sdk.submit(DIVERGING)["id"], timeout=300)
    assert_diverged_verdict(job, sdk.diagnoses(job["id"]))
    response = sdk.http.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "train/batch_loss"})
    losses = response.json()["series"][0]["values"]
    assert losses[-1] is None  # the non-finite loss is stored (and reads back as null in JSON)


def test_a_diverged_run_on_the_embedded_default_gets_its_verdict(tmp_path) -> None:
    """SQLite turned NaN into NULL under a NOT NULL column: the job failed with an IntegrityError
    and its SQL in `error`. Now the demo (SQLite, filesystem broker, real worker) diagnoses it."""
    result = run_demo_job(tmp_path, DIVERGING)
    assert result.returncode == 0, result.stdout + result.stderr
    db = sqlite3.connect(tmp_path / ".saddle" / "saddle.db")
    try:
        status, verdict, error = db.execute("SELECT status, verdict, error FROM jobs").fetchone()
        nan_points = sum(
            int(np.isnan(np.frombuffer(vals, ">f8")).sum())
            for (vals,) in db.execute("SELECT vals FROM metric_chunks")
        )
        cause = db.execute("SELECT evidence FROM diagnoses WHERE code = 'diverged'").fetchone()[0]
    finally:
        db.close()
    assert (status, verdict, error) == ("succeeded", "diverged", None)
    assert nan_points >= 1 and "learning_rate.too_high" in cause


@pytest.mark.usefixtures("worker_process")
def test_a_failed_job_says_what_failed_in_one_line(sdk: Client) -> None:
    job = sdk.wait(sdk.submit(tiny_spec(name="one-line", model={"arch": "cnn"}))["id"], timeout=120)
    assert job["status"] == "failed"
    assert job["error"].startswith("building the model failed: model.arch: cnn needs image-shaped inputs")
    assert "\n" not in job["error"] and "Traceback" not in job["error"] and ".py" not in job["error"]


def test_database_errors_are_named_not_quoted(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE points (value FLOAT NOT NULL)"))
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO points (value) VALUES (:v)"), {"v": math.nan})
    except SQLAlchemyError as exc:
        error = describe_failure(exc, "training")
    finally:
        engine.dispose()
    assert error == "training failed: the database refused a write; the worker log has the details"
    internal = describe_failure(IndexError("list index out of range"), "training")
    assert internal == "training failed: an internal error (IndexError); the worker log has the details"
    quoted = describe_failure(ValueError('File "/srv/worker/x.py", line 3\nboom'), "training")
    assert ".py" not in quoted and "\n" not in quoted
