"""One shape for what a diagnosis says: a job's verdict, a job's finding, or a sweep's finding.

Built with keywords only, checked on construction (a code outside the contract, a severity outside
info/warning/error or a confidence outside (0, 1] is a programming error), and written to the
``diagnoses`` table by one function.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import delete
from sqlalchemy.orm import Session

from models.codes import FINDINGS, VERDICTS
from models.jsonsafe import json_safe
from models.tables import Diagnosis

SEVERITIES = ("info", "warning", "error")
# Summaries a sweep adds beside the diagnosis codes (tables of a comparison, not diagnoses of a job).
SWEEP_SUMMARIES = ("depth_comparison", "batch_size_comparison", "learning_rate_range")


@dataclass(kw_only=True)
class Finding:
    code: str
    severity: Literal["info", "warning", "error"]
    confidence: float
    evidence: dict[str, Any]
    recommendation: str
    patch: dict[str, Any] = field(default_factory=dict)
    kind: Literal["verdict", "finding"] = "finding"
    # Findings that explain a large training loss by optimization trouble (the verdict reads it).
    blames_optimizer: bool = False
    # Sweep findings: the trials they are about.
    trials: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        known = VERDICTS if self.kind == "verdict" else (*FINDINGS, *SWEEP_SUMMARIES)
        if self.code not in known:
            raise ValueError(f"{self.kind} code {self.code!r} is not in the contract")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")
        if not (math.isfinite(self.confidence) and 0 < self.confidence <= 1):
            raise ValueError(f"confidence {self.confidence!r} is not in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("blames_optimizer")
        if not self.trials:
            out.pop("trials")
        return json_safe(out)

    def row(self, job_id: str, *, provisional: bool = False) -> Diagnosis:
        return Diagnosis(
            job_id=job_id,
            code=self.code,
            kind=self.kind,
            severity=self.severity,
            confidence=self.confidence,
            evidence=json_safe(self.evidence),
            recommendation=self.recommendation,
            patch=json_safe(self.patch),
            provisional=provisional,
        )


def write_diagnoses(
    session: Session, job_id: str, findings: list[Finding], *, provisional: bool = False, replace: bool = True
) -> None:
    """Store a job's diagnoses; ``replace`` drops what the job had before (all of it)."""
    if replace:
        session.execute(delete(Diagnosis).where(Diagnosis.job_id == job_id))
    session.add_all([f.row(job_id, provisional=provisional) for f in findings])
