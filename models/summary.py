"""A job's ``summary``: what its run found out, written by the worker and read by the diagnosis,
sweeps, the leaderboard, the API and the CLI. One model, so every reader names the same fields.

The worker stores it as JSON (``RunSummary.as_row``: the fields it set); readers turn the stored
JSON back into the model (``RunSummary.of``), and the API answers it as stored (``exclude_unset``).
Rows written before a field existed simply lack it (None). A batch-size
timing study's summary holds its parameters and curve instead of a training run's numbers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models.jsonsafe import json_safe


class RunSummary(BaseModel):
    # Fields added later, or by a newer worker, are kept rather than dropped.
    model_config = ConfigDict(extra="allow")

    # ----- the training run (worker.training.Trainer.summary)
    epochs_run: int | None = None
    steps: int | None = None
    best_epoch: int | None = Field(
        None, description="the epoch of lowest validation loss (0: before training)"
    )
    best_val_loss: float | None = None
    stopped_early: bool | None = None
    diverged_step: int | None = Field(
        None, description="the update at which a loss or gradient became NaN/inf"
    )
    n_parameters: int | None = None
    device: str | None = None
    seconds_per_epoch: float | None = None
    ms_per_update: float | None = None
    data: dict[str, Any] | None = Field(None, description="the prepared data's facts: sizes, scales, order")
    layer_sizes: dict[str, int] | None = None
    # ----- added by the worker around the run (worker.runner)
    reference: dict[str, Any] | None = Field(None, description="chance, k-NN and linear reference scores")
    init_from: dict[str, Any] | None = None
    analysis_errors: list[str] | None = None
    probes: dict[str, Any] | None = None
    phases: dict[str, float] | None = Field(
        None,
        description="seconds per phase of the job (worker.phases): data, model, reference, training "
        "(of which updates, spectra, checkpoints, provisional_diagnosis), writes, probes, diagnosis",
    )
    # ----- a batch-size timing study (worker.timing)
    study: dict[str, Any] | None = None
    batch_size_timing: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> RunSummary:
        """The model of a stored summary (an empty one for a job that has none yet)."""
        return cls.model_validate(stored or {})

    def as_row(self) -> dict[str, Any]:
        """The JSON the jobs row keeps: the fields that were set, non-finite numbers as null."""
        return json_safe(self.model_dump(exclude_unset=True))
