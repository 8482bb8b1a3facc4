"""How often the diagnosis is right, on runs labelled by counterfactual reruns (label.py).

Each case is trained the way the service trains a job (diagnostics, Hessian spectra at init, every
10 epochs and at the end, the k-NN reference) and diagnosed by ``worker.diagnosis.diagnose``, with
the probe runs wherever the service would run them. The training evidence is cached under
``.cache/`` (probes computed for every case, used only where ``probes.wanted`` says the service
would run them), so changing a rule re-runs only the rules.

    .venv/bin/python -m benchmarks.diagnosis.evaluate --split test            # the report
    .venv/bin/python -m benchmarks.diagnosis.evaluate --split test --remedies # + remedy reruns

Prints the verdict confusion matrix, accuracy, precision and recall per finding code, and the
warning rate on healthy runs; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.diagnosis.cases import LATER_SPLITS, Case, all_cases
from benchmarks.diagnosis.label import LABELS, number
from models.codes import VERDICTS

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
TARGETS = {"accuracy": 0.95, "precision": 0.9, "recall": 0.85, "healthy_warnings": 0.02, "remedies": 0.85}


# ----- training evidence, cached -------------------------------------------------------------------
def _cache_path(case: Case) -> Path:
    return CACHE / (case.id.replace("/", "__") + ".json")


def _evidence_key(case: Case) -> str:
    # Unlike the counterfactual outcomes, the evidence depends on the analysis settings too.
    return json.dumps([case.spec, case.data.__dict__], sort_keys=True)


PROBES_VERSION = 3  # 2: probes stop at a share of the job's compute (counted), no longer of its time;
# 3: the compute counts a fixed cost per update (probes.UPDATE_OVERHEAD)


def collect(case: Case) -> dict[str, Any]:
    """Train the case as the service would and keep what the rules read (JSON, no pickle)."""
    import torch

    from benchmarks.diagnosis.engine import CPU, prepared
    from models.jsonsafe import json_safe
    from models.spec import JobSpec
    from worker.diagnosis.evidence import from_points
    from worker.diagnosis.reference import reference_scores
    from worker.recorders import MemoryRecorder
    from worker.training import Trainer

    torch.set_num_threads(1)
    path = _cache_path(case)
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("fingerprint") == _evidence_key(case):
            if cached.get("probes_version") == PROBES_VERSION:
                return cached
            # Only the probes changed: rerun them on the cached evidence, not the whole case.
            spec = JobSpec.model_validate(case.spec)
            ev = evidence_of(case, cached, with_probes=False)
            return _store(path, cached | {"probes": _probes(spec, prepared(spec, case.data), ev)})
    spec = JobSpec.model_validate(case.spec)
    data = prepared(spec, case.data)
    recorder = MemoryRecorder(spectra=True)
    summary = Trainer(spec, data, recorder, CPU).fit()
    summary["reference"] = reference_scores(data, spec.seed, spec.model.computes_linear_function)
    ev = from_points(spec, summary, recorder.points, recorder.spectra)
    return _store(
        path,
        {
            "fingerprint": _evidence_key(case),
            "summary": json_safe(summary),
            "epoch_series": {k: _floats(v) for k, v in ev.epoch_series.items()},
            "step_series": {k: _floats(v) for k, v in ev.step_series.items()},
            "spectra": json_safe(recorder.spectra),
            "probes": _probes(spec, data, ev),
        },
    )


def _probes(spec: Any, data: Any, ev: Any) -> dict[str, Any] | None:
    """The probes of every finite run (the rules decide later whether the service would have run
    them: ``evidence_of``), with the service's own budget."""
    from models.jsonsafe import json_safe
    from worker.diagnosis.probes import SHARE_PER_PROBE, job_compute, probe
    from worker.diagnosis.recipes import probe_patches

    if ev.summary["diverged_step"] is not None or not math.isfinite(ev.final("train/loss")):
        return None
    budget = SHARE_PER_PROBE * job_compute(ev)
    return json_safe(
        {
            "parent_train_loss": ev.final("train/loss"),
            "budget": f"each probe at most {SHARE_PER_PROBE:.1%} of the job's training compute",
            "runs": {w: probe(spec, data, p, budget) for w, p in probe_patches(spec).items()},
        }
    )


def _store(path: Path, out: dict[str, Any]) -> dict[str, Any]:
    out["probes_version"] = PROBES_VERSION
    CACHE.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


def _floats(values: np.ndarray) -> list[str | float]:
    return [float(v) if math.isfinite(v) else str(float(v)) for v in values]


