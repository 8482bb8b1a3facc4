"""The commands that talk to the API: submit, watch, list, inspect, fix and cancel jobs; sweeps,
studies and datasets. Text for people by default, the API's JSON with ``--json``."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from saddle.client import ApiError, Client
from saddle.commands import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Api, UsageError, api_command
from saddle.inputs import apply_overrides, load_mapping, load_spec_file
from saddle.output import (
    compact,
    describe_result,
    evidence_summary,
    first_line,
    fmt,
    param,
    print_json,
    print_table,
    remedy_hint,
    when,
)
from saddle.progress import ProgressDisplay, sweep_step
from saddle.specview import model_view, optimizer_view, schedule_view

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
STUDIES = ("depth", "batch-size", "batch-size-timing")
idempotency_option = click.option("--idempotency-key", help="the same key never creates two")
watch_option = click.option("--watch", is_flag=True, help="show progress until it ends, then its result")


def print_or_json(api: Api, value: Any, text: Callable[[], None]) -> int:
    """The API's JSON with --json, else ``text()``'s lines."""
    if api.json:
        print_json(value)
    else:
        text()
    return EXIT_OK


# ------------------------------------------------------------------------------------------- jobs


@click.command()
@click.argument("spec")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="PATH=VALUE",
    help="override a field, e.g. --set epochs=5 --set init_from.job=ID; repeatable",
)
@watch_option
@idempotency_option
@api_command
def submit(api: Api, spec: str, overrides: tuple[str, ...], watch: bool, idempotency_key: str | None) -> int:
    client = api.client()
    job = client.submit(apply_overrides(load_spec_file(spec), overrides), idempotency_key)
    if not watch:
        return print_or_json(api, job, lambda: print(job["id"]))
    print(f"job {job['id']} submitted", file=sys.stderr)
    return follow_job(client, job["id"], api.json)


def follow_job(client: Client, job_id: str, as_json: bool = False) -> int:
    """Progress on stderr until the job ends, then its result on stdout; the exit code says how it ended."""
    display = ProgressDisplay()
    try:
        final = client.wait(job_id, on_progress=display)
    except KeyboardInterrupt:
        display.close()
        print(f"stopped watching; job {job_id} goes on (saddle cancel {job_id} stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    display.close()
    if as_json:
        print_json(final)
    else:
        print(describe_result(final))
        if final.get("verdict"):
            print(f"  details: saddle diagnose {job_id}")
    return EXIT_OK if final["status"] == "succeeded" else EXIT_FAILED


@click.command("ls")
@click.option("--status", type=click.Choice(STATUSES))
@click.option(
    "--verdict", help="e.g. overfitting, good_fit (an unknown one is refused, naming the valid ones)"
)
@click.option(
    "--finding", multiple=True, metavar="CODE", help="jobs with this finding, e.g. oscillation; repeatable"
)
@click.option("--name")
@click.option("--sweep", help="jobs of this sweep")
@click.option("--limit", type=int, default=20, show_default=True, help="at most this many")
@api_command
def list_jobs(api: Api, limit: int, **filters: Any) -> int:
    filters["finding"] = list(filters["finding"]) or None
    jobs = list(api.client().iter_jobs(limit=limit, **filters))
    return print_or_json(api, jobs, lambda: print_jobs(jobs))


def print_jobs(jobs: list[dict[str, Any]]) -> None:
    rows = []
    for j in jobs:
        p = j.get("progress") or {}
        epochs = p.get("epochs") or (j.get("spec") or {}).get("epochs")
        epoch = f"{p.get('epoch', 0)}/{epochs}" if epochs else "-"
        created = when(j["created_at"])
        rows.append(
            [
                j["id"],
                j["name"] or "-",
                j["kind"],
                j["status"],
                epoch,
                p.get("val_loss"),
                j.get("verdict"),
                created,
            ]
        )
    print_table(rows, ["ID", "NAME", "KIND", "STATUS", "EPOCH", "VAL LOSS", "VERDICT", "CREATED"])


@click.command()
@click.argument("job")
@api_command
def show(api: Api, job: str) -> int:
    row = api.client().job(job)
    return print_or_json(api, row, lambda: print_job(row))


def print_job(job: dict[str, Any]) -> None:
    p, spec = job.get("progress") or {}, job.get("spec") or {}
    error = first_line(job.get("error"))
    fields = [
        # A failed job's reason comes first: it is what the reader came for.
        *([("error", error)] if error and job["status"] == "failed" else []),
        ("name", job["name"] or "-"),
        ("kind", job["kind"]),
        ("status", job["status"] + (" (cancel requested)" if job.get("cancel_requested") else "")),
        ("progress", f"epoch {p.get('epoch', 0)}/{p.get('epochs') or spec.get('epochs')}"),
        ("verdict", job.get("verdict") or "-"),
        ("dataset", (spec.get("data") or {}).get("dataset")),
        ("model", compact(model_view(spec.get("model") or {}))),
        ("optimizer", compact(optimizer_view(spec.get("optimizer") or {}))),
        ("schedule", compact(schedule_view(spec.get("schedule") or {}))),
        ("device", job.get("device") or "-"),
        ("attempts", job.get("attempts")),
        ("created", when(job["created_at"])),
        ("started", when(job.get("started_at"))),
        ("finished", when(job.get("finished_at"))),
    ]
    for key, label in (("parent_id", "parent"), ("sweep_id", "sweep")):
        if job.get(key):
            fields.append((label, job[key]))
    if job.get("tags"):
        fields.append(("tags", ", ".join(f"{k}={v}" for k, v in job["tags"].items())))
    print(f"job {job['id']}")
    for key, value in fields:
        print(f"  {key:10s} {value}")
    body = [line for line in describe_result(job).splitlines()[1:] if not line.startswith("  error:")]
    if body:
        print("\n".join(body))
    for line in remedy_hint(job):
        print(line)


@click.command()
@click.argument("job")
@click.option("--name", "names", multiple=True, help="series name, e.g. val/loss; repeatable (default: all)")
@click.option("--split", type=click.Choice(("train", "val", "test")))
@click.option(
    "--max-points",
    type=int,
    default=2000,
    show_default=True,
    help="downsample each series to this many points",
)
@click.option("--csv", "as_csv", is_flag=True, help="name,step,epoch,value rows on stdout")
@api_command
def metrics(
    api: Api, job: str, names: tuple[str, ...], split: str | None, max_points: int, as_csv: bool
) -> int:
    result = api.client().metrics(job, list(names), max_points=max_points, split=split)
    series = result["series"]
    if api.json:
        print_json(result)
    elif as_csv:
        print_series_csv(series)
    else:
        print_series_summary(series)
    if not series and names:
        print(f"no series named {', '.join(names)} in job {job}", file=sys.stderr)
    return EXIT_OK


def print_series_csv(series: list[dict[str, Any]]) -> None:
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["name", "step", "epoch", "value"])
    for s in series:
        for step, epoch, value in zip(s["steps"], s["epochs"], s["values"], strict=True):
            out.writerow([s["name"], step, epoch, "" if value is None else repr(value)])


def print_series_summary(series: list[dict[str, Any]]) -> None:
    rows = []
    for s in series:
        values = [v for v in s["values"] if v is not None]
        first, last = (values[0], values[-1]) if values else (None, None)
        low, high = (min(values), max(values)) if values else (None, None)
        rows.append([s["name"], s["total_points"], first, last, low, high])
    print_table(rows, ["NAME", "POINTS", "FIRST", "LAST", "MIN", "MAX"])


@click.command()
@click.argument("job")
@api_command
def diagnose(api: Api, job: str) -> int:
    client = api.client()
    row, diagnoses = client.job(job), client.diagnoses(job)
    body = {
        "job_id": row["id"],
        "status": row["status"],
        "verdict": row.get("verdict"),
        "diagnoses": diagnoses,
    }
    return print_or_json(api, body, lambda: print_diagnoses(row, diagnoses))


def print_diagnoses(job: dict[str, Any], diagnoses: list[dict[str, Any]]) -> None:
    print(f"job {job['id']} {job['status']} — verdict: {job.get('verdict') or 'none yet'}")
    if not diagnoses:
        unfinished = " (the job has not finished)" if job["status"] in ("queued", "running") else ""
        print(f"  no diagnosis yet{unfinished}")
    for d in diagnoses:
        flag = " (provisional)" if d.get("provisional") else ""
        print(f"\n{d['kind']}: {d['code']}  [{d['severity']}, confidence {d['confidence']:.2f}]{flag}")
        if d.get("recommendation"):
            print(f"  recommendation: {d['recommendation']}")
        for line in evidence_summary(d.get("evidence") or {}):
            print(f"  evidence: {line}")
        if d.get("patch"):
            print(f"  patch: {compact(d['patch'])}")
    for line in remedy_hint(job):
        print(line)


@click.command()
@click.argument("job")
@click.option("--finding", multiple=True, metavar="CODE", help="apply this diagnosis' patch; repeatable")
@click.option("--watch", is_flag=True, help="follow the new job until it ends")
@api_command
def remedy(api: Api, job: str, finding: tuple[str, ...], watch: bool) -> int:
    client = api.client()
    result = client.remedy(job, list(finding) or None)
    if api.json and not watch:
        print_json(result)
        return EXIT_OK
    made = result["job"]
    print(
        f"job {made['id']} submitted: remedy of {job} applying {', '.join(result['applied'])}; "
        f"patch {compact(result['patch'])}",
        file=sys.stderr if watch or api.json else sys.stdout,
    )
    return follow_job(client, made["id"], api.json) if watch else EXIT_OK


@click.command()
@click.argument("job")
@api_command
def cancel(api: Api, job: str) -> int:
    row = api.client().cancel(job)
    note = " (stops at its next step)" if row["status"] == "running" else ""
    return print_or_json(api, row, lambda: print(f"job {row['id']} {row['status']}{note}"))


# ----------------------------------------------------------------------------------------- sweeps


def sweeps_call(api: Api, call: Callable[[], Any]) -> Any:
    """A sweeps or studies route; a server without them is named as such, not "not found"."""
    try:
        return call()
    except ApiError as err:
        if err.route_missing:
            raise ApiError(err.status, f"the API at {api.url} has no /v1/sweeps (an older server?)") from None
        raise


@click.group()
def sweep() -> None:
    pass


@sweep.command("create")
@click.argument("file")
@idempotency_option
@api_command
def sweep_create(api: Api, file: str, idempotency_key: str | None) -> int:
    """Create a sweep from a YAML/JSON file."""
    client = api.client()
    config = load_mapping(file, "a sweep")
    made = sweeps_call(api, lambda: client.create_sweep(config, idempotency_key))
    if api.json:
        print_json(made)
        return EXIT_OK
    print(made["id"])  # alone on stdout, for scripts: ID=$(saddle sweep create FILE)
    print(f"follow it: saddle sweep status {made['id']} --watch", file=sys.stderr)
    return EXIT_OK


@sweep.command("status")
@click.argument("sweep_id", metavar="SWEEP")
@watch_option
@api_command
def sweep_status(api: Api, sweep_id: str, watch: bool) -> int:
    """A sweep's progress, best trial and trials."""
    client = api.client()
    if watch:
        return follow_sweep(api, client, sweep_id)
    state = sweeps_call(api, lambda: client.sweep(sweep_id))
    return print_or_json(api, state, lambda: print_sweep(state))


