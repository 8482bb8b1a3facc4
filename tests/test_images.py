"""Issue 16, data: image uploads (a ZIP of class folders, an MNIST-family IDX pair, CIFAR binary),
datasets by name, and data.augment. Every file is made here with Pillow and numpy; uploads go
through the API, training through the real worker."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import create_engine, select, text

from migrations import run_upgrade
from models.artifacts import get_store
from models.db import session_scope
from models.spec import JobSpec
from models.tables import Dataset, Job, utcnow
from saddle.client import Client
from tests.conftest import create_database, drop_database
from tests.upload_payloads import idx_claiming, png_declaring, zip_declaring, zip_of
from worker.augment import Augmenter, random_crop, random_hflip
from worker.data import load_builtin, load_uploaded, prepare
from worker.recorders import MemoryRecorder
from worker.training import Trainer

CPU = torch.device("cpu")
SIZE = 16


# ----- files made here ------------------------------------------------------------------------
def _png(pixels: np.ndarray, mode: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, "PNG")
    return out.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=95)
    return out.getvalue()


def class_images(
    n_per_class: int, channels: int, size: int = SIZE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size[, 3]) uint8 images of two learnable classes: class 0 bright on the left half,
    class 1 on the right, with noise; and their labels."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, 3)
    images, labels = [], []
    for label in (0, 1):
        for _ in range(n_per_class):
            pixels = rng.integers(0, 60, shape).astype(np.uint8)
            half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
            pixels[:, half] += 150
            images.append(pixels)
            labels.append(label)
    return np.stack(images), np.array(labels)


def image_folder_zip(n_per_class: int = 12) -> tuple[bytes, np.ndarray]:
    """cat/ and dog/ (PNG and JPEG) under one top folder, plus what macOS adds; and the pixels of the
    PNG cats as they must come back (N×C×H×W)."""
    images, labels = class_images(n_per_class, 3)
    members: dict[str, bytes] = {}
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        cls = ("cat", "dog")[label]
        as_jpeg = label == 1 and i % 2 == 1  # some dogs are JPEGs (lossy: only the cats are compared)
        suffix = "jpg" if as_jpeg else "png"
        members[f"pets/{cls}/{i:03d}.{suffix}"] = _jpeg(pixels) if as_jpeg else _png(pixels, "RGB")
    members["__MACOSX/pets/cat/._000.png"] = b"resource fork"
    members["pets/.DS_Store"] = b"finder"
    return zip_of(members), images[:n_per_class].transpose(0, 3, 1, 2)


def idx_pair_zip(n: int = 40) -> tuple[bytes, np.ndarray, np.ndarray]:
    """MNIST's layout: gzipped images (N×16×16) and plain labels, named as MNIST names them."""
    images, labels = class_images(n // 2, 1)
    header = b"\x00\x00\x08\x03" + struct.pack(">III", len(images), SIZE, SIZE)
    label_file = b"\x00\x00\x08\x01" + struct.pack(">I", len(labels)) + labels.astype(np.uint8).tobytes()
    payload = zip_of(
        {
            "train-images-idx3-ubyte.gz": gzip.compress(header + images.tobytes()),
            "train-labels-idx1-ubyte": label_file,
        }
    )
    return payload, images, labels


def cifar_bin(n: int = 40, fine: bool = False) -> tuple[bytes, np.ndarray, np.ndarray]:
    """CIFAR binary records: [coarse,] label, 1024 red, 1024 green, 1024 blue bytes."""
    images, labels = class_images(n // 2, 3, size=32)
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # channel-major, as CIFAR stores
    heads = [labels[:, None].astype(np.uint8)]
    if fine:
        heads.insert(0, np.zeros((len(labels), 1), np.uint8))  # the coarse label
    return np.concatenate([*heads, planes], axis=1).tobytes(), planes.reshape(-1, 3, 32, 32), labels


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def upload(http, payload: bytes, filename: str, name: str | None = None, **form: str):  # noqa: ANN001, ANN201
    data = {"name": name or unique("img"), **form}
    return http.post("/v1/datasets", files={"file": (filename, payload)}, data=data)


def stored_arrays(dataset_id: str) -> dict[str, np.ndarray]:
    with np.load(
        io.BytesIO(get_store().get_bytes(f"datasets/{dataset_id}/images.npz")), allow_pickle=False
    ) as npz:
        return {k: npz[k] for k in npz.files}


# ----- decoding at upload ---------------------------------------------------------------------
def test_an_image_folder_zip_is_decoded_with_classes_and_channel_statistics(client: TestClient) -> None:
    payload, cats = image_folder_zip()
    r = upload(client, payload, "pets.zip")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["format"], ds["n_rows"], ds["n_features"], ds["task"]) == (
        "images",
        24,
        3 * 16 * 16,
        "classification",
    )
    assert ds["input_shape"] == [3, 16, 16]
    info = ds["image_info"]
    assert info["source"] == "image_folder" and info["classes"] == ["cat", "dog"]  # __MACOSX skipped
    arrays = stored_arrays(ds["id"])
    assert arrays["X"].dtype == np.uint8 and arrays["X"].shape == (24, 3, 16, 16)
    np.testing.assert_array_equal(arrays["X"][:12], cats)  # PNGs are lossless
    assert arrays["y"].tolist() == [0] * 12 + [1] * 12
    X = arrays["X"].astype(np.float64)
    np.testing.assert_allclose(info["mean"], X.mean(axis=(0, 2, 3)), atol=1e-3)
    np.testing.assert_allclose(info["std"], X.std(axis=(0, 2, 3)), atol=1e-3)


def test_an_idx_pair_and_cifar_binary_are_decoded(client: TestClient) -> None:
    payload, images, labels = idx_pair_zip()
    ds = upload(client, payload, "mnist.zip").json()
    assert ds["format"] == "images" and ds["input_shape"] == [1, 16, 16], ds
    assert ds["image_info"]["source"] == "idx" and ds["image_info"]["classes"] == ["0", "1"]
    arrays = stored_arrays(ds["id"])
    np.testing.assert_array_equal(arrays["X"][:, 0], images)
    np.testing.assert_array_equal(arrays["y"], labels)

    payload, planes, labels = cifar_bin()
    ds = upload(client, payload, "data_batch_1.bin").json()
    assert ds["input_shape"] == [3, 32, 32] and ds["image_info"]["source"] == "cifar10", ds
    assert ds["image_info"]["classes"][:2] == ["airplane", "automobile"]
    arrays = stored_arrays(ds["id"])
    np.testing.assert_array_equal(arrays["X"], planes)
    np.testing.assert_array_equal(arrays["y"], labels)

    payload, _, labels = cifar_bin(fine=True)
    ds = upload(client, zip_of({"cifar-100-binary/train.bin": payload}), "c100.zip").json()
    assert ds["image_info"]["source"] == "cifar100" and len(ds["image_info"]["classes"]) == 100, ds
    assert ds["task"] == "classification"  # 100 classes: auto would call that many labels regression


def _names_with(name: str) -> int:
    with session_scope() as session:
        return len(session.scalars(select(Dataset.id).where(Dataset.name == name)).all())


@pytest.mark.parametrize(
    ("payload", "filename", "message"),
    [
        (
            zip_of({"cat/a.png": png_declaring(5000, 5000), "dog/b.png": png_declaring(4, 4)}),
            "z.zip",
            "5000×5000",
        ),
        (
            zip_of({"cat/a.png": png_declaring(40000, 40000), "dog/b.png": png_declaring(4, 4)}),
            "z.zip",
            "pixels",
        ),
        (zip_declaring(3_000_000_000), "z.zip", "expands to 3,000,000,000 bytes"),
        (idx_claiming(), "mnist.zip", "decode to 100,000,000,000,000 bytes"),
        (pickle.dumps({"data": [0], "labels": [0]}, protocol=2), "data_batch_1", "pickle"),
        (
            zip_of({"cifar-10-batches-py/data_batch_1": pickle.dumps({"x": 1}, protocol=2)}),
            "py.zip",
            "pickle",
        ),
        (cifar_bin()[0][:-7], "data_batch_1.bin", "not a whole number of CIFAR-10 binary records"),
        (
            zip_of(
                {
                    "cat/a.png": _png(np.zeros((16, 16), np.uint8), "L"),
                    "dog/b.png": _png(np.zeros((8, 16), np.uint8), "L"),
                }
            ),
            "z.zip",
            "'dog/b.png' is 16×8; the first image is 16×16",
        ),
        (zip_of({"a.png": _png(np.zeros((4, 4), np.uint8), "L")}), "z.zip", "not in a class folder"),
        (
            zip_of({"cat/a.png": b"not a png", "dog/b.png": b"nor this"}),
            "z.zip",
            "not a readable PNG or JPEG",
        ),
        (_png(np.zeros((4, 4), np.uint8), "L"), "a.png", "a single image"),
    ],
)
def test_bad_image_uploads_are_422_and_leave_nothing(
    client: TestClient, payload: bytes, filename: str, message: str
) -> None:
    name = unique("bad")
    r = upload(client, payload, filename, name=name)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"] and r.json()["detail"].startswith("file:")
    assert _names_with(name) == 0


def test_zip_member_names_never_become_paths(client: TestClient, tmp_path: Path) -> None:
    """A member named ../../x is skipped (a dot-folder), never written anywhere."""
    images, _ = class_images(6, 1)
    escape = tmp_path / "escaped"
    members = {f"{('a', 'b')[i // 6]}/{i}.png": _png(px, "L") for i, px in enumerate(images)}
    members[f"../../..{escape}/evil.png"] = _png(images[0], "L")
    ds = upload(client, zip_of(members), "z.zip").json()
    assert ds["image_info"]["classes"] == ["a", "b"] and ds["n_rows"] == 12, ds
    assert not escape.exists()


# ----- names ----------------------------------------------------------------------------------
def test_names_resolve_to_ids_and_collisions_are_refused(client: TestClient) -> None:
    name, test_name = unique("scans"), unique("scans-test")
    ds = upload(client, idx_pair_zip()[0], "m.zip", name=name).json()
    held_out = upload(client, idx_pair_zip(20)[0], "t.zip", name=test_name).json()

    taken = upload(client, idx_pair_zip()[0], "m.zip", name=name)
    assert taken.status_code == 409 and taken.json()["detail"].startswith(f"name: '{name}' is already taken")
    builtin = upload(client, idx_pair_zip()[0], "m.zip", name="blobs")
    assert builtin.status_code == 422 and "'blobs' is a built-in dataset's name" in builtin.json()["detail"]
    id_like = upload(client, idx_pair_zip()[0], "m.zip", name="0" * 32)
    assert id_like.status_code == 422 and "reads as a dataset id" in id_like.json()["detail"]

    spec = {
        "data": {"dataset": name, "test_dataset": test_name},
        "model": {"arch": "cnn", "channels": [4], "hidden": [8]},
        "epochs": 1,
        "analysis": {"hessian": {"enabled": False}},
    }
    job = client.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    client.post(f"/v1/jobs/{job.json()['id']}/cancel")
    stored = client.get(f"/v1/jobs/{job.json()['id']}").json()["spec"]["data"]
    assert (stored["dataset"], stored["test_dataset"]) == (ds["id"], held_out["id"])  # ids only
    by_id = client.post("/v1/jobs", json={**spec, "data": {"dataset": ds["id"]}})
    assert by_id.status_code == 201, by_id.text
    client.post(f"/v1/jobs/{by_id.json()['id']}/cancel")

    unknown = client.post("/v1/jobs", json={**spec, "data": {"dataset": "no-such-scans"}})
    assert unknown.status_code == 422
    assert unknown.json()["detail"].startswith("data.dataset: no uploaded dataset named 'no-such-scans'")
    unknown = client.post("/v1/jobs", json={**spec, "data": {"dataset": name, "test_dataset": "nope"}})
    assert unknown.status_code == 422 and unknown.json()["detail"].startswith("data.test_dataset:")
    # An unfinished job that named the upload by name holds it: the row names its id, which deletion
    # reads. A row of its own, never enqueued and with a fresh heartbeat, so that no worker or reaper
    # of the session takes it up and ends it under the test.
    with session_scope() as session:
        submitted = session.get(Job, job.json()["id"])
        holder = Job(
            project_id=submitted.project_id, spec=submitted.spec, status="running", heartbeat_at=utcnow()
        )
        session.add(holder)
        session.flush()
        holder_id = holder.id
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 409
    with session_scope() as session:
        session.get(Job, holder_id).status = "cancelled"


def test_a_sweep_stores_upload_ids_for_its_base_and_its_space(client: TestClient) -> None:
    base_name, other_name = unique("sweep-base"), unique("sweep-other")
    base = upload(client, idx_pair_zip()[0], "m.zip", name=base_name).json()
    other = upload(client, idx_pair_zip(20)[0], "m.zip", name=other_name).json()
    spec = {
        "data": {"dataset": base_name},
        "model": {"arch": "cnn", "channels": [4], "hidden": [8]},
        "epochs": 1,
        "analysis": {"hessian": {"enabled": False}},
    }
    space = {"data.test_dataset": {"type": "choice", "values": [base_name, other_name]}}
    r = client.post("/v1/sweeps", json={"name": "names", "base": spec, "space": space, "algorithm": "grid"})
    assert r.status_code == 201, r.text
    client.post(f"/v1/sweeps/{r.json()['id']}/cancel")
    with session_scope() as session:
        stored = [
            job.spec["data"] for job in session.scalars(select(Job).where(Job.sweep_id == r.json()["id"]))
        ]
    assert sorted((d["dataset"], d["test_dataset"]) for d in stored) == sorted(
        [(base["id"], base["id"]), (base["id"], other["id"])]
    )
    space = {"data.test_dataset": {"type": "choice", "values": [base_name, "no-such-name"]}}
    r = client.post("/v1/sweeps", json={"name": "names", "base": spec, "space": space, "algorithm": "grid"})
    assert r.status_code == 422 and "no uploaded dataset named 'no-such-name'" in r.json()["detail"], r.text


# ----- data.augment ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"dataset": "iris", "augment": {"hflip": True}}, "data.augment", "iris is not an image dataset"),
        ({"dataset": "digits", "augment": {"random_crop": 8}}, "data.augment.random_crop", "below 8"),
        ({"dataset": "digits", "augment": {"rotate": 10}}, "data.augment.rotate", "Extra inputs"),
        (
            {"dataset": "digits", "augment": {"random_crop": 65}},
            "data.augment.random_crop",
            "less than or equal",
        ),
        ({"dataset": "digits", "augment": {"hflip": "sometimes"}}, "data.augment.hflip", "boolean"),
    ],
)
def test_augment_is_validated_at_submission(client: TestClient, data: dict, field: str, message: str) -> None:
    r = client.post("/v1/jobs", json={"data": data, "epochs": 1})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field) and message in r.json()["detail"], r.json()["detail"]


