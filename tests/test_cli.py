"""The ``saddle`` CLI as a user runs it: a real subprocess against the real API server and worker,
token in SADDLE_TOKEN. Checks what it prints and the exit codes scripts rely on:
0 ok, 1 job failed or cancelled, 2 usage, 3 API refused, 4 API unreachable."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from saddle import processes
from saddle.client import Client
from tests.conftest import RUN_ID, SERVICE_ENV, tiny_spec

pytestmark = pytest.mark.usefixtures("worker_process")
SCENARIOS = Path(__file__).parent / "scenarios"


@pytest.fixture()
def saddle(api_server: str, token: str, tmp_path: Path):  # noqa: ANN201
    """Run ``saddle ARGS`` in tmp_path (no .saddle/token there) with SADDLE_API_URL and SADDLE_TOKEN."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SADDLE_")} | SERVICE_ENV
    base |= {"SADDLE_API_URL": api_server, "SADDLE_TOKEN": token}

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "saddle.cli", *args],
            cwd=tmp_path,
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def write(tmp_path: Path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_submit_watch_shows_progress_then_the_verdict(saddle, sdk: Client, tmp_path: Path) -> None:  # noqa: ANN001
    spec = write(tmp_path, "job.yaml", tiny_spec(name="cli-watch", epochs=3))
    done = saddle("submit", spec, "--watch")
    assert done.returncode == 0, done.stderr
    assert "[" in done.stderr and "epoch 3/3" in done.stderr and "submitted" in done.stderr
    first = done.stdout.splitlines()[0]
    job_id = first.split()[1]
    assert first.startswith(f"job {job_id} succeeded — verdict: ")
    assert "val   loss" in done.stdout and f"saddle diagnose {job_id}" in done.stdout

    # --json prints the final job; --watch of a failing job exits 1.
    failing = write(tmp_path, "bad.yaml", tiny_spec(name="cli-fail", model={"arch": "cnn"}))
    failed = saddle("submit", failing, "--watch", "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["status"] == "failed"


def test_ls_show_metrics_and_diagnose(saddle, sdk: Client) -> None:  # noqa: ANN001
    job = sdk.wait(sdk.submit(tiny_spec(name=f"cli-ls-{RUN_ID}", epochs=2))["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    job_id = job["id"]

    listed = saddle("ls", "--status", "succeeded", "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "KIND", "STATUS"] and 1 <= len(rows) <= 5
    as_json = json.loads(saddle("ls", "--status", "succeeded", "--json", "--limit", "3").stdout)
    assert 1 <= len(as_json) <= 3 and {j["status"] for j in as_json} == {"succeeded"}
    verdict = job["verdict"]
    by_verdict = json.loads(saddle("ls", "--verdict", verdict, "--json", "--limit", "500").stdout)
    assert job_id in {j["id"] for j in by_verdict} and {j["verdict"] for j in by_verdict} == {verdict}

    shown = saddle("show", job_id)
    assert shown.returncode == 0 and f"job {job_id}" in shown.stdout and "epoch 2/2" in shown.stdout
    assert json.loads(saddle("show", job_id, "--json").stdout)["id"] == job_id

    table = saddle("metrics", job_id)
    assert table.returncode == 0 and "val/loss" in table.stdout and "POINTS" in table.stdout
    rows_csv = list(
        csv.DictReader(io.StringIO(saddle("metrics", job_id, "--name", "val/loss", "--csv").stdout))
    )
    assert [r["epoch"] for r in rows_csv] == ["0.0", "1.0", "2.0"] and {r["name"] for r in rows_csv} == {
        "val/loss"
    }
    series = json.loads(
        saddle("metrics", job_id, "--name", "train/loss", "--name", "val/loss", "--json").stdout
    )
    assert sorted(s["name"] for s in series["series"]) == ["train/loss", "val/loss"]

    diagnosed = saddle("diagnose", job_id)
    assert diagnosed.returncode == 0
    assert f"verdict: {verdict}" in diagnosed.stdout and f"verdict: {verdict}  [" in diagnosed.stdout
    body = json.loads(saddle("diagnose", job_id, "--json").stdout)
    assert body["verdict"] == verdict and body["diagnoses"][0]["code"] == verdict


def test_diagnose_and_remedy_a_diverged_job(saddle, sdk: Client) -> None:  # noqa: ANN001
    spec = yaml.safe_load((SCENARIOS / "diverged_lr.yaml").read_text())["spec"]
    job = sdk.wait(sdk.submit(spec)["id"], timeout=180)
    assert job["verdict"] == "diverged"

    diagnosed = saddle("diagnose", job["id"])
    assert "finding: learning_rate.too_high  [error" in diagnosed.stdout
    assert 'patch: {"optimizer":{"lr":' in diagnosed.stdout and "evidence: lr = 10" in diagnosed.stdout
    assert f"saddle remedy {job['id']}" in diagnosed.stdout

    refused = saddle("remedy", job["id"], "--finding", "no_such_code")
    assert refused.returncode == 3 and "no diagnosis" in refused.stderr

    made = saddle("remedy", job["id"], "--finding", "learning_rate.too_high", "--json")
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    assert result["applied"] == ["learning_rate.too_high"] and result["job"]["parent_id"] == job["id"]
    assert result["job"]["spec"]["optimizer"]["lr"] < 10
    sdk.cancel(result["job"]["id"])

    # --watch follows the new job to its end; text mode names the new job first.
    watched = saddle("remedy", job["id"], "--watch")
    assert watched.returncode == 0, watched.stderr
    assert f"remedy of {job['id']}" in watched.stderr and "epoch 20/20" in watched.stderr
    assert watched.stdout.startswith("job ") and " succeeded" in watched.stdout.splitlines()[0]


def test_cancel_ends_a_watched_job_with_exit_code_1(
    saddle, sdk: Client, tmp_path: Path, api_server: str
) -> None:  # noqa: ANN001
    spec = write(tmp_path, "long.yaml", tiny_spec(name="cli-cancel", epochs=2000, batch_size=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SADDLE_")} | SERVICE_ENV
    env |= {"SADDLE_API_URL": api_server, "SADDLE_TOKEN": sdk.http.headers["Authorization"].split()[1]}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "saddle.cli", "submit", spec, "--watch"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            running = [j for j in sdk.jobs(name="cli-cancel", status="running")["items"]]
            if running:
                break
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.3)
        cancelled = saddle("cancel", running[0]["id"])
        assert cancelled.returncode == 0 and running[0]["id"] in cancelled.stdout
        out, err = watcher.communicate(timeout=90)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 1, err
    assert " cancelled" in out.splitlines()[0]


def test_exit_codes_for_usage_refusal_and_unreachable_api(saddle, tmp_path: Path) -> None:  # noqa: ANN001
    assert saddle("ls", "--status", "bogus").returncode == 2  # argparse
    assert saddle("frobnicate").returncode == 2
    missing = saddle("submit", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    no_token = saddle("ls", env={"SADDLE_TOKEN": ""})
    assert no_token.returncode == 2 and "no token" in no_token.stderr

    unknown = saddle("show", "0" * 32)
    assert unknown.returncode == 3 and "not found" in unknown.stderr
    bad_token = saddle("ls", "--token", "sdl_not_a_token")
    assert bad_token.returncode == 3 and "HTTP 401" in bad_token.stderr
    invalid = saddle("submit", write(tmp_path, "invalid.yaml", tiny_spec(batch_size=0)))
    assert invalid.returncode == 3 and "batch_size" in invalid.stderr

    dead = f"http://127.0.0.1:{processes.free_port()}"
    unreachable = saddle("ls", "--api", dead)
    assert unreachable.returncode == 4 and "cannot reach the API" in unreachable.stderr


def test_dataset_upload_and_ls(saddle, tmp_path: Path) -> None:  # noqa: ANN001
    rows = ["a,b,label", *[f"{i},{i * 2 % 7},{i % 2}" for i in range(40)]]
    path = tmp_path / "small.csv"
    path.write_text("\n".join(rows) + "\n")
    up = saddle("dataset", "upload", str(path), "--name", f"cli-{RUN_ID}", "--label", "label")
    assert up.returncode == 0, up.stderr
    dataset_id = up.stdout.strip()
    assert len(dataset_id) == 32
    listed = saddle("dataset", "ls")
    assert dataset_id in listed.stdout and f"cli-{RUN_ID}" in listed.stdout
    rows_json = json.loads(saddle("dataset", "ls", "--json").stdout)
    row = next(d for d in rows_json if d["id"] == dataset_id)
    assert (row["n_rows"], row["n_features"], row["label"]) == (40, 2, "label")

    bad = saddle("dataset", "upload", str(path), "--name", "x", "--label", "nope")
    assert bad.returncode == 3 and "nope" in bad.stderr
    assert saddle("dataset", "upload", str(tmp_path / "missing.csv"), "--name", "x").returncode == 2


def test_sweep_create_and_status_or_a_clear_refusal(saddle, sdk: Client, tmp_path: Path) -> None:  # noqa: ANN001
    config = {
        "name": f"cli-sweep-{RUN_ID}",
        "base": tiny_spec(name="cli-trial", epochs=2),
        "space": {"optimizer.lr": {"type": "choice", "values": [0.01, 0.05]}},
        "algorithm": "grid",
        "objective": {"metric": "val/loss", "mode": "min"},
        "max_trials": 2,
        "max_concurrency": 2,
    }
    created = saddle("sweep", "create", write(tmp_path, "sweep.yaml", config))
    if sdk.http.get("/v1/sweeps").status_code == 404:  # a server without the sweeps API
        assert created.returncode == 3 and "has no /v1/sweeps" in created.stderr
        return
    assert created.returncode == 0, created.stderr
    sweep_id = created.stdout.strip()
    deadline = time.monotonic() + 180
    while (status := json.loads(saddle("sweep", "status", sweep_id, "--json").stdout))["status"] == "running":
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert status["id"] == sweep_id and len(status["trials"]) == 2
    text = saddle("sweep", "status", sweep_id)
    assert text.returncode == 0 and f"sweep {sweep_id}" in text.stdout and "optimizer.lr" in text.stdout
    assert "best trial" in text.stdout
    assert saddle("sweep", "status", "0" * 32).returncode == 3


def test_token_create_makes_a_working_token(saddle) -> None:  # noqa: ANN001
    made = saddle("token", "create", "--project", f"cli-{RUN_ID}", "--json")
    assert made.returncode == 0, made.stderr
    new = json.loads(made.stdout)
    assert new["token"].startswith("sdl_") and new["project"] == f"cli-{RUN_ID}"
    listed = saddle("ls", "--json", env={"SADDLE_TOKEN": new["token"]})
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # a new project sees no jobs
