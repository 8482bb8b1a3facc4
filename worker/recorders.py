"""A Recorder that keeps everything in memory: for benchmarks, notebooks and engine tests."""

from __future__ import annotations

from typing import Any

from models.metrics import Point
from worker.curvature import measure, spectrum_record


class MemoryRecorder:
    def __init__(self, stop_after_epoch: int | None = None, spectra: bool = False) -> None:
        self.measure_spectra = spectra
        self.spectra: list[dict[str, Any]] = []
        self.points: list[Point] = []
        self.progress: list[dict[str, Any]] = []
        self.checkpoints: list[tuple[str, int, int, float | None, bytes]] = []
        self.analyses: list[tuple[int, str]] = []
        self.stop_after_epoch = stop_after_epoch
        self._stop: str | None = None

    def log(self, points: list[Point]) -> None:
        self.points.extend(points)

    def epoch_end(self, epoch: int, step: int, progress: dict[str, Any]) -> None:
        self.progress.append(progress)
        if self.stop_after_epoch is not None and epoch >= self.stop_after_epoch:
            self._stop = "interrupted"

    def stop_reason(self) -> str | None:
        return self._stop

    def save_checkpoint(
        self, kind: str, epoch: int, step: int, val_loss: float | None, payload: bytes
    ) -> None:
        self.checkpoints.append((kind, epoch, step, val_loss, payload))

    def analyze(self, trainer: Any, epoch: int, reason: str) -> None:
        self.analyses.append((epoch, reason))
        if self.measure_spectra:
            record = spectrum_record(measure(trainer, trainer.model), epoch, trainer.state.step, reason)
            self.spectra.append(record.model_dump())

    def series(self, name: str) -> list[float]:
        return [p.value for p in self.points if p.name == name]
