"""The S3-compatible artifact backend against a real S3-speaking server on loopback (moto's server
mode, a separate process), and a job whose worker died resuming on a worker with another disk.

Workers on different machines share nothing but Postgres, Redis and the artifact store; here the
second worker has its own working directory, HOME, temp dir and local artifact folder, so the only
way it can resume is from the checkpoint its predecessor stored in the bucket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from models.artifacts import (
    ArtifactKeyError,
    LocalArtifactStore,
    S3ArtifactStore,
    get_store,
    key_for_checkpoint,
    key_for_dataset,
    key_for_escape_direction,
    store_from_settings,
)
from models.db import session_scope
from models.settings import Settings, get_settings
from models.tables import Checkpoint
from saddle import processes
from saddle.client import Client
from tests.conftest import RUN_ID, SERVICE_ENV, TMP
from tests.metric_expectations import metric_problems, updates_per_epoch
from tests.test_datasets import digits_npz
from tests.test_reliability import SLOW_SPEC

BUCKET = "saddle-test"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "saddle-test-key",
    "AWS_SECRET_ACCESS_KEY": "saddle-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
JOB_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto_server on a free loopback port with one bucket; AWS credentials in the environment."""
    port = processes.free_port()
    log = open(TMP / "moto.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_ENV.items():
            env.setenv(name, value)
        try:
            processes.wait_ready(f"{url}/moto-api/", timeout=60, process=proc)
            store = S3ArtifactStore(BUCKET, endpoint_url=url)
            store.client.create_bucket(Bucket=BUCKET)
            yield url
        finally:
            processes.stop(proc)
            log.close()


def s3_store(endpoint: str, prefix: str = f"run-{RUN_ID}") -> S3ArtifactStore:
    store = store_from_settings(Settings(artifacts_url=f"s3://{BUCKET}/{prefix}", s3_endpoint_url=endpoint))
    assert isinstance(store, S3ArtifactStore)
    return store


def object_names(store: S3ArtifactStore, under: str = "") -> list[str]:
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=store.prefix + under)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


# ----- the interface ----------------------------------------------------------------------------
def test_the_artifact_interface_against_s3(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint, f"iface-{RUN_ID}")
    keys = [
        key_for_checkpoint(JOB_ID, "periodic", 4),
        key_for_checkpoint(JOB_ID, "best", 3),
        key_for_escape_direction(JOB_ID, 17),
        key_for_dataset(JOB_ID, "npz"),
    ]
    for i, key in enumerate(keys):
        assert not store.exists(key)
        with pytest.raises(FileNotFoundError):
            store.get_bytes(key)
        assert store.put_bytes(key, bytes([i]) * (1000 + i)) == 1000 + i
        assert store.exists(key)
        assert store.get_bytes(key) == bytes([i]) * (1000 + i)
    # Object names are the prefix plus the id-derived key, nothing else.
    assert object_names(store) == sorted(f"iface-{RUN_ID}/{k}" for k in keys)

    assert store.put_bytes(keys[0], b"replaced") == 8  # a write replaces the object whole
    assert store.get_bytes(keys[0]) == b"replaced"
    assert store.put_bytes(keys[1], b"") == 0 and store.get_bytes(keys[1]) == b""

    store.delete(keys[0])
    store.delete(keys[0])  # deleting what is gone is fine, as on disk
    assert not store.exists(keys[0])
    for key in keys[1:]:
        store.delete(key)
    assert object_names(store) == []


def test_two_prefixes_in_one_bucket_keep_their_objects_apart(s3_endpoint: str) -> None:
    a, b = s3_store(s3_endpoint, f"a-{RUN_ID}"), s3_store(s3_endpoint, f"b-{RUN_ID}/nested")
    key = key_for_checkpoint(JOB_ID, "last", 9)
    a.put_bytes(key, b"from a")
    assert not b.exists(key)
    b.put_bytes(key, b"from b")
    assert (a.get_bytes(key), b.get_bytes(key)) == (b"from a", b"from b")
    a.delete(key)
    assert b.get_bytes(key) == b"from b"
    b.delete(key)


