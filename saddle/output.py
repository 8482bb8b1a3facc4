"""What the client commands print: numbers, tables, JSON, a job's result and the remedies on offer.

Tables are Rich tables: on a terminal they fit its width (long cells wrap, ids never do) and colour
statuses and verdicts; piped or redirected they are plain, unwrapped text that ``cut`` and ``awk``
read, one row a line. ``NO_COLOR`` turns the colours off on a terminal too (Rich honours it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Columns that hold ids or times a reader copies whole: never wrapped, even on a narrow terminal.
WHOLE_COLUMNS = ("ID", "JOB", "CREATED")
WRAP_AFTER = 12  # characters: a column whose cells are all this short is never wrapped
STYLES = {
    "succeeded": "green",
    "good_fit": "green",
    "running": "cyan",
    "queued": "dim",
    "failed": "red",
    "diverged": "red",
    "cancelled": "yellow",
}
# Wide enough that no table wraps when it is not shown on a terminal.
UNWRAPPED = 100_000


def console(stream: Any = None) -> Console:
    """A Rich console on ``stream`` (stdout by default): the terminal's width and colours there,
    else plain text with no width limit."""
    stream = stream or sys.stdout
    terminal = stream.isatty()
    return Console(file=stream, highlight=False, width=None if terminal else UNWRAPPED)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**7:
        value = float(value)  # huge integers from JSON (a diverged loss) read better as 2.3e+35
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3)
            else f"{value:.{digits}f}"
        )
    return str(value)


def param(value: Any) -> str:
    """A sweep parameter's value: numbers as ``fmt`` writes them, anything else as JSON."""
    return fmt(value) if isinstance(value, int | float) and not isinstance(value, bool) else json.dumps(value)


def when(stamp: str | None) -> str:
    return stamp[:19].replace("T", " ") if stamp else "-"


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[_cell(value) for value in row] for row in rows]
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
    for index, header in enumerate(headers):
        longest = max((len(row[index]) for row in cells), default=0)
        # Only long free text (names, verdicts) wraps to fit the terminal: ids and times are copied
        # whole, and a status or a number broken over two lines reads as two.
        wraps = header not in WHOLE_COLUMNS and longest > WRAP_AFTER
        table.add_column(header, no_wrap=not wraps, overflow="fold")
    for row in cells:
        table.add_row(*row)
    out = console()
    if out.is_terminal:
        out.print(table)
        return
    # Plain text: the cells' padding at the end of a line is noise to a script.
    with out.capture() as captured:
        out.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _cell(value: Any) -> Text:
    text = fmt(value)  # Text, not a str: a value like "[64, 64]" is data, not Rich markup
    return Text(text, style=STYLES.get(text, ""))


def describe_result(job: dict[str, Any]) -> str:
    p, s = job.get("progress") or {}, job.get("summary") or {}
    lines = [
        f"job {job['id']} {job['status']}" + (f" — verdict: {job['verdict']}" if job.get("verdict") else "")
    ]
    for split in ("train", "val", "test"):
        loss, acc = p.get(f"{split}_loss"), p.get(f"{split}_accuracy")
        if loss is not None:
            lines.append(
                f"  {split:5s} loss {loss:.4f}" + (f"  accuracy {acc:.3f}" if acc is not None else "")
            )
    if s.get("best_epoch") is not None and s.get("best_epoch", -1) >= 0:
        lines.append(
            f"  best epoch {s['best_epoch']} (val loss {s.get('best_val_loss') or float('nan'):.4f})"
        )
    if s.get("diverged_step"):
        lines.append(f"  diverged at step {s['diverged_step']}")
    if job.get("error"):
        lines.append(f"  error: {first_line(job['error'])}")
    return "\n".join(lines)


def remedy_hint(job: dict[str, Any]) -> list[str]:
    """The remedy commands the API would accept for this job (its ``remedy`` offer), and nothing else."""
    offer = job.get("remedy") or {}
    applies = offer.get("applies") or []
    others = [code for code in offer.get("findings") or [] if code not in applies]
    lines = []
    if offer.get("available"):
        lines.append(f"apply the fix: saddle remedy {job['id']}   (applies {', '.join(applies)})")
    if others:
        lead = (
            "or one fix at a time"
            if applies
            else f"verdict {job.get('verdict')} comes with no fix; to try one"
        )
        lines.append(f"{lead}: saddle remedy {job['id']} --finding CODE   ({', '.join(others)})")
    return ["", *lines] if lines else []


def evidence_summary(evidence: dict[str, Any], limit: int = 8) -> list[str]:
    """Scalars first, one per line; nested values as compact JSON, cut so a card stays readable."""
    lines = []
    for key, value in list(evidence.items())[:limit]:
        text = fmt(value) if not isinstance(value, dict | list) else json.dumps(value, default=str)
        lines.append(f"{key} = {text if len(text) <= 100 else text[:97] + '...'}")
    if len(evidence) > limit:
        lines.append(f"... {len(evidence) - limit} more (--json shows all)")
    return lines
