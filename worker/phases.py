"""Where a job's time went: seconds per phase, stored in the run summary's ``phases``.

A small job is mostly fixed cost (claim, data, reference fit, spectra, diagnosis, writes), and the
user paying for it should see which part; ``benchmarks/job_cost.py`` prints the breakdown. Phases
nest (spectra and checkpoints happen inside training), so the figures are not meant to add up:
``training`` is the whole ``Trainer.fit``, of which ``updates`` is the epochs' own time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and add it to ``name`` (a phase may run several times: spectra)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 6)
