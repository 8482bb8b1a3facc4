"""The CLI's output and start-up without a server: tables and progress on a real terminal (a pty)
and in a pipe, NO_COLOR, and what a command imports (a client command loads neither the server
nor torch; only the worker's command loads torch). Each check runs Python in a fresh subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ID = "0123456789abcdef" * 2
TABLE = f"""
from saddle.output import print_table
print_table(
    [["{ID}", "a-name-long-enough-that-a-narrow-terminal-must-wrap-it", "succeeded", 0.12345, None]],
    ["ID", "NAME", "STATUS", "VAL LOSS", "VERDICT"],
)
"""
PROGRESS = """
from saddle.progress import ProgressDisplay
display = ProgressDisplay()
for epoch in (0, 1, 1, 2, 3):
    status = "succeeded" if epoch == 3 else "running"
    display({"status": status, "progress": {"epoch": epoch, "epochs": 3, "val_loss": 0.5 / (epoch + 1)}})
display.close()
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "TERM")}
    return env | {"TERM": "xterm-256color"} | extra


def in_a_pipe(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=60,
        check=True,
    )


def on_a_terminal(code: str, **env: str) -> str:
    """What ``code`` writes to stdout and stderr when both are a terminal (a pty)."""
    leader, follower = os.openpty()
    try:
        subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
            env=clean_env(**env),
            timeout=60,
            check=True,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(leader)


def test_a_table_in_a_pipe_is_plain_text_one_row_a_line() -> None:
    out = in_a_pipe(TABLE).stdout
    assert not ANSI.search(out)
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "VAL", "LOSS", "VERDICT"]
    assert row.split() == [
        ID,
        "a-name-long-enough-that-a-narrow-terminal-must-wrap-it",
        "succeeded",
        "0.1235",
        "-",
    ]
    assert not any(line != line.rstrip() for line in out.splitlines())
    assert row.index("succeeded") == header.index("STATUS")  # columns line up


def test_a_table_fits_the_terminal_keeps_ids_whole_and_colours_unless_no_color() -> None:
    out = on_a_terminal(TABLE, COLUMNS="72")
    lines = [ANSI.sub("", line) for line in out.splitlines()]
    assert max(len(line) for line in lines) <= 72, lines
    assert any(ID in line for line in lines)  # the id is never wrapped: it is copied whole
    assert len(lines) > 2  # the long name wrapped instead of widening the table
    assert "\x1b[32m" in out  # succeeded in green

    plain = on_a_terminal(TABLE, COLUMNS="72", NO_COLOR="1")
    assert "\x1b[32m" not in plain and "succeeded" in plain


def test_progress_in_a_pipe_is_a_line_per_change() -> None:
    err = in_a_pipe(PROGRESS).stderr.splitlines()
    assert len(err) == 4  # the repeated state is not printed twice
    assert err[0].startswith("[" + "-" * 28 + "] epoch 0/3  running  val 0.5000")
    assert err[-1].startswith("[" + "#" * 28 + "] epoch 3/3  succeeded")


def test_progress_on_a_terminal_is_a_live_bar() -> None:
    out = on_a_terminal(PROGRESS, COLUMNS="100")
    assert "━" in out and "epoch 3/3  succeeded  val 0.1250" in out
    assert "#" * 28 not in out  # Rich's bar, not the plain one


def loaded_after(*argv: str) -> tuple[int, list[str]]:
    """The exit code of ``saddle ARGV`` and which of the heavy modules it imported."""
    code = f"""
    import contextlib, io, json, sys
    from saddle.cli import main
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main({list(argv)!r})
    heavy = ("torch", "sqlalchemy", "celery", "structlog", "api", "worker", "models", "dispatch")
    print(json.dumps([code, [name for name in heavy if name in sys.modules]]))
    """
    exit_code, loaded = json.loads(in_a_pipe(code).stdout)
    return exit_code, loaded


def test_client_commands_and_help_load_neither_the_server_nor_torch() -> None:
    assert loaded_after("--help") == (0, [])
    # The whole client path, up to the connection the API (nothing listens on port 1) refuses.
    assert loaded_after("ls", "--api", "http://127.0.0.1:1", "--token", "x") == (4, [])


def test_only_the_worker_command_loads_torch() -> None:
    """The API, the reaper, migrations and tokens run without torch: only their own modules load."""
    code = """
    import json, sys
    import saddle.commands.database, saddle.commands.reaper, saddle.commands.server
    print(json.dumps("torch" in sys.modules))
    """
    assert json.loads(in_a_pipe(code).stdout) is False
