"""Uploaded datasets: validation over HTTP, project scoping, deletion rules, and jobs that train on
uploads end to end (real API process, real worker)."""

from __future__ import annotations

import csv
import hashlib
import io
import uuid

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits, load_iris

from api.auth import project_for_token
from api.services import datasets as svc
from models.artifacts import get_store
from models.db import session_scope
from models.spec import JobSpec
from models.tables import Job
from saddle.client import Client
from worker.data import load_uploaded, prepare, split_indices
from worker.recorders import MemoryRecorder
from worker.training import Trainer

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]


def iris_csv(rows: slice = slice(None)) -> bytes:
    """sklearn's iris in its own (species-sorted) order, label column "species"."""
    iris = load_iris()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(IRIS_COLUMNS)
    for x, y in zip(iris.data[rows], iris.target[rows], strict=True):
        writer.writerow([*x, y])
    return out.getvalue().encode()


def digits_npz() -> bytes:
    digits = load_digits()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=digits.images.astype(np.float32), y=digits.target)
    return buffer.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(http, payload: bytes, filename: str, **form: str):  # noqa: ANN001, ANN201
    # Names are unique in a project (a spec may use them): each upload here gets its own.
    name = f"t-{uuid.uuid4().hex[:12]}"
    return http.post("/v1/datasets", files={"file": (filename, payload)}, data={"name": name, **form})


def table(rows: list[list[str]]) -> bytes:
    return "\n".join(",".join(r) for r in rows).encode()


def small_csv(bad_row: int | None = None, value: str = "nan") -> bytes:
    """12 rows: a, b, label; ``bad_row`` (1-based) gets ``value`` in column b."""
    rows = [["a", "b", "label"]]
    for i in range(1, 13):
        rows.append([str(i), value if i == bad_row else str(i * 2), str(i % 2)])
    return table(rows)


# ----- validation ------------------------------------------------------------------------------
def test_csv_upload_is_stored_hashed_listed_and_scoped(client: TestClient, other_token: str) -> None:
    payload = iris_csv()
    response = upload(client, payload, "iris.csv", label="species")
    assert response.status_code == 201, response.text
    ds = response.json()
    assert (ds["format"], ds["n_rows"], ds["n_features"], ds["task"]) == ("csv", 150, 4, "classification")
    assert ds["sha256"] == hashlib.sha256(payload).hexdigest() and ds["size_bytes"] == len(payload)
    assert ds["label"] == "species" and ds["input_shape"] is None
    assert client.get(f"/v1/datasets/{ds['id']}").json()["sha256"] == ds["sha256"]
    assert ds["id"] in [d["id"] for d in client.get("/v1/datasets").json()]
    key = f"datasets/{ds['id']}/data.csv"
    assert get_store().get_bytes(key) == payload

    other = TestClient(client.app, headers={"Authorization": f"Bearer {other_token}"})
    assert other.get(f"/v1/datasets/{ds['id']}").status_code == 404
    assert other.delete(f"/v1/datasets/{ds['id']}").status_code == 404
    assert ds["id"] not in [d["id"] for d in other.get("/v1/datasets").json()]
    assert TestClient(client.app).get("/v1/datasets").status_code == 401


@pytest.mark.parametrize(
    ("payload", "form", "message"),
    [
        (small_csv(4, "nan"), {"label": "label"}, "row 4 (line 5), column 'b': nan"),
        (small_csv(7, "-inf"), {"label": "label"}, "row 7 (line 8), column 'b': -inf"),
        (small_csv(3, "abc"), {"label": "label"}, "row 3 (line 4), column 'b': 'abc' is not a number"),
        (small_csv(), {"label": "species"}, "label: column 'species' is not in the CSV header"),
        (iris_csv(), {}, "label: no column named label, target, y in the CSV header"),
        (table([["a", "label"], *[["1", "0"]] * 5]), {"label": "label"}, "5 data rows; at least 10"),
        (table([["label"], *[[str(i % 2)] for i in range(12)]]), {"label": "label"}, "feature column"),
        (table([["a", "b", "label"], ["1", "2"]]), {"label": "label"}, "row 1 (line 2) has 2 fields"),
        (small_csv(), {"label": "label", "task": "nope"}, "task"),
        (b"\xff\xfe\x00a", {"label": "label"}, "not UTF-8"),
        (b"", {"label": "label"}, "empty"),
    ],
)
def test_bad_csv_uploads_are_refused_naming_the_problem(
    client: TestClient, payload: bytes, form: dict[str, str], message: str
) -> None:
    response = upload(client, payload, "bad.csv", **form)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_bad_npz_uploads_are_refused_naming_the_problem(client: TestClient) -> None:
    X = np.ones((12, 3), np.float32)
    y = np.arange(12) % 2
    X_nan = X.copy()
    X_nan[4, 2] = np.nan
    cases = [
        (npz(X=X), "lacks array(s) ['y']"),
        (npz(X=X_nan, y=y), "X row 5, column 3: nan"),
        (npz(X=X, y=np.where(y == 1, np.inf, 0.0)), "y row 2: inf"),
        (npz(X=np.array([object()] * 12), y=y), "unreadable NPZ"),  # would need pickle to load
        (npz(X=X, y=y[:5]), "one label per row"),
        (npz(X=X[:5], y=y[:5]), "5 data rows"),
        (b"PK\x03\x04 not really a zip", "not a valid NPZ"),
    ]
    for payload, message in cases:
        response = upload(client, payload, "bad.npz")
        assert response.status_code == 422, (message, response.text)
        assert message in response.json()["detail"]


