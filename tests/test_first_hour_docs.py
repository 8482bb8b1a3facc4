"""The documentation a new user reads (issue 17, item 3): the JobSpec reference is generated from the
models and committed up to date, the README links it, and every example file works through the CLI
as its header says (against the real API server and worker)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from models.spec import JobSpec
from saddle.client import Client
from tests.test_cli import saddle  # noqa: F401  (the CLI-as-a-subprocess fixture)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def generator():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("generate_jobspec", ROOT / "docs" / "generate_jobspec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_jobspec_reference_is_generated_from_the_models_and_up_to_date() -> None:
    gen = generator()
    committed = (ROOT / "docs" / "jobspec.md").read_text()
    assert committed == gen.render(), (
        "run .venv/bin/python docs/generate_jobspec.py and commit docs/jobspec.md"
    )
    # Every field of the model is a row, with its default: nothing is left out or invented.
    documented = re.findall(r"^\| `([^`]+)` \|", committed, flags=re.MULTILINE)
    assert documented == [path for path, _ in gen.rows(JobSpec)]
    assert "| `optimizer.lr` | float in (0, 1000] | `0.01` |" in committed
    assert "| `data.dataset` | str of 1–200 chars | **required** |" in committed


def test_a_field_without_a_meaning_stops_the_generator() -> None:
    gen = generator()
    del gen.MEANINGS["optimizer.momentum"]
    with pytest.raises(SystemExit, match="no meaning for optimizer.momentum"):
        gen.render()


def test_the_readme_links_the_reference_and_the_examples_not_the_design_notes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/jobspec.md" in readme and "examples/README.md" in readme
    assert "DESIGN.md" not in readme and "../shared" not in readme
    for name in re.findall(r"examples/([\w.-]+\.yaml)", readme):
        assert (EXAMPLES / name).exists(), name


def test_every_example_file_is_listed_and_valid() -> None:
    listed = set(re.findall(r"`([\w.-]+\.yaml)`", (EXAMPLES / "README.md").read_text()))
    files = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert listed == files
    for name in ("digits.yaml", "overfit.yaml", "finetune.yaml"):
        JobSpec.model_validate(yaml.safe_load((EXAMPLES / name).read_text()))


@pytest.mark.usefixtures("worker_process")
def test_the_quick_start_overfits_and_is_offered_its_remedy(saddle, sdk: Client) -> None:  # noqa: ANN001, F811
    """README's quick start: submit examples/overfit.yaml --watch, then the remedy it is offered."""
    watched = saddle("submit", str(EXAMPLES / "overfit.yaml"), "--watch")
    assert watched.returncode == 0, watched.stderr
    job_id = watched.stdout.split()[1]
    assert f"job {job_id} succeeded — verdict: overfitting" in watched.stdout
    diagnosed = saddle("diagnose", job_id)
    assert f"apply the fix: saddle remedy {job_id}   (applies overfitting" in diagnosed.stdout
    remedy = saddle("remedy", job_id, "--json")
    assert remedy.returncode == 0, remedy.stderr
    made = json.loads(remedy.stdout)
    assert "overfitting" in made["applied"] and made["job"]["spec"]["regularization"]["early_stopping"]
    sdk.cancel(made["job"]["id"])


@pytest.mark.usefixtures("worker_process")
def test_the_sweep_and_study_examples_are_accepted_as_their_headers_say(saddle, sdk: Client) -> None:  # noqa: ANN001, F811
    created = saddle("sweep", "create", str(EXAMPLES / "sweep.yaml"))
    assert created.returncode == 0, created.stderr
    sweep = sdk.sweep(created.stdout.strip())
    assert sweep["progress"]["total"] == 6 and sweep["algorithm"] == "grid"
    sdk.cancel_sweep(sweep["id"])  # accepted is what is checked here; the sweep tests run sweeps

    for kind, file, total in (("depth", "study-depth.yaml", 4), ("batch-size", "study-batch-size.yaml", 3)):
        made = saddle("study", kind, str(EXAMPLES / file))
        assert made.returncode == 0, made.stderr
        study = sdk.sweep(made.stdout.strip())
        assert study["progress"]["total"] == total and study["kind"] == f"study.{kind.replace('-', '_')}"
        assert f"saddle sweep status {study['id']} --watch" in made.stderr
        sdk.cancel_sweep(study["id"])

    timing = saddle("study", "batch-size-timing", str(EXAMPLES / "study-batch-size-timing.yaml"), "--json")
    assert timing.returncode == 0, timing.stderr
    job = json.loads(timing.stdout)
    assert job["kind"] == "study" and job["summary"]["study"]["batch_sizes"] == [1, 8, 64, 512]
    sdk.cancel(job["id"])


@pytest.mark.usefixtures("worker_process")
def test_the_demo_job_and_its_fine_tuning_run_as_their_headers_say(saddle, sdk: Client) -> None:  # noqa: ANN001, F811
    short = ["--set", "epochs=2", "--set", "analysis.hessian.enabled=false"]
    parent = saddle("submit", str(EXAMPLES / "digits.yaml"), *short, "--watch", "--json")
    assert parent.returncode == 0, parent.stderr
    parent_id = json.loads(parent.stdout)["id"]

    child = saddle(
        "submit",
        str(EXAMPLES / "finetune.yaml"),
        "--set",
        f"init_from.job={parent_id}",
        *short,
        "--watch",
        "--json",
    )
    assert child.returncode == 0, child.stderr
    tuned = json.loads(child.stdout)
    assert tuned["spec"]["init_from"] == {"job": parent_id, "checkpoint": "best", "freeze": ["blocks.0"]}
    assert tuned["status"] == "succeeded" and tuned["summary"]["init_from"]["frozen"]

    # As committed, the placeholder parent is refused naming the field to set.
    placeholder = saddle("submit", str(EXAMPLES / "finetune.yaml"))
    assert placeholder.returncode == 3 and "init_from" in placeholder.stderr
