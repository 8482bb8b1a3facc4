"""``saddle reaper``: the reaper alone (every API process runs one too). Its own module because it
imports the sweeps' scheduler and its samplers (Optuna), which the other service commands do not."""

from __future__ import annotations

import click

from dispatch.reaper import Reaper
from saddle.commands import EXIT_OK
from saddle.logs import configure_logging, log_format_option


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