def test_an_upload_over_the_dataset_cap_is_413(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(svc, "MAX_DATASET_BYTES", 1000)
    response = upload(client, iris_csv(), "iris.csv", label="species")
    assert response.status_code == 413 and "over the dataset limit of 1000" in response.json()["detail"]


def test_task_auto_rule_and_explicit_task() -> None:
    integers = np.array([0, 1, 2, 2, 1, 0], np.float64)
    assert svc.resolve_task("auto", integers) == "classification"
    assert svc.resolve_task("auto", np.arange(51.0)) == "regression"  # more than 50 distinct values
    assert svc.resolve_task("auto", integers + 0.5) == "regression"
    assert svc.resolve_task("regression", integers) == "regression"  # allowed, and diagnosed later
    with pytest.raises(svc.DatasetError, match="classification needs integer labels"):
        svc.resolve_task("classification", integers + 0.5)
    with pytest.raises(svc.DatasetError, match="same label"):
        svc.resolve_task("auto", np.zeros(12))


def test_npz_images_record_their_shape(client: TestClient) -> None:
    ds = upload(client, digits_npz(), "digits.npz").json()
    assert (ds["format"], ds["n_rows"], ds["n_features"]) == ("npz", 1797, 64)
    assert ds["input_shape"] == [1, 8, 8] and ds["task"] == "classification" and ds["label"] is None
    four_d = upload(client, npz(X=np.zeros((12, 3, 4, 5)), y=np.arange(12.0) / 7), "x.npz").json()
    assert four_d["input_shape"] == [3, 4, 5] and four_d["task"] == "regression"


def test_delete_removes_row_and_bytes_but_not_while_a_job_needs_them(client: TestClient, token: str) -> None:
    ds = upload(client, iris_csv(), "iris.csv", label="species").json()
    key = f"datasets/{ds['id']}/data.csv"
    spec = JobSpec.model_validate({"data": {"dataset": "iris", "test_dataset": ds["id"]}})
    with session_scope() as session:  # a queued job that no worker will pick up (never enqueued)
        job = Job(
            project_id=project_for_token(session, token).id,
            spec=spec.model_dump(mode="json"),
            status="queued",
        )
        session.add(job)
    refused = client.delete(f"/v1/datasets/{ds['id']}")
    assert refused.status_code == 409 and job.id in refused.json()["detail"]
    with session_scope() as session:
        session.get(Job, job.id).status = "cancelled"
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{ds['id']}").status_code == 404
    assert not get_store().exists(key)
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 404


def test_unshuffled_upload_trains_in_file_order() -> None:
    raw = load_uploaded("csv", iris_csv(), "species", "classification")
    splits = split_indices(raw, 0.2, 0.2, seed=0, stratify=True)
    for part in (splits.train, splits.val, splits.test):
        assert np.all(np.diff(part) > 0)  # sorted: every split keeps the file's order
    spec = JobSpec.model_validate({"data": {"dataset": "iris", "shuffle": False}, "epochs": 1})
    data = prepare(spec.data, raw, spec.seed)
    np.testing.assert_array_equal(data.X_train, raw.X[splits.train])
    trainer = Trainer(spec, data, MemoryRecorder(), torch.device("cpu"))
    assert trainer.batch_order(10).tolist() == list(range(10))


# ----- end to end: uploads as data.dataset and data.test_dataset -------------------------------
@pytest.mark.usefixtures("worker_process")
def test_jobs_train_on_uploaded_csv_and_npz(sdk: Client) -> None:
    train = upload(sdk.http, iris_csv(), "iris.csv", label="species").json()
    held_out = upload(sdk.http, iris_csv(slice(0, 150, 5)), "iris-test.csv", label="species").json()
    images = upload(sdk.http, digits_npz(), "digits.npz").json()
    common = {"epochs": 2, "analysis": {"hessian": {"enabled": False}}, "optimizer": {"name": "adam"}}
    tabular = sdk.submit(
        {
            "name": "upload-csv",
            "data": {
                "dataset": train["id"],
                "test_dataset": held_out["id"],
                "scaling": "standardize",
                "shuffle": False,
            },
            "model": {"hidden": [8]},
            **common,
        }
    )
    cnn = sdk.submit(
        {
            "name": "upload-npz-cnn",
            "data": {"dataset": images["id"], "scaling": "minmax"},
            "model": {"arch": "cnn", "channels": [4, 8], "hidden": [16]},
            "batch_size": 64,
            **common,
        }
    )
    done = sdk.wait(tabular["id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    info = done["summary"]["data"]
    assert info["n_test"] == 30 and info["n_features"] == 4 and info["n_classes"] == 3
    # Unshuffled, the rows stay in the file's species-sorted order: neighbours share a label.
    assert info["order"]["adjacent_same_label"] > 0.95
    done = sdk.wait(cnn["id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["summary"]["data"]["n_features"] == 64
    val = next(s for s in sdk.metrics(cnn["id"])["series"] if s["name"] == "val/loss")["values"]
    assert val[-1] < val[0]