def evidence_of(case: Case, cached: dict[str, Any], with_probes: bool = True):  # noqa: ANN201
    from benchmarks.diagnosis.engine import prepared
    from models.spec import JobSpec
    from worker.diagnosis.evidence import Evidence
    from worker.diagnosis.probes import wanted
    from worker.diagnosis.reference import reference_scores

    spec = JobSpec.model_validate(case.spec)
    # The reference is recomputed (milliseconds; up to a second with the trees), so a
    # change to it needs no new training.
    final = (cached["epoch_series"].get("train/loss") or [None])[-1]
    cached["summary"]["reference"] = reference_scores(
        prepared(spec, case.data),
        spec.seed,
        spec.model.computes_linear_function,
        train_loss=math.nan if final is None else float(final),  # known after training, as in the worker
    )
    arrays = {
        k: {n: np.array(v, dtype=np.float64) for n, v in cached[k].items()}
        for k in ("epoch_series", "step_series")
    }
    ev = Evidence(
        spec,
        dict(cached["summary"]),
        arrays["epoch_series"],
        arrays["step_series"],
        cached["spectra"],
        bool(spec.data.test_dataset),
    )
    if with_probes and wanted(ev):  # the service runs the probes here, and only here
        ev.summary["probes"] = cached["probes"]
    return ev


