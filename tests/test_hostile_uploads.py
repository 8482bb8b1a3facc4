"""Issue 14, items 1 and 4: uploads are validated in linear time and bounded memory, without holding
a database connection, a few at a time; under the probe's load (8 NPZ bombs and 40 wide CSVs at
once) the API stays under its stated memory and another project's requests answer in under a
second. Against real API processes."""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import SERVICE_ENV, TMP
from tests.upload_payloads import npz_claiming, npz_of_zeros, wide_csv

# What the load below may add to the API process's peak resident memory (issue 14 asks for a stated
# bound; benchmarks/hostile.py measures the figure: see benchmarks/README.md).
MAX_RSS_GROWTH_MB = 250


def _upload(http: httpx.Client, payload: bytes, filename: str, name: str | None = None) -> httpx.Response:
    # Names are unique in a project: each upload gets its own unless the test names it.
    name = name or f"hostile-{uuid.uuid4().hex[:12]}"
    return http.post("/v1/datasets", data={"name": name}, files={"file": (filename, payload)})


@pytest.fixture(scope="module")
def api(api_server: str, token: str) -> httpx.Client:
    with httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        yield c


def test_a_header_of_100k_columns_costs_linear_time(api: httpx.Client) -> None:
    """It used to be quadratic: 142 s of one core for the header alone."""
    start = time.monotonic()
    r = _upload(api, wide_csv(100_000, 12), "wide.csv")
    assert r.status_code == 201, r.text
    assert r.json()["n_features"] == 99_999 and r.json()["n_rows"] == 12
    assert time.monotonic() - start < 60  # ~2 s here; generous for a busy CI machine


def test_an_npz_whose_header_lies_is_refused_before_anything_is_allocated(api: httpx.Client) -> None:
    r = _upload(api, npz_claiming(), "lie.npz")
    assert r.status_code == 422, r.text
    assert "claims shape (10000000, 1000000)" in r.json()["detail"] and "holds 0 bytes" in r.json()["detail"]


def test_an_npz_of_zeros_is_validated_as_it_streams(api: httpx.Client) -> None:
    r = _upload(api, npz_of_zeros(), "zeros.npz")
    assert r.status_code == 201, r.text
    assert (r.json()["n_rows"], r.json()["n_features"]) == (125_000, 1_000)


def test_nul_in_upload_fields_is_422(api: httpx.Client) -> None:
    r = api.post("/v1/datasets", data={"name": "a\x00b"}, files={"file": ("x.csv", wide_csv(3, 12))})
    assert r.status_code == 422 and r.json()["detail"].startswith("name: contains a NUL"), r.text


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@pytest.fixture(scope="module")
def own_api(database: str, token: str):
    """An API process of this module's own, so its memory is this test's alone to measure."""
    from saddle import processes

    port = processes.free_port()
    proc = processes.start_api({**os.environ, **SERVICE_ENV}, port, TMP / "logs" / "api-hostile.log")
    url = f"http://127.0.0.1:{port}"
    processes.wait_ready(f"{url}/healthz", process=proc)
    yield url, proc.pid
    processes.stop(proc)


def test_the_probes_load_leaves_memory_bounded_and_other_projects_answering(
    own_api: tuple[str, int], token: str, other_token: str
) -> None:
    url, pid = own_api
    bomb, csv = npz_of_zeros(), wide_csv(20_000, 3)
    hostile = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300)
    other = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {other_token}"}, timeout=30)
    for _ in range(3):  # warm: imports, the pool, the first parse
        assert other.get("/v1/jobs").status_code == 200
    assert _upload(hostile, csv, "warm.csv").status_code == 422  # 3 rows: too few, after a full parse
    baseline = _rss_kb(pid, "VmRSS")

    latencies: list[float] = []
    statuses: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            start = time.monotonic()
            statuses.append(other.get("/v1/jobs", params={"limit": 5}).status_code)
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    payloads = [(bomb, "bomb.npz")] * 8 + [(csv, "wide.csv")] * 40
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        answers = list(pool.map(lambda p: _upload(hostile, *p).status_code, payloads))
    done.set()
    watcher.join()
    peak_growth_mb = (_rss_kb(pid, "VmHWM") - baseline) / 1024
    print(
        f"\nhostile load: uploads {sorted(set(answers))}, other project {len(latencies)} requests, "
        f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms, "
        f"API peak RSS +{peak_growth_mb:.0f} MB"
    )
    assert all(s < 500 for s in answers), answers  # 201 bombs, 422 three-row CSVs, or 503 busy
    assert answers.count(201) == 8
    assert set(statuses) == {200}
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    assert peak_growth_mb < MAX_RSS_GROWTH_MB
