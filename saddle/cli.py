"""The `saddle` command: run the services, manage tokens, submit, watch, inspect and fix jobs.

Exit codes a script can rely on: 0 ok; 1 the job failed or was cancelled (submit --watch, remedy
--watch); 2 usage (bad arguments, no token, unreadable file); 3 the API refused the request (4xx/5xx,
the message is printed); 4 the API could not be reached.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

# Each command: where it lives and the line `saddle --help` shows for it (also its help when it has
# no docstring of its own). A command's module is imported only when the command runs, so a client
# command never loads the server, `saddle api` never loads torch and `saddle --help` loads neither.
COMMANDS: dict[str, tuple[str, str]] = {
    "api": ("saddle.commands.server:api", "Run the HTTP API (uvicorn)"),
    "worker": ("saddle.commands.worker:run_worker", "Run a Celery training worker"),
    "reaper": (
        "saddle.commands.reaper:reaper",
        "Re-queue jobs whose worker or broker was lost (the API runs one too)",
    ),
    "migrate": (
        "saddle.commands.database:migrate",
        "Create or upgrade the database schema (alembic upgrade)",
    ),
    "token": ("saddle.commands.database:token", "API tokens"),
    "submit": ("saddle.commands.client:submit", "Submit a JobSpec (YAML or JSON file, - for stdin)"),
    "ls": ("saddle.commands.client:list_jobs", "List jobs, newest first"),
    "show": ("saddle.commands.client:show", "A job's status, spec highlights, progress and result"),
    "metrics": ("saddle.commands.client:metrics", "A job's metric series (summary, --csv or --json)"),
    "diagnose": (
        "saddle.commands.client:diagnose",
        "A job's verdict and findings: evidence, recommendation, patch",
    ),
    "remedy": ("saddle.commands.client:remedy", "Resubmit a finished job with its diagnosis' fixes applied"),
    "cancel": ("saddle.commands.client:cancel", "Cancel a queued or running job"),
    "sweep": ("saddle.commands.client:sweep", "Hyperparameter sweeps (POST/GET /v1/sweeps)"),
    "study": (
        "saddle.commands.client:study",
        "A one-call study: depth, batch-size (sweeps) or batch-size-timing (a job); see examples/",
    ),
    "dataset": ("saddle.commands.client:dataset", "Uploaded datasets"),
    "demo": (
        "saddle.demo:command",
        "Embedded mode: SQLite, filesystem broker, a real worker; runs an example job",
    ),
}
EXIT_OK, EXIT_INTERRUPTED = 0, 130


class LazyGroup(click.Group):
    """Commands from ``COMMANDS``, each module imported when its command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, summary = COMMANDS[name]
        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        command.short_help = summary
        command.help = command.help or summary
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # From the table, not from each command: that would import every module, torch included.
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, summary) in COMMANDS.items()])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `saddle metrics JOB --csv | head`: the reader left; stop quietly, as cat does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK


@click.group(cls=LazyGroup, help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
def saddle() -> None:
    pass


def main(argv: list[str] | None = None) -> int:
    """The console script: the command's exit code (click's usage errors exit 2)."""
    try:
        return saddle.main(argv, prog_name="saddle", standalone_mode=False) or EXIT_OK
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # `python -m saddle.cli`: how the tests and the demo start the services
    sys.exit(main())
