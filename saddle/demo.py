"""``saddle demo``: the whole service on one machine with nothing installed but this package.

SQLite is the database and Celery's filesystem transport is the broker (message files in a folder):
both come with Python and kombu, so a fresh machine needs no Docker, no Postgres and no Redis. The
worker is a real Celery worker process and the API a real uvicorn server; only the URLs differ from
production.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from saddle import processes

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits.yaml"


def embedded_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SADDLE_")}
    env.update(
        {
            "SADDLE_DATABASE_URL": f"sqlite:///{home / 'saddle.db'}",
            "SADDLE_BROKER_URL": "filesystem://",
            "SADDLE_BROKER_FOLDER": str(home / "broker"),
            "SADDLE_ARTIFACTS": str(home / "artifacts"),
            "SADDLE_QUEUE": "saddle",
        }
    )
    return env


def run_demo(port: int, serve: bool, spec_path: str | None, home: Path = Path(".saddle")) -> int:
    home = home.resolve()
    env = embedded_env(home)
    os.environ.update(env)  # this process migrates and mints the token with the same settings
    from api.auth import create_token
    from migrations import run_upgrade
    from models.db import session_scope
    from saddle.cli import describe_result, load_spec_file
    from saddle.client import Client
    from saddle.progress import ProgressLine

    say(f"embedded mode: database {home / 'saddle.db'}, broker folder {home / 'broker'}")
    run_upgrade(env["SADDLE_DATABASE_URL"])
    with session_scope() as session:
        _, token = create_token(session, "demo", "demo")
    (home / "token").write_text(token + "\n")
    worker_log, api_log = home / "logs" / "worker.log", home / "logs" / "api.log"
    worker_log.unlink(missing_ok=True)
    worker = processes.start_worker(env, worker_log)
    api = processes.start_api(env, port, api_log)
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_ready(f"{url}/readyz", process=api)
        processes.wait_worker_ready(worker_log, process=worker)
        say(f"API ready at {url} (OpenAPI: {url}/openapi.json); worker ready (logs in {home / 'logs'})")
        client = Client(url, token)
        job = client.submit(load_spec_file(spec_path or str(EXAMPLE)))
        say(f"submitted job {job['id']} ({job['name']}); training:")
        line = ProgressLine(sys.stdout)
        final = client.wait(job["id"], on_progress=line)
        line.close()
        print(describe_result(final))
        spectra = client.spectra(job["id"])
        for s in spectra:
            top = ", ".join(f"{v:.3g}" for v in s["top"][:3])
            say(
                f"  Hessian at epoch {s['epoch']} ({s['reason']}): top {top}; λ_min "
                f"{s['bottom'][0] if s['bottom'] else float('nan'):.3g}; {s['critical_point'].get('class')}"
            )
        say(f"\nAPI: {url}   token: {token}   (also saved in {home / 'token'})")
        say(f"dashboard: {url}/  (paste the token once)")
        say(f"try: curl -H 'Authorization: Bearer {token}' {url}/v1/jobs/{job['id']}/metrics?name=val/loss")
        if serve:
            say("serving; Ctrl-C stops the API and the worker")
            while api.poll() is None and worker.poll() is None:
                time.sleep(1)
        return 0 if final["status"] == "succeeded" else 1
    except KeyboardInterrupt:
        return 0
    finally:
        processes.stop(api)
        processes.stop(worker)


def say(text: str) -> None:
    print(text, flush=True)