def predict(case: Case, cached: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.diagnosis.engine import remedy_patch
    from worker.diagnosis import diagnose

    result = diagnose(evidence_of(case, cached))
    return {
        "verdict": result[0].code,
        "findings": {f.code: f.severity for f in result[1:]},
        "patch": remedy_patch(result),
    }


# ----- the report --------------------------------------------------------------------------------
def report(
    cases: list[Case], labels: dict[str, Any], predictions: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    confusion: dict[str, Counter] = defaultdict(Counter)
    tp, fp, fn = Counter(), Counter(), Counter()
    healthy = healthy_alarms = 0
    wrong = []
    for case in cases:
        truth, got = labels[case.id], predictions[case.id]
        confusion[truth["verdict"]][got["verdict"]] += 1
        if truth["verdict"] != got["verdict"]:
            wrong.append((case.id, truth["verdict"], got["verdict"]))
        expected, found = set(truth["findings"]), set(got["findings"])
        for code in expected | found:
            tp[code] += code in expected and code in found
            fp[code] += code in found and code not in expected
            fn[code] += code in expected and code not in found
        if truth["verdict"] == "good_fit":
            healthy += 1
            warned = {c for c, sev in got["findings"].items() if sev != "info"} - expected
            healthy_alarms += bool(warned) or got["verdict"] != "good_fit"
    n = len(cases)
    correct = sum(confusion[v][v] for v in confusion)
    per_code = {
        code: {
            "precision": tp[code] / (tp[code] + fp[code]) if tp[code] + fp[code] else None,
            "recall": tp[code] / (tp[code] + fn[code]) if tp[code] + fn[code] else None,
            "support": tp[code] + fn[code],
            "predicted": tp[code] + fp[code],
        }
        for code in sorted(tp.keys() | fp.keys() | fn.keys())
    }
    return {
        "runs": n,
        "accuracy": correct / n if n else math.nan,
        "confusion": {t: dict(c) for t, c in confusion.items()},
        "per_code": per_code,
        "healthy_runs": healthy,
        "healthy_warning_rate": healthy_alarms / healthy if healthy else 0.0,
        "wrong": wrong,
    }


def print_report(r: dict[str, Any]) -> bool:
    ok = r["accuracy"] >= TARGETS["accuracy"]
    print(f"\nverdict accuracy: {r['accuracy']:.1%} of {r['runs']} runs (target ≥ {TARGETS['accuracy']:.0%})")
    short = {v: v.replace("underfitting.", "uf.") for v in VERDICTS}
    print("confusion (rows: label, columns: diagnosis)")
    print(" " * 18 + "".join(f"{short[v]:>14s}" for v in VERDICTS))
    for t in VERDICTS:
        row = r["confusion"].get(t, {})
        print(f"{short[t]:18s}" + "".join(f"{row.get(v, 0):14d}" for v in VERDICTS))
    print("\nfindings: precision / recall (support = labelled runs, predicted = diagnosed runs)")
    for code, m in r["per_code"].items():
        p, rec = m["precision"], m["recall"]
        meets = (p is None or p >= TARGETS["precision"]) and (rec is None or rec >= TARGETS["recall"])
        ok &= meets
        fmt = lambda x: "  n/a" if x is None else f"{x:5.2f}"  # noqa: E731
        print(
            f"  {'ok  ' if meets else 'MISS'} {code:30s} {fmt(p)} / {fmt(rec)}   support {m['support']:3d}  predicted {m['predicted']:3d}"
        )
    rate = r["healthy_warning_rate"]
    ok &= rate <= TARGETS["healthy_warnings"]
    print(
        f"\nwarnings (or a verdict) on healthy runs: {rate:.1%} of {r['healthy_runs']} (target ≤ {TARGETS['healthy_warnings']:.0%})"
    )
    if r["wrong"]:
        print("\nwrong verdicts:")
        for case_id, truth, got in r["wrong"]:
            print(f"  {case_id:45s} label {truth:26s} diagnosis {got}")
    return ok


# ----- remedies ----------------------------------------------------------------------------------
def remedy_outcome(case_id: str, patch: dict[str, Any]) -> dict[str, Any]:
    import torch

    from benchmarks.diagnosis.engine import train
    from benchmarks.diagnosis.label import CASES

    torch.set_num_threads(1)
    case = CASES[case_id]
    result = train(case.spec, case.data, patch)
    result.pop("train_curve"), result.pop("val_curve")
    return result


def improved(verdict: str, before: dict[str, Any], after: dict[str, Any]) -> bool:
    """What the verdict is about got better (by at least 1%, past rounding): a finite loss after
    divergence; the training loss for underfitting; for overfitting, the validation loss of the model
    the remedy delivers (its best checkpoint) against the model the overfit run ended with."""
    if verdict == "diverged":
        return not after["diverged"]
    b, a = {
        "overfitting": (number(before["val_loss"]), number(after["best_val_loss"])),
    }.get(verdict, (number(before["train_loss"]), number(after["train_loss"])))
    return math.isfinite(a) and (not math.isfinite(b) or a <= 0.99 * b)


def improved_on_best(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Overfitting, the stricter reading: better than the overfit run's own best checkpoint."""
    return number(after["best_val_loss"]) <= 0.99 * number(before["best_val_loss"])


def remedies(cases: list[Case], predictions: dict[str, Any], workers: int) -> float:
    from benchmarks.diagnosis.label import load_outcomes

    outcomes = load_outcomes()
    diagnosed = [c for c in cases if predictions[c.id]["verdict"] != "good_fit"]
    todo = [c for c in diagnosed if predictions[c.id]["patch"]]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        after = dict(
            zip(
                [c.id for c in todo],
                pool.map(remedy_outcome, [c.id for c in todo], [predictions[c.id]["patch"] for c in todo]),
                strict=True,
            )
        )
    good, by_verdict = 0, defaultdict(Counter)
    print("\nremedies: the offered patch applied and the run repeated")
    for case in todo:
        verdict = predictions[case.id]["verdict"]
        ok = improved(verdict, outcomes[case.id]["run"], after[case.id])
        good += ok
        by_verdict[verdict]["improved" if ok else "not"] += 1
        if verdict == "overfitting":
            by_verdict[verdict]["beats the run's best checkpoint"] += improved_on_best(
                outcomes[case.id]["run"], after[case.id]
            )
        if not ok:
            print(
                f"  no improvement: {case.id:45s} {verdict:26s} patch {json.dumps(predictions[case.id]['patch'])}"
            )
    for verdict, counts in sorted(by_verdict.items()):
        print(f"  {verdict:26s} {dict(counts)}")
    unpatched = Counter(predictions[c.id]["verdict"] for c in diagnosed if not predictions[c.id]["patch"])
    print(f"  no fix offered (the API offers no remedy): {dict(unpatched)}")
    rate = good / len(todo) if todo else 1.0
    print(
        f"remedy improved what its verdict is about in {good}/{len(todo)} = {rate:.1%} (target ≥ {TARGETS['remedies']:.0%})"
    )
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--split", choices=("dev", "test", *(name for name, _, _ in LATER_SPLITS), "all"), default="test"
    )
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 2))
    parser.add_argument(
        "--remedies", action="store_true", help="also rerun each diagnosed run with its remedy"
    )
    parser.add_argument("--family", nargs="*", help="only these families")
    parser.add_argument("--collect-only", action="store_true", help="train and cache the evidence, no report")
    args = parser.parse_args()
    labels = json.loads(LABELS.read_text()) if LABELS.exists() else {}
    cases = [
        c
        for c in all_cases()
        if (c.id in labels or args.collect_only)
        and (args.split == "all" or c.split == args.split)
        and (not args.family or c.family in args.family)
    ]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        cached = dict(zip([c.id for c in cases], pool.map(collect, cases, chunksize=1), strict=True))
    if args.collect_only:
        return 0
    predictions = {c.id: predict(c, cached[c.id]) for c in cases}
    ok = print_report(report(cases, labels, predictions))
    if args.remedies:
        ok &= remedies(cases, predictions, args.workers) >= TARGETS["remedies"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