def test_augment_on_an_uploaded_table_is_422(client: TestClient) -> None:
    csv = "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))
    name = unique("table")
    assert upload(client, csv.encode(), "t.csv", name=name).status_code == 201
    r = client.post("/v1/jobs", json={"data": {"dataset": name, "augment": {"hflip": True}}, "epochs": 1})
    assert r.status_code == 422 and r.json()["detail"].startswith("data.augment: dataset"), r.text


def test_crops_and_flips_move_pixels_as_drawn() -> None:
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1.0  # one bright pixel in the middle
    gen = torch.Generator().manual_seed(0)
    crops = random_crop(image.repeat(64, 1, 1, 1), 2, gen)
    assert crops.shape == (64, 1, 5, 5)
    positions = {tuple(torch.nonzero(c[0]).flatten().tolist()) for c in crops}
    assert len(positions) > 10 and all(0 <= r < 5 and 0 <= c < 5 for r, c in positions)  # shifted by ±2
    flipped = random_hflip(
        torch.arange(6.0).view(1, 1, 2, 3).repeat(32, 1, 1, 1), torch.Generator().manual_seed(0)
    )
    rows = {tuple(f[0, 0].tolist()) for f in flipped}
    assert rows == {(0.0, 1.0, 2.0), (2.0, 1.0, 0.0)}


