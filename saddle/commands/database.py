"""The commands that act on the database directly, with no service running: migrations and tokens."""

from __future__ import annotations

import click

from api.auth import create_token
from migrations import run_upgrade
from models.db import session_scope
from saddle.commands import EXIT_OK
from saddle.output import print_json


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
