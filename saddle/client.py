"""A small typed client for the Saddle REST API, used by the CLI and importable from notebooks.

    from saddle.client import Client
    client = Client("http://127.0.0.1:8000", token)      # or Client.from_env()
    job = client.submit({"data": {"dataset": "digits"}, "epochs": 5})
    final = client.wait(job["id"])
    print(final["verdict"], [d["code"] for d in client.diagnoses(job["id"])])
    new = client.remedy(job["id"])["job"]                 # resubmit with the verdict's fix

Responses are the API's JSON as plain dicts (see ``/openapi.json`` for every field). Errors raise
``ApiError`` (the API answered 4xx/5xx; ``.status`` and ``.detail``) or ``Unreachable`` (no answer:
connection refused, DNS, timeout), so a script can tell "the request was wrong" from "try again".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

FINISHED = ("succeeded", "failed", "cancelled")
DEFAULT_API = "http://127.0.0.1:8000"
TOKEN_FILE = Path(".saddle/token")  # written by `saddle demo`

Json = dict[str, Any]


class ApiError(RuntimeError):
    """The API answered with an error status; ``detail`` is its readable message."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail

    @property
    def route_missing(self) -> bool:
        """True when the server has no such route at all (an older server), not a missing object."""
        return self.status in (404, 405) and self.detail in ("Not Found", "Method Not Allowed")


class Unreachable(RuntimeError):
    """No HTTP answer: the server is down, the address is wrong, or the request timed out."""


