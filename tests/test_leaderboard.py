"""GET /v1/sweeps/{id}/leaderboard: a real sweep run by the worker and read from the real API, and
the ranking rules (objective mode, ties, unranked trials) on a sweep written row by row."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from models.db import session_scope
from models.metrics import Point, write_points
from models.tables import Job, Project, Sweep, SweepTrial
from saddle.client import Client
from sweeps.spec import SweepSpec
from tests.conftest import RUN_ID, tiny_spec


def _wait(http: httpx.Client, sweep_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (sweep := http.get(f"/v1/sweeps/{sweep_id}").json())["status"] == "running":
        assert time.monotonic() < deadline, f"sweep not finished: {sweep['progress']}"
        time.sleep(0.5)
    return sweep


@pytest.mark.usefixtures("worker_process")
def test_leaderboard_ranks_a_real_sweeps_trials(sdk: Client, api_server: str, other_token: str) -> None:
    http = sdk.http
    body = {
        "name": "board",
        "base": tiny_spec(epochs=2),
        "space": {"optimizer.lr": {"type": "choice", "values": [0.001, 0.01, 0.1]}},
        "algorithm": "grid",
        "objective": {"metric": "val/loss", "mode": "min"},
        "max_concurrency": 2,
    }
    created = http.post("/v1/sweeps", json=body)
    assert created.status_code == 201, created.text
    sweep = _wait(http, created.json()["id"])
    assert sweep["status"] == "succeeded"

    response = http.get(f"/v1/sweeps/{sweep['id']}/leaderboard")
    assert response.status_code == 200, response.text
    board = response.json()
    assert board["sweep_id"] == sweep["id"] and board["objective"]["mode"] == "min"
    assert board["ranked"] == 3 and board["progress"]["succeeded"] == 3
    entries = board["entries"]
    assert [e["rank"] for e in entries] == [1, 2, 3]
    objectives = [e["objective"] for e in entries]
    assert objectives == sorted(objectives)
    assert {e["params"]["optimizer.lr"] for e in entries} == {0.001, 0.01, 0.1}
    by_job = {t["job_id"]: t for t in sweep["trials"]}
    for entry in entries:
        trial = by_job[entry["job_id"]]
        assert entry["objective"] == trial["objective"] and entry["number"] == trial["number"]
        assert entry["status"] == "succeeded" and entry["verdict"] == trial["verdict"] is not None
        assert entry["summary"]["epochs_run"] == 2 and entry["summary"]["best_val_loss"] is not None
        # The last values are the job's own series.
        series = http.get(
            f"/v1/jobs/{entry['job_id']}/metrics", params={"name": ["val/loss", "test/accuracy"]}
        )
        last = {s["name"]: s["values"][-1] for s in series.json()["series"]}
        assert entry["final"]["val/loss"] == last["val/loss"]
        assert entry["final"]["test/accuracy"] == last["test/accuracy"]
    assert entries[0]["job_id"] == sweep["best"]["job_id"]

    top = http.get(f"/v1/sweeps/{sweep['id']}/leaderboard", params={"limit": 1}).json()
    assert [e["job_id"] for e in top["entries"]] == [entries[0]["job_id"]] and top["ranked"] == 3
    for limit in (0, 501):
        bad = http.get(f"/v1/sweeps/{sweep['id']}/leaderboard", params={"limit": limit})
        assert bad.status_code == 422 and "limit" in bad.text
    # Another project's token sees nothing; no token is 401.
    other = httpx.get(
        f"{api_server}/v1/sweeps/{sweep['id']}/leaderboard",
        headers={"Authorization": f"Bearer {other_token}"},
    )
    assert other.status_code == 404
    assert httpx.get(f"{api_server}/v1/sweeps/{sweep['id']}/leaderboard").status_code == 401
    assert http.get("/v1/sweeps/nosuchsweep/leaderboard").status_code == 404


def _written_sweep(mode: str) -> tuple[str, dict[int, str]]:
    """A finished sweep written directly (no worker can touch it): seven trials, three of them
    unranked (pruned, failed, cancelled), two tied on the objective."""
    request = SweepSpec.model_validate(
        {
            "name": "written",
            "base": tiny_spec(),
            "space": {"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}},
            "algorithm": "random",
            "objective": {"metric": "val/accuracy", "mode": mode},
            "max_trials": 7,
        }
    ).model_dump(mode="json")
    trials = [  # number: (state, value, job status)
        (0, "complete", 0.80, "succeeded"),
        (1, "complete", 0.95, "succeeded"),
        (2, "pruned", None, "cancelled"),
        (3, "complete", 0.95, "succeeded"),
        (4, "failed", None, "failed"),
        (5, "complete", 0.60, "succeeded"),
        (6, "cancelled", None, "cancelled"),
    ]
    jobs: dict[int, str] = {}
    with session_scope() as session:
        project = session.scalars(select(Project).where(Project.name == f"test-{RUN_ID}")).one()
        sweep = Sweep(
            project_id=project.id,
            name="written",
            status="succeeded",
            config={"request": request, "kind": "sweep", "total": 7, "seed": 0},
        )
        session.add(sweep)
        session.flush()
        for number, state, value, status in trials:
            job = Job(
                project_id=project.id,
                name=f"written-{number}",
                spec=tiny_spec(),
                status=status,
                kind="trial",
                sweep_id=sweep.id,
                summary={"best_val_loss": 1 - (value or 0), "epochs_run": 3, "internal": "not shown"},
                verdict="good_fit" if status == "succeeded" else None,
            )
            session.add(job)
            session.flush()
            jobs[number] = job.id
            session.add(
                SweepTrial(
                    sweep_id=sweep.id,
                    number=number,
                    job_id=job.id,
                    params={"optimizer.lr": 0.01},
                    state=state,
                    value=value,
                )
            )
            if value is not None:
                write_points(
                    session, job.id, [Point("val/accuracy", s, s, value - 0.1 + 0.05 * s) for s in range(3)]
                )
        return sweep.id, jobs


@pytest.mark.parametrize(("mode", "order"), [("max", [1, 3, 0, 5]), ("min", [5, 0, 1, 3])])
def test_leaderboard_follows_the_objective_mode_and_skips_unranked_trials(
    client, mode: str, order: list[int]
) -> None:
    sweep_id, jobs = _written_sweep(mode)
    board = client.get(f"/v1/sweeps/{sweep_id}/leaderboard").json()
    assert board["objective"] == {"metric": "val/accuracy", "mode": mode, "at": "best"}
    assert board["ranked"] == 4
    assert [e["job_id"] for e in board["entries"]] == [jobs[n] for n in order]  # ties: earlier trial first
    first = board["entries"][0]
    assert set(first["summary"]) >= {"best_val_loss", "epochs_run"} and "internal" not in first["summary"]
    assert (
        first["final"]["val/accuracy"] == pytest.approx(first["objective"])
        and first["final"]["test/loss"] is None
    )
    assert board["progress"]["pruned"] == board["progress"]["cancelled"] == board["progress"]["failed"] == 1
    page = client.get(f"/v1/sweeps/{sweep_id}/leaderboard", params={"limit": 2}).json()
    assert [e["rank"] for e in page["entries"]] == [1, 2] and page["ranked"] == 4


def test_leaderboard_is_in_the_openapi_schema(client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/sweeps/{sweep_id}/leaderboard"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "LeaderboardOut"
    )
    limit = next(p for p in operation["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 500 and limit["schema"]["minimum"] == 1
