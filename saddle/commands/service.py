"""The commands that run Saddle's services or act on its database directly: the API, the reaper,
migrations and tokens. They import the server's modules; the training worker's command, which
imports torch, is ``saddle.commands.worker``."""

from __future__ import annotations

import click
import uvicorn

from api.auth import create_token
from dispatch.reaper import Reaper
from migrations import run_upgrade
from models.db import session_scope
from saddle.commands import EXIT_OK
from saddle.logs import configure_logging, log_format_option, logging_config
from saddle.output import print_json


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


@click.command()
@click.option("--interval", type=float, help="seconds between looks (default $SADDLE_REAPER_SECONDS)")
@log_format_option
def reaper(interval: float | None, log_format: str | None) -> int:
    configure_logging(log_format)
    loop = Reaper(interval)
    print(f"reaper: every {loop.interval:g} s (Ctrl-C stops)")
    try:
        while True:
            loop.once()
            loop._stop_event.wait(loop.interval)
    except KeyboardInterrupt:
        return EXIT_OK


@click.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> int:
    run_upgrade(revision=revision)
    print("database is at", revision)
    return EXIT_OK


@click.group()
def token() -> None:
    pass


@token.command("create")
@click.option("--project", required=True)
@click.option("--name", default="")
@click.option("--json", "as_json", is_flag=True, help="print project, project_id and token as JSON")
def token_create(project: str, name: str, as_json: bool) -> int:
    """Create a token for a project (the project is created if new); the token is shown once."""
    with session_scope() as session:
        row, made = create_token(session, project, name)
        project_id = row.id
    if as_json:
        print_json({"project": project, "project_id": project_id, "token": made})
    else:
        print(made)
    return EXIT_OK
