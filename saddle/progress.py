"""A one-line terminal progress display for a job: epoch bar, losses, ETA."""

from __future__ import annotations

import sys
from typing import Any


def format_progress(job: dict[str, Any], width: int = 28) -> str:
    p = job.get("progress") or {}
    epochs = p.get("epochs") or job.get("spec", {}).get("epochs") or 1
    epoch = p.get("epoch", 0)
    filled = int(width * min(1.0, epoch / epochs))
    bar = "#" * filled + "-" * (width - filled)
    parts = [f"[{bar}] {epoch}/{epochs}", job["status"]]
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("val_accuracy", "val acc")):
        if p.get(key) is not None:
            parts.append(f"{label} {p[key]:.4f}")
    if p.get("eta_seconds") and job["status"] == "running":
        parts.append(f"ETA {p['eta_seconds']:.0f}s")
    return "  ".join(parts)


class ProgressLine:
    def __init__(self, stream=sys.stderr) -> None:  # noqa: ANN001
        self.stream = stream
        self.last = ""

    def __call__(self, job: dict[str, Any]) -> None:
        line = format_progress(job)
        if line != self.last:
            end = "\r" if self.stream.isatty() else "\n"
            self.stream.write(line.ljust(len(self.last)) + end)
            self.stream.flush()
            self.last = line

    def close(self) -> None:
        if self.stream.isatty():
            self.stream.write("\n")
