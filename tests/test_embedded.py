"""The README's first command: the embedded default on SQLite and the filesystem broker, with a real
worker and API process, and no SADDLE_* URLs set."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from saddle.processes import free_port
from tests.conftest import tiny_spec


def test_demo_runs_a_job_end_to_end_without_postgres_or_redis(tmp_path) -> None:
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec(name="embedded", epochs=3)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SADDLE_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saddle.cli",
            "demo",
            "--exit",
            "--port",
            str(free_port()),
            "--spec",
            str(spec_file),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout and "API: http://127.0.0.1:" in result.stdout
    assert (tmp_path / ".saddle" / "saddle.db").exists()
    assert (tmp_path / ".saddle" / "token").read_text().startswith("sdl_")