def test_augmentation_is_a_function_of_seed_and_step() -> None:
    spec = JobSpec.model_validate(
        {"data": {"dataset": "digits", "augment": {"random_crop": 2, "hflip": True}}}
    )
    X = torch.randn(32, 64)
    same = Augmenter(spec.data.augment, (1, 8, 8), seed=3)
    assert torch.equal(same(X, 5), Augmenter(spec.data.augment, (1, 8, 8), seed=3)(X, 5))
    assert not torch.equal(same(X, 5), same(X, 6))
    assert not torch.equal(same(X, 5), Augmenter(spec.data.augment, (1, 8, 8), seed=4)(X, 5))


AUGMENTED = {
    "data": {"dataset": "digits", "augment": {"random_crop": 2, "hflip": True}, "train_size": 300},
    "model": {"arch": "cnn", "channels": [4], "hidden": [16]},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "epochs": 4,
    "checkpoints": {"every_epochs": 2},
    "analysis": {"hessian": {"enabled": False}},
}


def _trainer(spec: dict, recorder: MemoryRecorder) -> Trainer:
    js = JobSpec.model_validate(spec)
    raw = load_builtin(js.data.dataset, js.data.params, js.seed)
    return Trainer(js, prepare(js.data, raw, js.seed), recorder, CPU)


