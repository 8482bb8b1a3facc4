"""Learning-rate schedules with linear warm-up, computed per update from the fractional epoch.

Written as plain functions of (spec, epoch) rather than torch schedulers so the rate is known on the
host without a device sync, is exact after a resume, and the plateau state is three numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from models.spec import Schedule


@dataclass
class PlateauState:
    best: float = math.inf
    bad_epochs: int = 0
    factor: float = 1.0

    def update(self, schedule: Schedule, val_loss: float) -> None:
        """Called once per epoch; decays the rate after ``patience`` epochs without improvement."""
        if val_loss < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = val_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > schedule.patience:
            self.factor *= schedule.gamma
            self.bad_epochs = 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def learning_rate(
    schedule: Schedule, base_lr: float, epoch: float, epochs: int, plateau: PlateauState
) -> float:
    """The rate for an update taken at fractional ``epoch`` (0-based) of a run of ``epochs``."""
    warm = schedule.warmup_epochs
    if warm > 0 and epoch < warm:
        return base_lr * min(1.0, (epoch + 1e-9) / warm)
    t = epoch - warm  # time since warm-up ended
    if schedule.name == "step":
        return base_lr * schedule.gamma ** math.floor(t / schedule.step_epochs)
    if schedule.name == "exponential":
        return base_lr * schedule.gamma**t
    if schedule.name == "cosine":
        span = max(1e-9, epochs - warm)
        return schedule.min_lr + (base_lr - schedule.min_lr) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, t / span))
        )
    if schedule.name == "plateau":
        return base_lr * plateau.factor
    return base_lr
