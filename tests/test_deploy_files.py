"""docker-compose.yml cannot be run here (no Docker engine); check its shape instead."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_has_the_services_and_wiring_production_needs() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "worker-cpu"} <= set(services)
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    for name in ("api", "worker", "worker-cpu"):
        env = services[name]["environment"]
        assert env["SADDLE_DATABASE_URL"].startswith("postgresql+psycopg://") and env[
            "SADDLE_BROKER_URL"
        ].startswith("redis://")
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert any(v.endswith(":/artifacts") for v in services[name]["volumes"])
    assert services["migrate"]["command"] == ["saddle", "migrate"]


def test_dockerfile_installs_the_pinned_torch_and_the_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'pip install "torch==2.13.0"' in text and "pip install ." in text
