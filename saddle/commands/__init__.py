"""The commands of ``saddle``, in modules by what they import: ``client`` (they talk to the API),
``server`` (the API, under uvicorn), ``database`` (migrations, tokens), ``reaper`` (the sweeps'
samplers) and ``worker`` (torch); ``saddle demo`` lives with the demo. ``saddle.cli`` imports a module only when one of its
commands runs, so ``saddle ls`` never loads the server and ``saddle api`` never loads torch.

Exit codes a script can rely on: 0 ok; 1 the job failed or was cancelled (submit --watch, remedy
--watch); 2 usage (bad arguments, no token, unreadable file); 3 the API refused the request (4xx/5xx,
the message is printed); 4 the API could not be reached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import click

from saddle.client import DEFAULT_API, ApiError, Client, Unreachable, token_and_source

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # Ctrl-C while watching: the job goes on


class Failure(click.ClickException):
    """A message for stderr (``saddle: ...``) and the exit code that says what kind of failure."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"saddle: {self.format_message()}", err=True)


class UsageError(Failure):
    """Bad arguments or inputs the API never saw: exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


@dataclass
class Api:
    """The API a client command talks to and the token it sends, as its options say."""

    url: str
    token: str | None
    json: bool
    token_source: str = ""

    def client(self) -> Client:
        token, self.token_source = token_and_source(self.token)
        if not token:
            raise UsageError(
                "no token: pass --token, set SADDLE_TOKEN, or run `saddle token create --project NAME`"
            )
        return Client(self.url, token)

    def refused(self, err: ApiError) -> Failure:
        message = f"the API refused: {err.detail} (HTTP {err.status})"
        if err.status == 401 and self.token_source:
            message += f"\n  the token came from {self.token_source}; the API is {self.url}"
        return Failure(message, EXIT_API)


def api_command(function: Callable[..., int]) -> Callable[..., int]:
    """The options every client command takes after its name (``saddle ls --status running --json``),
    handed to the command as one ``Api``; the API's refusal exits 3, its silence 4."""

    @click.option(
        "--api", "url", default=DEFAULT_API, envvar="SADDLE_API_URL", show_envvar=True, help="the API"
    )
    @click.option("--token", help="bearer token (default: $SADDLE_TOKEN, then .saddle/token)")
    @click.option("--json", "as_json", is_flag=True, help="print the API's JSON instead of text")
    @functools.wraps(function)
    def command(url: str, token: str | None, as_json: bool, **options: Any) -> int:
        api = Api(url, token, as_json)
        try:
            return function(api, **options)
        except ApiError as err:
            raise api.refused(err) from None
        except Unreachable as err:
            raise Failure(str(err), EXIT_UNREACHABLE) from None

    return command