def follow_sweep(api: Api, client: Client, sweep_id: str) -> int:
    """Progress on stderr until the sweep ends, then its trials and best one (or its JSON) on stdout."""
    try:
        state = wait_sweep(api, client, sweep_id)
    except KeyboardInterrupt:
        print(f"stopped watching; sweep {sweep_id} goes on", file=sys.stderr)
        return EXIT_INTERRUPTED
    return print_or_json(api, state, lambda: print_sweep(state))


def wait_sweep(api: Api, client: Client, sweep_id: str, poll_seconds: float = 2.0) -> dict[str, Any]:
    """Progress on stderr until the sweep ends; returns its final state."""
    display = ProgressDisplay()
    try:
        while True:
            state = sweeps_call(api, lambda: client.sweep(sweep_id))
            display.show(*sweep_step(state))
            if state["status"] != "running":
                return state
            time.sleep(poll_seconds)
    finally:
        display.close()


def print_sweep(state: dict[str, Any]) -> None:
    p, best = state.get("progress") or {}, state.get("best")
    objective = state.get("objective") or {}
    print(f"sweep {state['id']} {state.get('name', '')}: {state['status']}")
    print(
        f"  progress {p.get('done', 0)}/{p.get('total', '?')} done "
        f"({p.get('running', 0)} running, {p.get('queued', 0)} queued, {p.get('failed', 0)} failed, "
        f"{p.get('pruned', 0)} pruned)"
    )
    print(f"  objective {objective.get('mode', '')} {objective.get('metric', '')}")
    if best:
        params = json.dumps(best.get("params"))
        print(f"  best trial {best['number']}: {fmt(best.get('value'))} {params} job {best.get('job_id')}")
    trials = state.get("trials") or []
    if trials:
        names = sorted({k for t in trials for k in t.get("params", {})})
        rows = [
            [
                t["number"],
                t["status"],
                t.get("objective"),
                t.get("verdict"),
                *[param(t["params"].get(n)) for n in names],
                t.get("job_id"),
            ]
            for t in trials
        ]
        print()
        print_table(rows, ["#", "STATUS", "OBJECTIVE", "VERDICT", *names, "JOB"])
    for f in state.get("findings") or []:
        print(f"\nfinding: {f.get('code')}  {f.get('conclusion') or f.get('recommendation') or ''}".rstrip())
    if state.get("conclusion"):
        print(f"\nconclusion: {state['conclusion']}")


