"""Cross-run findings: what a sweep's trials say together that no single run can (a deeper model
that trains worse than a shallower sibling, larger batches in sharper minima, the usable range of
learning rates), written on the sweep and, where they change a trial's story, on the trial."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from models.findings import Finding, write_diagnoses
from models.metrics import load_blocks
from models.numeric import is_finite, rounded
from models.patch import get_path, set_path
from models.summary import RunSummary
from models.tables import Diagnosis, Job, Spectrum, SweepTrial
from sweeps.spec import canonical

# A trial is better than its sibling only by a margin that noise between seeds does not reach.
WORSE_RELATIVE = 0.10
WORSE_ABSOLUTE = 0.01
MAX_TABLE_ROWS = 100
MAX_GROUPS = 20


@dataclass
class Run:
    """One complete trial with what the comparisons read."""

    job_id: str
    number: int
    spec: dict[str, Any]
    summary: RunSummary
    verdict: str | None
    value: float | None
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    lambda_max: float | None = None

    def final(self, name: str) -> float | None:
        s = self.series.get(name) or {}
        return s[max(s)] if s else None

    def at_best(self, name: str) -> float | None:
        """The metric at the best checkpoint (model selection on validation), else the last epoch."""
        s = self.series.get(name) or {}
        best = self.summary.best_epoch
        if best is not None and best in s:
            return s[best]
        return self.final(name)

    @property
    def train_loss(self) -> float | None:
        return self.final("train/loss")

    @property
    def val_loss(self) -> float | None:
        return self.summary.best_val_loss or self.final("val/loss")

    @property
    def test_loss(self) -> float | None:
        return self.at_best("test/loss")


def load_runs(session: Session, *, sweep_id: str) -> list[Run]:
    rows = session.execute(
        select(SweepTrial.number, SweepTrial.value, Job.id, Job.spec, Job.summary, Job.verdict)
        .join(Job, Job.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep_id, SweepTrial.state == "complete")
        .order_by(SweepTrial.number)
    ).all()
    runs = {
        job_id: Run(job_id, number, spec, RunSummary.of(summary), verdict, value)
        for number, value, job_id, spec, summary, verdict in rows
    }
    ids = list(runs)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for job_id, block in load_blocks(session, chunk, ("train/loss", "val/loss", "test/loss")):
            runs[job_id].series[block.name] = block.by_epoch()
        # λ_max of the final model: the "final" spectrum, else the newest one.
        newest: dict[str, tuple[int, int]] = {}
        for job_id, step, reason, top in session.execute(
            select(Spectrum.job_id, Spectrum.step, Spectrum.reason, Spectrum.top).where(
                Spectrum.job_id.in_(chunk)
            )
        ):
            rank = (1 if reason == "final" else 0, int(step))
            if top and (job_id not in newest or rank > newest[job_id]):
                newest[job_id] = rank
                runs[job_id].lambda_max = float(top[0])
    return list(runs.values())


def _sibling_key(spec: dict[str, Any], varied: str) -> str:
    """Two runs are siblings for a comparison when their specs agree on everything but ``varied``
    (names and tags never count)."""
    s = copy.deepcopy(spec)
    s.pop("name", None)
    s.pop("tags", None)
    set_path(s, varied, None)
    if varied == "model.hidden" and isinstance(get_path(s, "model.dropout"), list):
        set_path(s, "model.dropout", None)  # per-layer dropout follows the depth
    return canonical(s)


def _groups(runs: list[Run], varied: str) -> list[list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_sibling_key(run.spec, varied), []).append(run)
    out = [g for g in groups.values() if len({canonical(get_path(r.spec, varied)) for r in g}) >= 2]
    return sorted(out, key=len, reverse=True)[:MAX_GROUPS]


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_TABLE_ROWS rows, evenly spread over the sorted table (a 1,000-trial sweep)."""
    stride = -(-len(rows) // MAX_TABLE_ROWS)
    return rows[::stride] if stride > 1 else rows


def _clearly_worse(loss: float, reference: float) -> bool:
    return loss - reference > max(WORSE_ABSOLUTE, WORSE_RELATIVE * abs(reference))


def _rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho without ties handling; None when undefined."""
    if len(xs) < 2:
        return None
    rx = np.argsort(np.argsort(xs)).astype(float)
    ry = np.argsort(np.argsort(ys)).astype(float)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass
class TrialNote:
    """A diagnosis a comparison adds to one trial, and the verdict it implies (if any)."""

    job_id: str
    finding: Finding
    verdict: str | None = None


def depth_findings(runs: list[Run], sweep_id: str) -> tuple[list[Finding], list[TrialNote]]:
    """deeper_is_worse: a deeper sibling with clearly higher *training* loss than a shallower one
    cannot be short of capacity (it could copy the shallow net and pass the rest through), so the
    optimizer failed it: its verdict is underfitting.optimization."""
    findings: list[Finding] = []
    notes: list[TrialNote] = []
    pairs: list[dict[str, Any]] = []
    for group in _groups([r for r in runs if is_finite(r.train_loss)], "model.hidden"):
        if len({len(get_path(r.spec, "model.hidden") or []) for r in group}) < 2:
            continue  # widths differ, depths do not
        group.sort(key=lambda r: (len(get_path(r.spec, "model.hidden") or []), r.number))
        table = _table(
            [
                {
                    "job_id": r.job_id,
                    "hidden": get_path(r.spec, "model.hidden"),
                    "depth": len(get_path(r.spec, "model.hidden") or []),
                    "train_loss": rounded(r.train_loss),
                    "val_loss": rounded(r.val_loss),
                    "test_loss": rounded(r.test_loss),
                    "verdict": r.verdict,
                }
                for r in group
            ]
        )
        worse_here = []
        for deep in group:
            depth = len(get_path(deep.spec, "model.hidden") or [])
            shallower = [s for s in group if len(get_path(s.spec, "model.hidden") or []) < depth]
            if not shallower:
                continue
            ref = min(shallower, key=lambda s: s.train_loss or math.inf)
            if not _clearly_worse(deep.train_loss or 0.0, ref.train_loss or 0.0):
                continue
            pair = {
                "deeper": {
                    "job_id": deep.job_id,
                    "hidden": get_path(deep.spec, "model.hidden"),
                    "train_loss": rounded(deep.train_loss),
                },
                "shallower": {
                    "job_id": ref.job_id,
                    "hidden": get_path(ref.spec, "model.hidden"),
                    "train_loss": rounded(ref.train_loss),
                },
            }
            worse_here.append(pair)
            notes.append(_deeper_note(deep, ref, pair, sweep_id))
        pairs += worse_here
        best = min(group, key=lambda r: r.train_loss or math.inf)
        conclusion = (
            f"Deeper is worse: {len(worse_here)} deeper model(s) reach a higher training loss than a shallower "
            "sibling — optimization trouble, not model bias."
            if worse_here
            else f"Training loss does not get worse with depth; the lowest is at depth "
            f"{len(get_path(best.spec, 'model.hidden') or [])} ({rounded(best.train_loss)})."
        )
        findings.append(
            Finding(
                code="depth_comparison",
                severity="info",
                confidence=0.9,
                evidence={"table": table},
                recommendation=conclusion,
            )
        )
    if pairs:
        findings.insert(
            0,
            Finding(
                code="deeper_is_worse",
                severity="warning",
                confidence=0.8,
                evidence={"pairs": _table(pairs)},
                recommendation="A deeper model trains worse than a shallower one: that is an optimization problem "
                "(vanishing gradients, saturation, poor initialization), not a lack of capacity. Fix the "
                "optimization of the deep model (normalization, ReLU, a better initialization) or keep the "
                "shallower depth.",
                patch=notes[0].finding.patch,
                trials=sorted({p["deeper"]["job_id"] for p in pairs}),
            ),
        )
    return findings, notes


def _deeper_note(deep: Run, ref: Run, pair: dict[str, Any], sweep_id: str) -> TrialNote:
    activation = get_path(deep.spec, "model.activation")
    patch: dict[str, Any] = {"model": {"norm": "batch"}}
    if activation in ("sigmoid", "tanh"):
        patch["model"]["activation"] = "relu"
    return TrialNote(
        deep.job_id,
        Finding(
            code="deeper_is_worse",
            severity="warning",
            confidence=0.8,
            evidence={
                "sweep_id": sweep_id,
                "train_loss": rounded(deep.train_loss),
                "hidden": get_path(deep.spec, "model.hidden"),
                "shallower_job_id": ref.job_id,
                "shallower_hidden": get_path(ref.spec, "model.hidden"),
                "shallower_train_loss": rounded(ref.train_loss),
                "alternative_patch": {"model": {"hidden": get_path(ref.spec, "model.hidden")}},
                "pair": pair,
            },
            recommendation=f"This model's training loss ({rounded(deep.train_loss)}) is higher than that of its "
            f"shallower sibling {ref.job_id} ({rounded(ref.train_loss)}). A deeper net can represent everything the "
            "shallower one can, so the optimizer is at fault: add normalization"
            + (
                " and use ReLU instead of a saturating activation"
                if activation in ("sigmoid", "tanh")
                else ""
            )
            + ", or keep the shallower depth.",
            patch=patch,
        ),
        verdict="underfitting.optimization",
    )


def batch_size_findings(runs: list[Run], sweep_id: str) -> tuple[list[Finding], list[TrialNote]]:
    """batch_size_sharpness: λ_max of the final model, test loss and time per epoch against batch
    size. When larger batches reach sharper minima and also test worse, the sharp trials (sharper and
    worse than the smallest batch) get ``sharp_minimum``."""
    findings: list[Finding] = []
    notes: list[TrialNote] = []
    for group in _groups(runs, "batch_size"):
        group.sort(key=lambda r: (int(get_path(r.spec, "batch_size") or 0), r.number))
        table = _table(
            [
                {
                    "job_id": r.job_id,
                    "batch_size": get_path(r.spec, "batch_size"),
                    "lambda_max": rounded(r.lambda_max),
                    "test_loss": rounded(r.test_loss),
                    "val_loss": rounded(r.val_loss),
                    "train_loss": rounded(r.train_loss),
                    "seconds_per_epoch": rounded(r.summary.seconds_per_epoch),
                    "ms_per_update": rounded(r.summary.ms_per_update),
                }
                for r in group
            ]
        )
        measured = [r for r in group if is_finite(r.lambda_max) and is_finite(r.test_loss)]
        sizes = [float(get_path(r.spec, "batch_size")) for r in measured]
        rho_sharp = _rank_correlation(sizes, [r.lambda_max or 0.0 for r in measured])
        rho_test = _rank_correlation(sizes, [r.test_loss or 0.0 for r in measured])
        small, large = group[0], group[-1]
        t_small, t_large = small.summary.seconds_per_epoch, large.summary.seconds_per_epoch
        speedup = t_small / t_large if is_finite(t_small) and is_finite(t_large) and t_large else None
        evidence = {
            "table": table,
            "rank_correlation": {"lambda_max": rounded(rho_sharp), "test_loss": rounded(rho_test)},
            "epoch_speedup_largest_vs_smallest": rounded(speedup),
        }
        sharp: list[Run] = []
        if (
            measured
            and rho_sharp is not None
            and rho_test is not None
            and rho_sharp >= 0.5
            and rho_test >= 0.5
        ):
            ref = measured[0]  # the smallest batch with a spectrum
            sharp = [
                r
                for r in measured[1:]
                if get_path(r.spec, "batch_size") > get_path(ref.spec, "batch_size")
                and (r.lambda_max or 0.0) > 1.2 * (ref.lambda_max or 0.0)
                and _clearly_worse(r.test_loss or 0.0, ref.test_loss or 0.0)
            ]
        trade = (
            f" An epoch at batch {get_path(large.spec, 'batch_size')} takes {1 / speedup:.2g}× the time of batch "
            f"{get_path(small.spec, 'batch_size')}."
            if speedup
            else ""
        )
        if sharp:
            ref = measured[0]
            findings.append(
                Finding(
                    code="batch_size_sharpness",
                    severity="warning",
                    confidence=0.8,
                    evidence=evidence,
                    recommendation=f"Larger batches reach sharper minima (λ_max {rounded(ref.lambda_max)} at batch "
                    f"{get_path(ref.spec, 'batch_size')} → up to {rounded(max(r.lambda_max or 0.0 for r in sharp))}) "
                    "and generalize worse (test loss "
                    f"{rounded(ref.test_loss)} → up to {rounded(max(r.test_loss or 0.0 for r in sharp))}). Prefer the "
                    f"smaller batch, or make up for a large one (warm-up, noise, a higher rate).{trade}",
                    patch={"batch_size": get_path(ref.spec, "batch_size")},
                    trials=[r.job_id for r in sharp],
                )
            )
            notes += [_sharp_note(r, ref, sweep_id) for r in sharp]
        conclusion = (
            "Larger batches reached sharper minima and tested worse." + trade
            if sharp
            else "No sharpness penalty for larger batches in these runs." + trade
        )
        findings.append(
            Finding(
                code="batch_size_comparison",
                severity="info",
                confidence=0.9,
                evidence=evidence,
                recommendation=conclusion,
            )
        )
    return findings, notes


def _sharp_note(r: Run, ref: Run, sweep_id: str) -> TrialNote:
    return TrialNote(
        r.job_id,
        Finding(
            code="sharp_minimum",
            severity="warning",
            confidence=0.8,
            evidence={
                "sweep_id": sweep_id,
                "batch_size": get_path(r.spec, "batch_size"),
                "lambda_max": rounded(r.lambda_max),
                "test_loss": rounded(r.test_loss),
                "reference": {
                    "job_id": ref.job_id,
                    "batch_size": get_path(ref.spec, "batch_size"),
                    "lambda_max": rounded(ref.lambda_max),
                    "test_loss": rounded(ref.test_loss),
                },
            },
            recommendation=f"At batch size {get_path(r.spec, 'batch_size')} training ended in a sharper minimum "
            f"(λ_max {rounded(r.lambda_max)}) than at batch size {get_path(ref.spec, 'batch_size')} "
            f"(λ_max {rounded(ref.lambda_max)}), and its test loss is worse. Use the smaller batch.",
            patch={"batch_size": get_path(ref.spec, "batch_size")},
        ),
    )


def learning_rate_findings(runs: list[Run]) -> list[Finding]:
    """learning_rate_range: loss against rate; the usable range is the rates whose best validation
    loss is within 10% of the best one, and the rates that diverged bound it from above."""
    findings = []
    for group in _groups(runs, "optimizer.lr"):
        group.sort(key=lambda r: float(get_path(r.spec, "optimizer.lr")))
        table = _table(
            [
                {
                    "job_id": r.job_id,
                    "lr": get_path(r.spec, "optimizer.lr"),
                    "train_loss": rounded(r.train_loss),
                    "val_loss": rounded(r.val_loss),
                    "verdict": r.verdict,
                }
                for r in group
            ]
        )
        ok = [r for r in group if is_finite(r.val_loss) and r.verdict != "diverged"]
        ok_ids = {r.job_id for r in ok}
        diverged = [float(get_path(r.spec, "optimizer.lr")) for r in group if r.job_id not in ok_ids]
        if not ok:
            conclusion, usable, best_lr = "Every rate diverged or lost its validation loss.", None, None
        else:
            best = min(ok, key=lambda r: r.val_loss or math.inf)
            best_lr = float(get_path(best.spec, "optimizer.lr"))
            good = [
                float(get_path(r.spec, "optimizer.lr"))
                for r in ok
                if (r.val_loss or math.inf) <= 1.1 * (best.val_loss or 0.0) + 1e-12
            ]
            usable = [min(good), max(good)]
            conclusion = f"Best rate {best_lr:g} (validation loss {rounded(best.val_loss)}); rates from {usable[0]:g} to {usable[1]:g} come within 10% of it."
            if diverged:
                conclusion += f" Diverged at {min(diverged):g} and above."
        findings.append(
            Finding(
                code="learning_rate_range",
                severity="info",
                confidence=0.9,
                evidence={
                    "table": table,
                    "best_lr": best_lr,
                    "usable_range": usable,
                    "diverged_lrs": diverged,
                },
                recommendation=conclusion,
            )
        )
    return findings


def cross_run_findings(session: Session, *, sweep_id: str) -> list[dict[str, Any]]:
    runs = load_runs(session, sweep_id=sweep_id)
    depth, depth_notes = depth_findings(runs, sweep_id)
    batch, batch_notes = batch_size_findings(runs, sweep_id)
    apply_notes(session, sweep_id=sweep_id, job_ids=[r.job_id for r in runs], notes=depth_notes + batch_notes)
    return [f.to_dict() for f in depth + batch + learning_rate_findings(runs)]


def apply_notes(session: Session, *, sweep_id: str, job_ids: list[str], notes: list[TrialNote]) -> None:
    """Write the comparisons' diagnoses on the trials (replacing this sweep's earlier ones), and the
    verdict they imply. The verdict row that the single-run engine wrote is replaced, keeping what it
    said as ``previous_verdict``, so a job's verdict and its verdict row always agree."""
    old = session.execute(
        select(Diagnosis.id, Diagnosis.evidence).where(
            Diagnosis.job_id.in_(job_ids), Diagnosis.code.in_(("deeper_is_worse", "sharp_minimum"))
        )
    ).all()
    stale = [i for i, evidence in old if (evidence or {}).get("sweep_id") == sweep_id]
    if stale:
        session.execute(delete(Diagnosis).where(Diagnosis.id.in_(stale)))
    for note in notes:
        write_diagnoses(session, note.job_id, [note.finding], replace=False)
        if note.verdict:
            set_verdict(session, note=note)


def set_verdict(session: Session, *, note: TrialNote) -> None:
    job = session.get(Job, note.job_id)
    if job is None or job.verdict in (note.verdict, "diverged"):  # divergence is the more specific story
        return
    session.execute(delete(Diagnosis).where(Diagnosis.job_id == job.id, Diagnosis.kind == "verdict"))
    finding = note.finding
    verdict = Finding(
        code=note.verdict,
        severity="warning",
        confidence=finding.confidence,
        evidence={"previous_verdict": job.verdict, "causes": [finding.code], **finding.evidence},
        recommendation=finding.recommendation,
        patch=finding.patch,
        kind="verdict",
    )
    write_diagnoses(session, job.id, [verdict], replace=False)
    job.verdict = note.verdict
