"""A one-line terminal progress display for a job: epoch bar, losses, ETA."""

from __future__ import annotations

import sys
from typing import IO, Any


def format_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_progress(job: dict[str, Any], width: int = 28) -> str:
    p = job.get("progress") or {}
    if "total" in p and "epochs" not in p:  # a study: measurements done out of total
        at, of, unit = p.get("done", 0), p.get("total") or 1, ""
    else:
        at, of, unit = p.get("epoch", 0), p.get("epochs") or job.get("spec", {}).get("epochs") or 1, "epoch "
    filled = int(width * min(1.0, at / of))
    bar = "#" * filled + "-" * (width - filled)
    parts = [f"[{bar}] {unit}{at}/{of}", job["status"]]
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("val_accuracy", "val acc")):
        if p.get(key) is not None:
            parts.append(f"{label} {p[key]:.4f}")
    if p.get("eta_seconds") and job["status"] == "running":
        parts.append(f"ETA {format_duration(p['eta_seconds'])}")
    return "  ".join(parts)


class ProgressLine:
    """Rewrites one line on a terminal; elsewhere (a log, a pipe) prints a line per change."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.stream = stream
        self.last = ""

    def __call__(self, job: dict[str, Any]) -> None:
        self.show(format_progress(job))

    def show(self, line: str) -> None:
        if line != self.last:
            end = "\r" if self.stream.isatty() else "\n"
            self.stream.write(line.ljust(len(self.last)) + end)
            self.stream.flush()
            self.last = line

    def close(self) -> None:
        if self.stream.isatty():
            self.stream.write("\n")