def _final(rec: MemoryRecorder) -> dict[str, float]:
    last = rec.points[-1].step
    return {p.name: p.value for p in rec.points if p.step == last and not p.name.startswith("time/")}


def test_augmented_training_is_reproducible_and_exact_across_a_resume() -> None:
    full, again, plain = MemoryRecorder(), MemoryRecorder(), MemoryRecorder()
    trainer = _trainer(AUGMENTED, full)
    summary = trainer.fit()
    _trainer(AUGMENTED, again).fit()
    assert _final(full) == _final(again)
    _trainer({**AUGMENTED, "data": {**AUGMENTED["data"], "augment": None}}, plain).fit()
    assert _final(full) != _final(plain)  # the augmentation did change what was trained on
    assert summary["data"]["augment"] == {"random_crop": 2, "hflip": True}

    interrupted = MemoryRecorder(stop_after_epoch=3)
    with pytest.raises(Exception, match="interrupted"):
        _trainer(AUGMENTED, interrupted).fit()
    payload = [c for c in interrupted.checkpoints if c[0] == "periodic"][-1][4]
    resumed_rec = MemoryRecorder()
    resumed = _trainer(AUGMENTED, resumed_rec)
    resumed.restore(payload)
    resumed.fit()
    assert _final(resumed_rec) == _final(full)


