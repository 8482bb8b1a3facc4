"""Issue 14, item 7: no input gets a 5xx. A property test against the real API process: for every
operation of /openapi.json, every string and number it takes (path and query parameters, each leaf
of a full JSON body, each multipart field) is replaced in turn by hostile values drawn by hypothesis:
text with NUL characters and lone surrogates, integers past 64 bits, NaN and infinities. Each
answer must be below 500. (tests/test_fuzz.py runs schemathesis's own generation in-process.)"""

from __future__ import annotations

import copy
import json
import math
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from api.app import app
from models.db import session_scope
from models.tables import Job, Project, Sweep
from tests.conftest import RUN_ID, cancel_unfinished, tiny_spec

FUZZ_PROJECT = f"fuzz-{RUN_ID}"

_nul_text = st.text(max_size=12).map(lambda s: s[: len(s) // 2] + "\x00" + s[len(s) // 2 :])
_surrogate_text = st.text(max_size=12).flatmap(
    lambda s: st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]).map(lambda c: s + c + s)
)
HOSTILE_TEXT = st.one_of(
    _nul_text,
    _surrogate_text,
    st.sampled_from(
        ["", "NaN", "Infinity", "-1e999", "9" * 400, "%00", "' OR 1=1 --", "../../x", "x" * 5000]
    ),
)
HOSTILE_NUMBERS = st.one_of(
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400, -(10**400), math.nan, math.inf, -math.inf, 5e-324]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
HOSTILE = st.one_of(HOSTILE_TEXT, HOSTILE_NUMBERS)

FULL_SPEC: dict[str, Any] = {
    "name": "fuzz",
    "seed": 1,
    "tags": {"team": "vision", "run": 3, "weight": 0.5, "baseline": True},
    "data": {
        "dataset": "moons",
        "params": {"n_samples": 100, "noise": 0.2},
        "task": "classification",
        "split": {"val": 0.2, "test": 0.2},
        "test_dataset": None,
        "train_size": 50,
        "label_noise": 0.0,
        "input_noise": 0.0,
        "scaling": "standardize",
        "shuffle": True,
    },
    "model": {
        "arch": "mlp",
        "hidden": [4],
        "activation": "tanh",
        "norm": "batch",
        "norm_position": "before_activation",
        "dropout": [0.1],
        "init": {"weights": "normal", "std": 0.1, "bias": 0.0},
        "channels": [4],
    },
    "optimizer": {
        "name": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.0,
    },
    "schedule": {
        "name": "cosine",
        "warmup_epochs": 0,
        "step_epochs": 1,
        "gamma": 0.5,
        "min_lr": 0.001,
        "patience": 1,
    },
    "regularization": {
        "l2": 0.001,
        "gradient_noise": {"c": 0.01, "r": 0.55},
        "early_stopping": {"patience": 2, "min_delta": 0.0},
        "grad_clip": 5.0,
    },
    "batch_size": 16,
    "epochs": 2,
    "curriculum": [
        {"epochs": 1, "label_noise": 0.0, "input_noise": 0.0, "fraction": 0.5, "lr": 0.1},
        {"epochs": 1},
    ],
    "checkpoints": {"every_epochs": 1, "keep_best": True},
    "analysis": {
        "hessian": {
            "every_epochs": 0,
            "top_k": 2,
            "bottom_k": 1,
            "trace": True,
            "density": False,
            "samples": 32,
            "enabled": True,
        },
        "probes": False,
        "diagnostics": True,
    },
    "resources": {"device": "cpu", "max_minutes": 1, "cuda_graphs": False},
}
SMALL = tiny_spec(name="fuzz-small", epochs=1)
SWEEP = {
    "name": "fuzz",
    "base": SMALL,
    "space": {
        "optimizer.lr": {"type": "loguniform", "low": 0.001, "high": 0.1},
        "batch_size": {"type": "int", "low": 8, "high": 16, "step": 8},
        "model.hidden": {"type": "choice", "values": [[4], [8]]},
    },
    "algorithm": "random",
    "objective": {"metric": "val/loss", "mode": "min", "at": "best"},
    "max_trials": 2,
    "max_concurrency": 1,
    "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0, "interval_steps": 1},
    "seed": 1,
}