@pytest.mark.parametrize(
    "key",
    ["../x", "..", "/etc/passwd", "a/../../b", "%2e%2e/x", "a\\..\\b", "", "jobs//x", "~/.aws/credentials"],
)
def test_keys_that_would_leave_the_prefix_are_refused_before_any_request(s3_endpoint: str, key: str) -> None:
    store = s3_store(s3_endpoint)
    for call in (store.exists, store.get_bytes, store.delete, lambda k: store.put_bytes(k, b"x")):
        with pytest.raises(ArtifactKeyError):
            call(key)


def test_a_reader_sees_a_whole_object_never_part_of_a_write(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint)
    key = key_for_checkpoint(JOB_ID, "last", 1)
    size = 3 * 2**20
    payloads = (b"a" * size, b"b" * size)
    store.put_bytes(key, payloads[0])
    done = threading.Event()
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                data = store.get_bytes(key)
                seen.append(data[:1])
                if data not in payloads:
                    raise AssertionError(f"partial or mixed object: {len(data)} bytes")
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for i in range(12):
        store.put_bytes(key, payloads[i % 2])
    done.set()
    for t in readers:
        t.join(30)
    store.delete(key)
    assert not errors, errors[0]
    assert len(seen) > 2


def test_settings_choose_the_backend(s3_endpoint: str, tmp_path: Path) -> None:
    assert isinstance(store_from_settings(Settings(artifacts_url="", artifacts=tmp_path)), LocalArtifactStore)
    local = store_from_settings(Settings(artifacts_url=f"file://{tmp_path}/x"))
    assert isinstance(local, LocalArtifactStore) and local.root == (tmp_path / "x").resolve()
    s3 = s3_store(s3_endpoint, "p/q")
    assert (s3.bucket, s3.prefix) == (BUCKET, "p/q/")
    with pytest.raises(ValueError, match="SADDLE_ARTIFACTS_URL"):
        store_from_settings(Settings(artifacts_url="ftp://host/x"))
    with pytest.raises(ArtifactKeyError):
        store_from_settings(Settings(artifacts_url=f"s3://{BUCKET}/../up"))

    # get_store() reads the environment, as every API and worker process does.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SADDLE_ARTIFACTS_URL", f"s3://{BUCKET}/env-{RUN_ID}")
        env.setenv("SADDLE_S3_ENDPOINT_URL", s3_endpoint)
        get_settings.cache_clear()
        try:
            store = get_store()
            assert isinstance(store, S3ArtifactStore) and store.prefix == f"env-{RUN_ID}/"
            assert get_store() is store  # one client per process and configuration
        finally:
            get_settings.cache_clear()
    assert isinstance(get_store(), LocalArtifactStore)