def test_uploaded_images_load_as_normalized_channel_major_rows(client: TestClient) -> None:
    payload, planes, labels = cifar_bin()
    ds = upload(client, payload, "data_batch_1.bin").json()
    with session_scope() as session:
        artifact = session.get(Dataset, ds["id"]).artifact
    raw = load_uploaded("images", get_store().get_bytes(artifact), None, "classification")
    assert raw.input_shape == (3, 32, 32) and raw.X.shape == (40, 3072) and raw.n_classes == 10
    channels = raw.X.reshape(40, 3, 32, 32)
    np.testing.assert_allclose(channels.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(channels.std(axis=(0, 2, 3)), 1.0, atol=1e-3)
    mean, std = ds["image_info"]["mean"], ds["image_info"]["std"]
    np.testing.assert_allclose(channels[3, 1] * std[1] + mean[1], planes[3, 1], atol=0.05)
    np.testing.assert_array_equal(raw.y, labels)


# ----- end to end: uploaded images trained by the real worker ---------------------------------
@pytest.mark.usefixtures("worker_process")
def test_uploaded_image_folder_idx_and_cifar_train_end_to_end(sdk: Client) -> None:
    folder, idx, cifar = unique("pets"), unique("digits-idx"), unique("cifar")
    assert upload(sdk.http, image_folder_zip()[0], "pets.zip", name=folder).status_code == 201
    assert upload(sdk.http, idx_pair_zip()[0], "mnist.zip", name=idx).status_code == 201
    assert upload(sdk.http, cifar_bin()[0], "data_batch_1.bin", name=cifar).status_code == 201
    common = {
        "model": {"arch": "cnn", "channels": [4], "hidden": [8]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "batch_size": 8,
        "epochs": 2,
        "analysis": {"hessian": {"enabled": False}, "probes": False},
    }
    jobs = {
        folder: sdk.submit(
            {
                "name": "e2e-folder",
                "data": {"dataset": folder, "augment": {"random_crop": 2, "hflip": True}},
                **common,
            }
        ),
        idx: sdk.submit({"name": "e2e-idx", "data": {"dataset": idx}, **common}),
        cifar: sdk.submit(
            {"name": "e2e-cifar", "data": {"dataset": cifar, "augment": {"hflip": True}}, **common}
        ),
    }
    for name, job in jobs.items():
        done = sdk.wait(job["id"], timeout=240)
        assert done["status"] == "succeeded", (name, done["error"])
        facts = done["summary"]["data"]
        assert facts["dataset_name"] == name and facts["images"]["n_classes"] >= 2
        assert facts["n_features"] == facts["images"]["shape"][0] * facts["images"]["shape"][1] ** 2
    facts = sdk.job(jobs[folder]["id"])["summary"]["data"]
    assert facts["augment"] == {"random_crop": 2, "hflip": True}
    assert facts["images"]["classes"] == ["cat", "dog"]


# ----- migration 0007: older same-named uploads ----------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0007_keeps_older_duplicate_names_apart(backend: str, tmp_path: Path) -> None:
    name = f"saddle_names_{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / 'names.db'}" if backend == "sqlite" else create_database(name)
    engine = create_engine(url)
    try:
        run_upgrade(url, "0006_fair_scheduling")
        ids = [f"{i:x}" * 32 for i in (10, 11, 12)]
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO projects (id, name, created_at) VALUES ('p' , 'p', '2026-01-01')"))
            for i, dataset_id in enumerate(ids):
                conn.execute(
                    text(
                        "INSERT INTO datasets (id, project_id, name, format, sha256, artifact, n_rows, "
                        "n_features, task, size_bytes, created_at) VALUES (:id, 'p', 'scans', 'csv', 'h', "
                        f"'datasets/{dataset_id}/data.csv', 10, 1, 'regression', 1, :at)"
                    ),
                    {"id": dataset_id, "at": f"2026-01-0{i + 1}"},
                )
        run_upgrade(url, "0007_dataset_names")
        with engine.connect() as conn:
            names = dict(conn.execute(text("SELECT id, name FROM datasets")).all())
        assert names == {ids[0]: "scans", ids[1]: f"scans~{ids[1][:8]}", ids[2]: f"scans~{ids[2][:8]}"}
    finally:
        engine.dispose()
        if backend == "postgresql":
            drop_database(name)
