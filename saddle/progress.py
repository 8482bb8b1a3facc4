"""Following a job or a sweep on the terminal: a live Rich progress bar with the epoch (or trials),
losses and ETA; where the output is not a terminal (a log, a pipe), one plain line per change."""

from __future__ import annotations

import sys
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from saddle.output import fmt

PLAIN_BAR_WIDTH = 28


def format_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def job_step(job: dict[str, Any]) -> tuple[float, float, str]:
    """How far a job is (done, of) and what to say beside the bar: epoch, status, losses, ETA."""
    p = job.get("progress") or {}
    if "total" in p and "epochs" not in p:  # a study: measurements done out of total
        at, of, unit = p.get("done", 0), p.get("total") or 1, ""
    else:
        at, of, unit = p.get("epoch", 0), p.get("epochs") or job.get("spec", {}).get("epochs") or 1, "epoch "
    parts = [f"{unit}{at}/{of}", job["status"]]
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("val_accuracy", "val acc")):
        if p.get(key) is not None:
            parts.append(f"{label} {p[key]:.4f}")
    if p.get("eta_seconds") and job["status"] == "running":
        parts.append(f"ETA {format_duration(p['eta_seconds'])}")
    return at, of, "  ".join(parts)


def sweep_step(sweep: dict[str, Any]) -> tuple[float, float, str]:
    """How far a sweep is (trials done, of) and its counts and best value so far."""
    p, best = sweep.get("progress") or {}, sweep.get("best")
    text = (
        f"sweep {sweep['status']}: {p.get('done', 0)}/{p.get('total', '?')} trials done, "
        f"{p.get('running', 0)} running, {p.get('queued', 0)} queued"
    )
    text += f"; best {fmt(best.get('value'))} (trial {best['number']})" if best else ""
    return p.get("done", 0), p.get("total") or 1, text


def plain_line(done: float, total: float, text: str, width: int = PLAIN_BAR_WIDTH) -> str:
    filled = int(width * min(1.0, done / total)) if total else 0
    return f"[{'#' * filled}{'-' * (width - filled)}] {text}"


class ProgressDisplay:
    """A live bar on a terminal; elsewhere prints a plain line (with an ASCII bar) per change."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.stream = stream
        self.last = ""
        self.live: Progress | None = None
        if stream.isatty():
            self.live = Progress(
                BarColumn(bar_width=PLAIN_BAR_WIDTH),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(file=stream, highlight=False),
            )
            self.task = self.live.add_task("", total=None)
            self.live.start()

    def __call__(self, job: dict[str, Any]) -> None:
        """``Client.wait``'s ``on_progress``: show each state of the job read."""
        self.show(*job_step(job))

    def show(self, done: float, total: float, text: str) -> None:
        if self.live is not None:
            self.live.update(self.task, completed=done, total=total, description=text)
            return
        line = plain_line(done, total, text)
        if line != self.last:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = line

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()  # leaves the last state on the screen
