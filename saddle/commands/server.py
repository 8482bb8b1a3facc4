"""``saddle api``: the HTTP API under uvicorn (which imports ``api.app`` itself, in each of its
worker processes, and applies the log config there too)."""

from __future__ import annotations

import click
import uvicorn

from saddle.commands import EXIT_OK
from saddle.logs import log_format_option, logging_config


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="uvicorn worker processes")
@log_format_option
def api(host: str, port: int, workers: int, log_format: str | None) -> int:
    uvicorn.run(
        "api.app:app",
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=logging_config(log_format),
    )
    return EXIT_OK