class Client:
    """One API base URL and one bearer token; a thin method per route.

    ``http`` is the underlying ``httpx.Client`` (base URL and token set) for routes without a method.
    """

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    @classmethod
    def from_env(cls, base_url: str | None = None, token: str | None = None) -> Client:
        """API from ``SADDLE_API_URL`` (default localhost:8000); token from ``SADDLE_TOKEN`` or the
        demo's ``.saddle/token``."""
        token = token or default_token()
        if not token:
            raise ValueError("no token: set SADDLE_TOKEN or run `saddle token create --project NAME`")
        return cls(base_url or os.environ.get("SADDLE_API_URL", DEFAULT_API), token)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach the API at {self.base_url}: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        # orjson: a 10,000-point series is ~300 KB of JSON, which the stdlib parser (httpx's
        # response.json()) takes 4-8 ms over and orjson about 1 ms.
        return orjson.loads(self._request(method, path, **kwargs).content)

    # ------------------------------------------------------------------------------------- jobs

    def submit(self, spec: Json, idempotency_key: str | None = None) -> Json:
        """POST /v1/jobs: queue a JobSpec; the same ``idempotency_key`` never makes two jobs."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=spec, headers=headers)

    def job(self, job_id: str) -> Json:
        """GET /v1/jobs/{id}: status, spec, progress (epoch, epochs, losses, ETA), summary, verdict."""
        return self._call("GET", f"/v1/jobs/{job_id}")

    def jobs(self, **filters: Any) -> Json:
        """GET /v1/jobs: one page ``{items, next_cursor}``; filters such as status, verdict, sweep,
        name, cursor, limit (None values are left out)."""
        return self._call("GET", "/v1/jobs", params={k: v for k, v in filters.items() if v is not None})

    def iter_jobs(self, limit: int | None = None, page_size: int = 100, **filters: Any) -> Iterator[Json]:
        """Newest first across pages, following ``next_cursor``, up to ``limit`` jobs (None: all)."""
        cursor, seen = None, 0
        while limit is None or seen < limit:
            size = page_size if limit is None else min(page_size, limit - seen)
            page = self.jobs(**filters, cursor=cursor, limit=size)
            for job in page["items"]:
                yield job
                seen += 1
            cursor = page.get("next_cursor")
            if not cursor or not page["items"]:
                return

    def cancel(self, job_id: str) -> Json:
        """POST /v1/jobs/{id}/cancel: a queued job never starts, a running one stops at its next step."""
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def metrics(
        self,
        job_id: str,
        name: str | list[str] | None = None,
        max_points: int = 2000,
        split: str | None = None,
        step_min: int | None = None,
        step_max: int | None = None,
        *,
        names: list[str] | None = None,
    ) -> Json:
        """GET /v1/jobs/{id}/metrics: ``{job_id, series: [{name, steps, epochs, values, ...}]}``,
        each series downsampled to ``max_points`` (bucket means with min/max envelopes).

        ``name`` is one series name or a list of them (default: every series), as the API's and the
        CLI's ``name``; ``names`` is the older spelling of the same argument."""
        wanted = name if name is not None else names
        params: dict[str, Any] = {
            "name": [wanted] if isinstance(wanted, str) else list(wanted or []),
            "max_points": max_points,
        }
        for key, value in (("split", split), ("step_min", step_min), ("step_max", step_max)):
            if value is not None:
                params[key] = value
        return self._call("GET", f"/v1/jobs/{job_id}/metrics", params=params)

    def spectra(self, job_id: str) -> list[Json]:
        """GET /v1/jobs/{id}/spectra: Hessian spectra at checkpoints (top/bottom eigenvalues, trace,
        density, critical-point class)."""
        return self._call("GET", f"/v1/jobs/{job_id}/spectra")

    def diagnoses(self, job_id: str) -> list[Json]:
        """GET /v1/jobs/{id}/diagnoses: the verdict first, then findings; each with evidence,
        recommendation and a JSON merge patch for the spec."""
        return self._call("GET", f"/v1/jobs/{job_id}/diagnoses")

    def checkpoints(self, job_id: str) -> list[Json]:
        """GET /v1/jobs/{id}/checkpoints: periodic, best (by validation loss) and last."""
        return self._call("GET", f"/v1/jobs/{job_id}/checkpoints")

    def remedy(self, job_id: str, findings: list[str] | None = None) -> Json:
        """POST /v1/jobs/{id}/remedy: resubmit with fixes applied; ``{job, applied, patch}``.
        ``findings`` picks which codes' patches to apply (default: the verdict's)."""
        body = {"findings": findings} if findings else None
        return self._call("POST", f"/v1/jobs/{job_id}/remedy", json=body)

    def remedies(self, job_id: str) -> Json:
        """GET /v1/jobs/{id}/remedies: the job compared with the remedies made from it."""
        return self._call("GET", f"/v1/jobs/{job_id}/remedies")

    def wait(
        self,
        job_id: str,
        on_progress: Callable[[Json], None] | None = None,
        poll_seconds: float = 0.5,
        timeout: float | None = None,
    ) -> Json:
        """Poll until the job finishes; ``on_progress`` sees every state read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll_seconds)

    # ----------------------------------------------------------------------------------- sweeps

    def create_sweep(self, config: Json, idempotency_key: str | None = None) -> Json:
        """POST /v1/sweeps: ``{name, base, space, algorithm, objective, max_trials, ...}``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/sweeps", json=config, headers=headers)

    def sweep(self, sweep_id: str, trials_after: int = -1, trials_limit: int | None = None) -> Json:
        """GET /v1/sweeps/{id}: status, progress, best, one page of trials, findings."""
        params: dict[str, Any] = {"trials_after": trials_after}
        if trials_limit is not None:
            params["trials_limit"] = trials_limit
        return self._call("GET", f"/v1/sweeps/{sweep_id}", params=params)

    def cancel_sweep(self, sweep_id: str) -> Json:
        """POST /v1/sweeps/{id}/cancel: no new trials; running ones are cancelled."""
        return self._call("POST", f"/v1/sweeps/{sweep_id}/cancel")

    def create_study(self, kind: str, body: Json, idempotency_key: str | None = None) -> Json:
        """POST /v1/studies/{kind}: ``depth`` or ``batch-size`` (a sweep: ``{id, ...}`` of
        GET /v1/sweeps/{id}) or ``batch-size-timing`` (a job of kind study)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", f"/v1/studies/{kind}", json=body, headers=headers)

    def sweeps(self, **filters: Any) -> Json:
        """GET /v1/sweeps: one page ``{items, next_cursor}``."""
        return self._call("GET", "/v1/sweeps", params={k: v for k, v in filters.items() if v is not None})

    # --------------------------------------------------------------------------------- datasets

    def upload_dataset(
        self, path: str | Path, name: str, label: str | None = None, task: str = "auto"
    ) -> Json:
        """POST /v1/datasets: a CSV (with ``label``, its label column) or an NPZ with X and y."""
        path = Path(path)
        data = {"name": name, "task": task} | ({"label": label} if label else {})
        with path.open("rb") as handle:
            return self._call("POST", "/v1/datasets", data=data, files={"file": (path.name, handle)})

    def datasets(self, limit: int = 100) -> list[Json]:
        """GET /v1/datasets: this project's uploaded datasets, newest first."""
        return self._call("GET", "/v1/datasets", params={"limit": limit})

    def dataset(self, dataset_id: str) -> Json:
        return self._call("GET", f"/v1/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # ---------------------------------------------------------------------------- observability

    def prometheus_metrics(self) -> str:
        """GET /metrics: the service's Prometheus text (job counts, queue depth, durations, workers)."""
        return self._request("GET", "/metrics").text


def default_token() -> str | None:
    """``SADDLE_TOKEN``, else the token ``saddle demo`` saved in ``.saddle/token``."""
    return token_and_source()[0]


def token_and_source(explicit: str | None = None) -> tuple[str | None, str]:
    """The token to send and where it came from (the CLI names it when the API refuses the token):
    ``explicit`` (the CLI's ``--token``), else ``SADDLE_TOKEN``, else the demo's ``.saddle/token``."""
    if explicit:
        return explicit, "--token"
    if os.environ.get("SADDLE_TOKEN"):
        return os.environ["SADDLE_TOKEN"], "SADDLE_TOKEN"
    if TOKEN_FILE.exists():
        return TOKEN_FILE.read_text().strip(), f"{TOKEN_FILE} (written by saddle demo)"
    return None, ""