@click.command()
@click.argument("kind", type=click.Choice(STUDIES))
@click.argument("file")
@click.option("--watch", is_flag=True, help="follow it until it ends")
@idempotency_option
@api_command
def study(api: Api, kind: str, file: str, watch: bool, idempotency_key: str | None) -> int:
    """A checklist experiment in one call. FILE is the study's YAML/JSON body, e.g.
    examples/study-depth.yaml; depth and batch-size studies are sweeps (followed with `saddle sweep
    status`), a batch-size timing study is a job (followed like any job)."""
    client = api.client()
    body = load_mapping(file, "a study")
    made = sweeps_call(api, lambda: client.create_study(kind, body, idempotency_key))
    is_job = kind == "batch-size-timing"
    if watch and is_job:
        print(f"study {made['id']} submitted", file=sys.stderr)
        return follow_job(client, made["id"], api.json)
    if watch:
        return follow_sweep(api, client, made["id"])
    if api.json:
        print_json(made)
        return EXIT_OK
    print(made["id"])
    follow = f"saddle show {made['id']}" if is_job else f"saddle sweep status {made['id']} --watch"
    print(f"follow it: {follow}", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------------------- datasets


@click.group()
def dataset() -> None:
    pass


@dataset.command("upload")
@click.argument("file")
@click.option("--name", required=True)
@click.option("--label", help="the CSV's label column (default: a column named label, target or y)")
@click.option(
    "--task", type=click.Choice(("auto", "classification", "regression")), default="auto", show_default=True
)
@api_command
def dataset_upload(api: Api, file: str, name: str, label: str | None, task: str) -> int:
    """Upload a CSV (header row, a label column) or an NPZ (arrays X, y)."""
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{file}: no such file")
    row = api.client().upload_dataset(path, name, label, task)
    if api.json:
        print_json(row)
        return EXIT_OK
    print(row["id"])
    found = f"label column {row['label']!r}" if row.get("label") else "labels y"
    chosen = " (found by name; --label picks another)" if row.get("label") and not label else ""
    print(
        f"{row['name']}: {row['n_rows']} rows, {row['n_features']} features, {found}{chosen}, task {row['task']}",
        file=sys.stderr,
    )
    return EXIT_OK


@dataset.command("ls")
@click.option("--limit", type=int, default=100, show_default=True)
@api_command
def dataset_ls(api: Api, limit: int) -> int:
    """List this project's datasets."""
    rows = api.client().datasets(limit)
    return print_or_json(api, rows, lambda: print_datasets(rows))


def print_datasets(rows: list[dict[str, Any]]) -> None:
    table = [
        [
            d["id"],
            d["name"],
            d["format"],
            d["task"],
            d["n_rows"],
            d["n_features"],
            d.get("label"),
            when(d["created_at"]),
        ]
        for d in rows
    ]
    print_table(table, ["ID", "NAME", "FORMAT", "TASK", "ROWS", "FEATURES", "LABEL", "CREATED"])