# ----- a resumed job on another machine ---------------------------------------------------------
def machine_env(root: Path, endpoint: str, prefix: str, queue: str) -> dict[str, str]:
    """What one machine sees: its own disk, shared Postgres, Redis and bucket."""
    for sub in ("home", "tmp", "artifacts"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **SERVICE_ENV,
        **AWS_ENV,
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "SADDLE_ARTIFACTS": str(root / "artifacts"),
        "SADDLE_ARTIFACTS_URL": f"s3://{BUCKET}/{prefix}",
        "SADDLE_S3_ENDPOINT_URL": endpoint,
        "SADDLE_QUEUE": queue,
    }


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_a_job_whose_worker_died_resumes_on_a_worker_with_another_disk(
    s3_endpoint: str, token: str, tmp_path: Path
) -> None:
    prefix, queue = f"machines-{RUN_ID}", f"saddle-s3-{RUN_ID}"
    roots = {name: tmp_path / name for name in ("api", "a", "b")}
    envs = {name: machine_env(root, s3_endpoint, prefix, queue) for name, root in roots.items()}
    logs = {name: TMP / "logs" / f"s3-{name}.log" for name in roots}
    started: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        with contextlib.chdir(roots[name]):  # each process runs in its own working directory
            if name == "api":
                proc = processes.start_api(envs[name], api_port, logs[name])
            else:
                proc = processes.start_worker(envs[name], logs[name], concurrency=1, name=f"s3-{name}")
        started.append(proc)
        return proc

    api_port = processes.free_port()
    try:
        api = start("api")
        processes.wait_ready(f"http://127.0.0.1:{api_port}/healthz", process=api)
        worker_a = start("a")
        processes.wait_worker_ready(logs["a"], process=worker_a)
        sdk = Client(f"http://127.0.0.1:{api_port}", token)

        data_file = tmp_path / "digits.npz"
        data_file.write_bytes(digits_npz())
        dataset = sdk.upload_dataset(data_file, "digits over s3")
        spec = {**SLOW_SPEC, "name": "s3-resume", "data": {**SLOW_SPEC["data"], "dataset": dataset["id"]}}
        job = sdk.submit(spec)
        deadline = time.monotonic() + 120
        while (sdk.job(job["id"])["progress"] or {}).get("epoch", 0) < 5:
            assert time.monotonic() < deadline, "job did not reach epoch 5"
            time.sleep(0.2)
        os.killpg(worker_a.pid, signal.SIGKILL)  # the whole first machine's worker
        worker_a.wait(10)

        worker_b = start("b")
        processes.wait_worker_ready(logs["b"], process=worker_b)
        final = sdk.wait(job["id"], timeout=300)
        assert final["status"] == "succeeded", final["error"]
        assert final["attempts"] == 2
    finally:
        for proc in started:
            processes.stop(proc)

    resumed = [line for line in logs["b"].read_text().splitlines() if "attempt 2 resumes from epoch" in line]
    assert resumed, "the second worker did not resume from a checkpoint"

    store = s3_store(s3_endpoint, prefix)
    payload = store.get_bytes(key_for_dataset(dataset["id"], "npz"))
    assert payload == data_file.read_bytes()
    with session_scope() as session:
        checkpoints = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job["id"])).all()
        assert {c.kind for c in checkpoints} >= {"periodic", "best", "last"}
        for c in checkpoints:
            assert store.exists(c.artifact), c.artifact
        from worker.data import load_uploaded

        updates = updates_per_epoch(spec, load_uploaded("npz", payload, None, "classification"))
        problems, rows = metric_problems(session, job["id"], SLOW_SPEC["epochs"], updates)
    assert not problems, problems
    assert rows > SLOW_SPEC["epochs"] * updates
    assert object_names(store, f"jobs/{job['id']}/checkpoints/")
    # Nothing went to any machine's local artifact folder: the bucket is the only store.
    for name, root in roots.items():
        assert files_under(root / "artifacts") == [], name


def test_compose_wires_the_api_and_workers_to_minio() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parent.parent / "docker-compose.yml").read_text())
    services = compose["services"]
    minio, bucket_job = services["minio"], services["minio-bucket"]
    assert "healthcheck" in minio and bucket_job["depends_on"]["minio"]["condition"] == "service_healthy"
    user, secret = minio["environment"]["MINIO_ROOT_USER"], minio["environment"]["MINIO_ROOT_PASSWORD"]
    for name in ("api", "worker", "worker-cpu"):
        env = services[name]["environment"]
        settings = Settings(
            artifacts_url=env["SADDLE_ARTIFACTS_URL"], s3_endpoint_url=env["SADDLE_S3_ENDPOINT_URL"]
        )
        bucket = settings.artifacts_url.removeprefix("s3://").split("/")[0]
        assert settings.artifacts_url.startswith("s3://") and settings.s3_endpoint_url == "http://minio:9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (user, secret)
        assert f"mb --ignore-existing saddle/{bucket}" in " ".join(bucket_job["command"])
        assert services[name]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
