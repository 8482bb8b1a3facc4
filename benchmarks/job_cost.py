"""The fixed cost of a small job: what a job costs besides its own training updates.

The README's digits MLP (examples/digits.yaml: 4,810 parameters, 20 epochs, spectra every 10
epochs, probes and diagnosis at their defaults) runs JOBS times, one after another, on the real
service (benchmarks/service.py: one worker process, one torch thread, the API, Postgres, Redis),
after a warm-up job that makes the worker import torch once, as a long-running worker has. Each
phase is timed by the worker itself (worker/phases.py, stored as ``summary.phases``); queueing and
the finishing write come from the job's timestamps (created, started, finished).

    submission -> first update   queue and claim, data, model, reference fit, first writes, the
                                 epoch-0 evaluation and the initial spectrum
    last update -> succeeded     the final spectrum and checkpoint, the last writes, probes,
                                 diagnosis and the finishing write

    .venv/bin/python benchmarks/job_cost.py [--jobs 5] [--epochs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.service import running_service  # noqa: E402

SPEC = yaml.safe_load((REPO / "examples" / "digits.yaml").read_text())


def run_job(http: Any, spec: dict[str, Any]) -> dict[str, Any]:
    created = http.post("/v1/jobs", json=spec)
    created.raise_for_status()
    job_id = created.json()["id"]
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['status']}: {job['error']}")
            return job
        time.sleep(0.1)


def seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def breakdown(job: dict[str, Any]) -> dict[str, float]:
    """The job's time, cut into what happens before its first update, its updates, between them
    (evaluations, spectra, checkpoints) and after its last update."""
    p = job["summary"]["phases"]
    total = seconds(job["created_at"], job["finished_at"])
    queue = seconds(job["created_at"], job["started_at"])
    in_training = p["training"] - p["updates"] - p.get("provisional_diagnosis", 0.0)
    rows = {
        "queue and claim": queue,
        "data": p["data"],
        "model": p["model"],
        "reference fit": p["reference"],
        "spectra (initial, periodic, final)": p.get("spectra", 0.0),
        "checkpoints": p.get("checkpoints", 0.0),
        "evaluation and logging": in_training - p.get("spectra", 0.0) - p.get("checkpoints", 0.0),
        "writes (summary, last points)": p["writes"],
        "probes": p.get("probes", 0.0),
        "diagnosis (provisional ones, final)": p.get("provisional_diagnosis", 0.0) + p["diagnosis"],
    }
    rows["finishing write and the rest"] = total - p["updates"] - sum(rows.values())
    rows["updates (the training itself)"] = p["updates"]
    rows["total, submission to succeeded"] = total
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5, help="timed jobs (default 5)")
    parser.add_argument(
        "--epochs", type=int, default=SPEC["epochs"], help="epochs per job (default: the example's)"
    )
    args = parser.parse_args()
    spec = {**SPEC, "epochs": args.epochs}
    with running_service("jobcost", workers=1) as service:
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
        run_job(service.http, {**spec, "name": "warm-up"})
        # A seed of its own per job: nothing a worker may reuse between identical jobs is reused.
        jobs = [run_job(service.http, {**spec, "name": f"cost-{i}", "seed": 1 + i}) for i in range(args.jobs)]
    rows = [breakdown(job) for job in jobs]
    median = {name: statistics.median(r[name] for r in rows) for name in rows[0]}
    total = median["total, submission to succeeded"]
    print(f"\n{spec['name']}: {args.jobs} jobs of {args.epochs} epochs, medians (s and share of the total)")
    for name, value in median.items():
        print(f"  {name:<38} {value:8.3f} s  {100 * value / total:5.1f} %")
    fixed = total - median["updates (the training itself)"]
    print(f"fixed cost (everything but the updates): {fixed:.3f} s, {100 * fixed / total:.1f}% of the job")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