def _bodies(ids: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    finetune = copy.deepcopy(FULL_SPEC) | {
        "init_from": {"job": ids["job_id"], "checkpoint": "best", "freeze": ["blocks.0"]}
    }
    return {
        ("post", "/v1/jobs"): {"spec": FULL_SPEC, "finetune": finetune},
        ("post", "/v1/jobs/{job_id}/remedy"): {"": {"findings": ["learning_rate.too_low"]}},
        ("post", "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/spectrum"): {
            "": {"top_k": 5, "bottom_k": 1, "trace": True, "density": False, "samples": 64}
        },
        ("post", "/v1/studies/batch-size-timing"): {"": {"spec": SMALL, "batch_sizes": [8, 16], "epochs": 1}},
        ("post", "/v1/sweeps"): {"": SWEEP},
        ("post", "/v1/studies/depth"): {
            "": {
                "name": "d",
                "base": SMALL,
                "depths": [1, [4, 4]],
                "width": 4,
                "max_concurrency": 1,
                "seed": 1,
            }
        },
        ("post", "/v1/studies/batch-size"): {
            "": {"name": "b", "base": SMALL, "batch_sizes": [8, 16], "max_concurrency": 1, "seed": 1}
        },
    }


QUERY_DEFAULTS = {
    "status": "queued",
    "name": "x",
    "verdict": "good_fit",
    "finding": "oscillation",
    "tag": "team:vision",
    "created_after": "2026-01-01T00:00:00Z",
    "created_before": "2030-01-01T00:00:00Z",
    "sort": "-summary.best_val_loss",
    "limit": "5",
    "ids": "{job_id},{job_id}",
    "split": "val",
    "step_min": "0",
    "step_max": "100",
    "max_points": "10",
    "trials_after": "-1",
    "trials_limit": "10",
}
# Filters GET /v1/jobs takes beyond its named parameters.
EXTRA_FILTERS = {
    "/v1/jobs": {
        "spec.optimizer.lr__lt": "0.1",
        "spec.data.shuffle": "true",
        "summary.best_val_loss__gte": "0.2",
        "spec.name__in": "a,b",
        "spec.tags.team": "vision",
    }
}


def _leaves(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths to every string, number and boolean in a JSON document (lists included)."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _leaves(v, (*prefix, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _leaves(v, (*prefix, i))]
    return [prefix] if doc is not None else []


def _set(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _url_part(value: Any) -> str:
    return quote(_text(value).encode("utf-8", "surrogatepass"), safe="")


def _targets() -> list[tuple[str, str, str, Any]]:
    """(method, path, kind, which) for every string or number an operation takes."""
    out = []
    for path, operations in app.openapi()["paths"].items():
        for method, op in operations.items():
            for param in op.get("parameters", []):
                if param["in"] in ("path", "query"):
                    out.append((method, path, param["in"], param["name"]))
            for name in EXTRA_FILTERS.get(path, {}) if method == "get" else ():
                out.append((method, path, "query", name))
            if path == "/v1/datasets" and method == "post":
                out += [(method, path, "form", name) for name in ("name", "label", "task")]
    # Body leaves are listed once the ids exist (see the ids fixture): their templates name them.
    return out


BODY_OPERATIONS = sorted(_bodies({"job_id": "0" * 32}))
BODY_TARGETS = [
    (method, path, f"body:{variant}", leaf)
    for method, path in BODY_OPERATIONS
    for variant, template in _bodies({"job_id": "0" * 32})[(method, path)].items()
    for leaf in _leaves(template)
]


@pytest.fixture(scope="module")
def fuzz(api_server: str, database: str):
    """A project of its own (everything it makes is cancelled at the end) and real ids to aim at."""
    from api.auth import create_token

    with session_scope() as session:
        token = create_token(session, FUZZ_PROJECT, "fuzz")[1]
    http = httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    job_id = http.post("/v1/jobs", json=tiny_spec(name="fuzz-target")).json()["id"]
    csv = "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))
    dataset_id = http.post("/v1/datasets", data={"name": "f"}, files={"file": ("f.csv", csv)}).json()["id"]
    sweep_id = http.post("/v1/sweeps", json=SWEEP).json()["id"]
    ids = {"job_id": job_id, "dataset_id": dataset_id, "sweep_id": sweep_id, "checkpoint_id": "1"}
    yield http, ids
    with session_scope() as session:
        project = session.scalars(select(Project.id).where(Project.name == FUZZ_PROJECT)).one()
    cancel_unfinished(Job.project_id == project)
    with session_scope() as session:
        session.execute(
            update(Sweep)
            .where(Sweep.project_id == project, Sweep.status == "running")
            .values(status="cancelled")
        )
    http.close()


def _send(http: httpx.Client, ids: dict[str, str], method: str, path: str, kind: str, which: Any, value: Any):  # noqa: ANN202
    params = {
        n: QUERY_DEFAULTS.get(n, "x").format(**ids)
        for n in [
            p["name"]
            for p in app.openapi()["paths"][path][method].get("parameters", [])
            if p["in"] == "query"
        ]
    }
    path_values = dict(ids)
    body: Any = None
    if kind == "path":
        path_values[which] = _url_part(value)
    elif kind == "query":
        params[which] = value
    url = path.format(**path_values)
    query = "&".join(f"{_url_part(k)}={_url_part(v)}" for k, v in params.items())
    full = f"{url}?{query}" if query else url
    if kind == "form":
        form = {"name": "f", "label": "label", "task": "auto"}
        form[which] = _text(value)
        files = {"file": ("f.csv", "a,b,label\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(12)))}
        encoded = {k: v.encode("utf-8", "surrogatepass") for k, v in form.items()}
        return http.post(full, data=encoded, files=files)
    if kind.startswith("body:"):
        template = _bodies(ids)[(method, path)][kind.removeprefix("body:")]
        body = _set(template, which, value)
    elif (method, path) in _bodies(ids):
        body = next(iter(_bodies(ids)[(method, path)].values()))
    content = None if body is None else json.dumps(body, allow_nan=True).encode()
    headers = {"Content-Type": "application/json"} if content is not None else {}
    return http.request(method.upper(), full, content=content, headers=headers)


@pytest.mark.parametrize(("method", "path", "kind", "which"), _targets() + BODY_TARGETS)
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(value=HOSTILE)
def test_no_hostile_value_gets_a_5xx(fuzz, method: str, path: str, kind: str, which: Any, value: Any) -> None:
    http, ids = fuzz
    r = _send(http, ids, method, path, kind, which, value)
    assert r.status_code < 500, (method, path, kind, which, repr(value)[:80], r.status_code, r.text[:300])
