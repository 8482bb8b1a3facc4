"""Counterfactual labels: what each run's diagnosis *should* be, decided by rerunning it differently.

For every case, the run itself and its counterfactual variants (other rates, a tuned optimizer, a
fixed initialization/scaling/shuffling, longer training, larger and constrained models, a decaying
schedule, ...) are trained quietly through the service's training loop. Their outcomes are cached
in ``outcomes.json`` (keyed by case and variant, with the case's fingerprint, so a rerun repeats
only what changed); ``labels.json`` is derived from them by the definitions in README.md.

    .venv/bin/python -m benchmarks.diagnosis.label [--workers 2] [--only FAMILY ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks.diagnosis.cases import SEEDS, Case, all_cases
from worker.diagnosis.rules import rose_from_best

HERE = Path(__file__).resolve().parent
OUTCOMES = HERE / "outcomes.json"
LABELS = HERE / "labels.json"

# ----- the counterfactual variants of a run -------------------------------------------------------
RECIPE = {
    "data": {"scaling": "standardize", "shuffle": True},
    "model": {"init": {"weights": "default", "std": None, "bias": None}},
    "schedule": {"name": "constant", "warmup_epochs": 0},
    "regularization": {"gradient_noise": {"c": 0.0}},
}
LOWER_RATES = ("lr_x0.1", "lr_x0.01", "lr_x0.001")
HIGHER_RATES = ("lr_x10", "lr_x100", "lr_x1000")


def _with(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    from models.patch import merge_patch

    return merge_patch(base, extra)


def variants(case: Case) -> dict[str, dict[str, Any]]:
    """Patches of the run's spec, each a counterfactual the labels compare against."""
    s = case.spec
    model, optimizer = s["model"], s["optimizer"]
    lr, epochs = optimizer["lr"], s["epochs"]
    hidden = model.get("hidden", [64]) if model.get("arch", "mlp") != "linear" else []
    out: dict[str, dict[str, Any]] = {}
    for name in (*LOWER_RATES, *HIGHER_RATES):
        factor = float(name.removeprefix("lr_x"))
        if lr * factor <= 1e3:
            out[name] = {"optimizer": {"lr": lr * factor}}
    for rate in (1e-3, 1e-2):  # the same model, better optimized
        out[f"adam_{rate:g}"] = _with(RECIPE, {"optimizer": {"name": "adam", "lr": rate, "momentum": 0.0}})
    if (model.get("init") or {}) not in ({}, {"weights": "default"}):
        out["fix_init"] = {"model": {"init": {"weights": "default", "std": None, "bias": None}}}
    if s["data"].get("scaling", "none") == "none":
        # Standardized, at the run's rate and at rates a standardized surface allows: a rate chosen
        # to survive unscaled features is far too low once they are scaled.
        for factor in (1, 10, 100, 1000):
            if lr * factor <= 1e3:
                name = "fix_scaling" if factor == 1 else f"fix_scaling_x{factor}"
                out[name] = {"data": {"scaling": "standardize"}, "optimizer": {"lr": lr * factor}}
    if s["data"].get("shuffle", True) is False:
        out["fix_shuffle"] = {"data": {"shuffle": True}}
    out["longer"] = {"epochs": epochs * (4 if epochs < 100 else 2)}
    out["cosine"] = {"schedule": {"name": "cosine"}}
    bigger = [min(512, 2 * h) for h in hidden] or [64]
    larger = {"model": {"arch": "mlp", "hidden": [*bigger, bigger[-1]], "activation": "relu", "dropout": 0.0}}
    if model.get("arch") == "cnn":
        larger = {"model": {"hidden": [*bigger, bigger[-1]], "activation": "relu", "dropout": 0.0}}
    for rate in (1e-3, 1e-2):  # a larger, nonlinear model, well optimized
        out[f"larger_adam_{rate:g}"] = _with(
            _with(RECIPE, larger), {"optimizer": {"name": "adam", "lr": rate, "momentum": 0.0}}
        )
    if len(hidden) >= 2:  # the checklist's test: a shallower model that trains better means optimization
        out["shallower"] = {"model": {"hidden": hidden[:1], "dropout": 0.0}}
    out["l2"] = {"regularization": {"l2": 1e-2}}
    if hidden and model.get("arch") == "mlp":
        out["dropout"] = {"model": {"dropout": 0.5}}
        out["smaller"] = {"model": {"hidden": [max(2, h // 4) for h in hidden]}}
    if model.get("arch") != "linear":
        out["linear_model"] = {"model": {"arch": "linear", "norm": "none"}}
    if len(hidden) >= 2 and model.get("activation") in ("sigmoid", "tanh"):
        out["relu_kaiming"] = {"model": {"activation": "relu", "init": {"weights": "kaiming", "std": None}}}
    if len(hidden) >= 2:
        out["clip"] = {"regularization": {"grad_clip": 1.0}}
    if s["data"].get("test_dataset"):
        out["in_distribution"] = {"data": {"test_dataset": None}}
    return out


def needed(case: Case, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The variants a label needs, given what is known: after a divergence only the lower rates;
    the constrained models only once the run is known not to underfit (overfitting (b))."""
    if entry.get("run") is None:
        return {}
    every = variants(case)
    if entry["run"]["diverged"]:
        return {n: p for n, p in every.items() if n in LOWER_RATES}
    first = {n: p for n, p in every.items() if n not in CONSTRAINED or n in CONTAINED}
    if any(n not in entry["variants"] for n in first):
        return first
    verdict = label(case, _outcomes_of(case, entry), chance_loss(case.id), partial=True)["verdict"]
    return every if not verdict.startswith("underfitting") else first


def _outcomes_of(case: Case, entry: dict[str, Any]) -> dict[str, Any]:
    return {case.id: entry} | {k: v for k, v in _ALL.items() if k != case.id}


_ALL: dict[str, Any] = {}  # the outcomes being computed, for the seed-to-seed spread


SAME_MODEL = (
    *LOWER_RATES,
    *HIGHER_RATES,
    "adam_0.001",
    "adam_0.01",
    "fix_init",
    "fix_scaling",
    "fix_shuffle",
    "longer",
    "fix_scaling_x10",
    "fix_scaling_x100",
    "fix_scaling_x1000",
)
# A shallower or linear model represents no more than the run's model can (see ``contained``): if
# one trains better, the run's optimizer fell short, not its capacity.
CONTAINED = ("shallower", "linear_model")
LARGER = ("larger_adam_0.001", "larger_adam_0.01")
CONSTRAINED = ("l2", "dropout", "smaller", "linear_model")


# ----- running them ------------------------------------------------------------------------------
def _run(case_id: str, variant: str | None, patch: dict[str, Any] | None) -> tuple[str, str | None, dict]:
    import torch

    from benchmarks.diagnosis.engine import train

    torch.set_num_threads(1)
    case = CASES[case_id]
    result = train(case.spec, case.data, patch, test=variant in (None, "in_distribution"))
    if variant is not None:
        result.pop("train_curve", None)
        result.pop("val_curve", None)
    return case_id, variant, result


CASES = {c.id: c for c in all_cases()}


def load_outcomes() -> dict[str, Any]:
    return json.loads(OUTCOMES.read_text()) if OUTCOMES.exists() else {}


def save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_finite_json(data), indent=None, sort_keys=True, separators=(",", ":")))
    tmp.replace(path)


def _finite_json(value: Any) -> Any:
    # JSON has no infinity; a diverged outcome's losses are stored as the string "inf".
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    return value


def number(value: Any) -> float:
    return float(value) if value is not None else math.nan


def pending(cases: list[Case], outcomes: dict[str, Any]) -> list[tuple[str, str | None, dict | None]]:
    todo = []
    for case in cases:
        entry = outcomes.get(case.id)
        if entry is None or entry.get("fingerprint") != case.fingerprint():
            outcomes[case.id] = entry = {"fingerprint": case.fingerprint(), "run": None, "variants": {}}
        if entry["run"] is None:
            todo.append((case.id, None, None))
        for name, patch in needed(case, entry).items():
            if name not in entry["variants"]:
                todo.append((case.id, name, patch))
    return todo


def interleaved(todo: list[tuple[str, str | None, dict | None]]) -> list[tuple[str, str | None, dict | None]]:
    """Cases of every family in turn (seeds first), so that a partial run has labels of each."""
    rank: dict[str, tuple[int, int]] = {}
    seen: dict[str, int] = {}
    for case_id, _, _ in todo:
        if case_id not in rank:
            family = CASES[case_id].family
            seen[family] = seen.get(family, -1) + 1
            rank[case_id] = (seen[family], len(rank))
    return sorted(todo, key=lambda item: rank[item[0]])


def compute(cases: list[Case], workers: int) -> dict[str, Any]:
    """Rounds of trainings until every label has what it needs (the run, then its variants, then
    the constrained models where the label asks for them)."""
    outcomes = load_outcomes()
    _ALL.clear()
    _ALL.update(outcomes)
    # Deciding what is missing prepares every case's data (a few minutes on 2 cores): say so.
    print(f"{len(cases)} cases: finding the trainings their labels still need", flush=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        while todo := interleaved(pending(cases, outcomes)):
            print(f"{len(todo)} trainings to run", flush=True)
            run_round(pool, todo, outcomes)
    save(OUTCOMES, outcomes)
    return outcomes


def run_round(pool: ProcessPoolExecutor, todo: list, outcomes: dict[str, Any]) -> None:
    start, last_save = time.monotonic(), time.monotonic()
    for done, future in enumerate(as_completed([pool.submit(_run, *item) for item in todo]), start=1):
        case_id, variant, result = future.result()
        entry = outcomes[case_id]
        if variant is None:
            entry["run"] = result
        else:
            entry["variants"][variant] = result
        if time.monotonic() - last_save > 60:
            save(OUTCOMES, outcomes)
            last_save = time.monotonic()
            rate = done / (time.monotonic() - start)
            print(
                f"  {done}/{len(todo)} ({rate:.1f}/s, {(len(todo) - done) / rate / 60:.0f} min left)",
                flush=True,
            )


# ----- labels from outcomes ------------------------------------------------------------------------
MATERIAL = 0.10  # of the chance-level loss: an improvement smaller than this is not a large loss
RELATIVE = 0.70  # "better" is at most 70% of the run's loss (30% lower)


class DataFacts(NamedTuple):
    features: int
    outputs: int
    val_rows: int
    chance: float  # the chance-level loss


@functools.cache
def data_facts(case_id: str) -> DataFacts:
    """What the labels read of a case's prepared data, prepared once per case: labelling asks for
    it for every case in every round."""
    from benchmarks.diagnosis.engine import prepared
    from models.spec import JobSpec
    from worker.diagnosis.reference import chance_loss as chance

    case = CASES[case_id]
    data = prepared(JobSpec.model_validate(case.spec), case.data)
    y = data.y_train.astype(np.int64) if data.task == "classification" else data.y_train
    return DataFacts(
        data.X_train.shape[1], data.n_outputs, len(data.y_val), chance(y, data.task, data.n_classes)
    )


def chance_loss(case_id: str) -> float:
    return data_facts(case_id).chance


@functools.cache
def spread_seeds() -> dict[str, list[str]]:
    """The ids of each config's runs at seeds 0-2, in case order: built once, since labelling asks
    for a spread of every counterfactual of every run (a scan of all 8,436 runs per question made
    deriving the labels take about 17 minutes; with this index, under 4)."""
    by_config: dict[str, list[str]] = {}
    for case in CASES.values():
        if case.seed in SEEDS:
            by_config.setdefault(case.config, []).append(case.id)
    return by_config


def spread(outcomes: dict[str, Any], case: Case, variant: str | None, metric: str) -> float:
    """Seed-to-seed standard deviation of a variant's metric over the config's seeds 0-2 (a
    property of the config: the holdout seed borrows it rather than changing it)."""
    values = []
    for other_id in spread_seeds().get(case.config, []):
        if other_id not in outcomes:
            continue
        entry = outcomes[other_id]
        got = entry["run"] if variant is None else entry["variants"].get(variant)
        if got is not None and math.isfinite(number(got[metric])):
            values.append(number(got[metric]))
    return float(np.std(values, ddof=1)) if len(values) >= 2 else 0.0


def better(
    run: float,
    cf: float,
    chance: float,
    spread_: float,
    material: float = MATERIAL,
    relative: float = RELATIVE,
) -> bool:
    """cf beats run: at most ``relative`` of it, lower by a material share of chance and by twice the spread."""
    if not math.isfinite(cf):
        return False
    if not math.isfinite(run):
        return True
    return cf <= relative * run and run - cf >= max(material * chance, 2 * spread_)


def label(case: Case, outcomes: dict[str, Any], chance: float, partial: bool = False) -> dict[str, Any]:
    """The verdict and findings the run should get (``partial``: before the constrained models ran,
    enough to tell whether it underfits)."""
    entry = outcomes[case.id]
    run, cfs = entry["run"], entry["variants"]

    def beats(
        names: tuple[str, ...],
        metric: str = "train_loss",
        material: float = MATERIAL,
        relative: float = RELATIVE,
    ) -> list[str]:
        # A lower training loss counts only if the model it ends with is at least as good on held-out
        # rows as the run ever was: fitting training rows further by memorizing them is not what a
        # large training loss is about.
        return [
            n
            for n in names
            if n in cfs
            and better(
                number(run[metric]),
                number(cfs[n][metric]),
                chance,
                spread(outcomes, case, n, metric),
                material,
                relative,
            )
            and (metric != "train_loss" or number(cfs[n]["val_loss"]) <= number(run["best_val_loss"]))
        ]

    why: dict[str, Any] = {"chance_loss": chance}
    findings: set[str] = set()
    if beats(LOWER_RATES) or (
        run["diverged"] and any(not cfs[n]["diverged"] for n in LOWER_RATES if n in cfs)
    ):
        findings.add("learning_rate.too_high")
        why["lower_rate"] = beats(LOWER_RATES) or "a lower rate stays finite"
    if beats(HIGHER_RATES):
        findings.add("learning_rate.too_low")
        why["higher_rate"] = beats(HIGHER_RATES)
    if run["diverged"]:
        return {"verdict": "diverged", "findings": sorted(findings), "why": why}
    findings |= structural_findings(case, run, beats, outcomes)
    optimization, larger = beats(SAME_MODEL) + beats(contained(case)), beats(LARGER)
    if optimization:
        verdict = "underfitting.optimization"
        why["better_optimized"] = optimization
    elif larger:
        verdict = "underfitting.model_bias"
        why["larger_model"] = larger
    elif u_curve(case, run):
        verdict, why["u_curve"] = "overfitting", u_curve(case, run)
    elif partial:
        verdict = "not underfitting"
    elif beats(CONSTRAINED, "best_val_loss", 0.05) and constrained_halves(run, cfs):
        verdict, why["constrained"] = "overfitting", beats(CONSTRAINED, "best_val_loss", 0.05)
    elif mismatched(case, run, cfs, chance):
        verdict = "mismatch"
        why["test_vs_in_distribution"] = [
            number(run["test_loss"]),
            number(cfs["in_distribution"]["test_loss"]),
        ]
    else:
        verdict = "good_fit"
    if verdict == "underfitting.optimization" and flat(run):
        findings.add("plateau.flat_surface")
    if beats(("longer",)) or beats(("longer",), "best_val_loss", 0.02, relative=0.9):
        findings.add("not_converged")
    return {"verdict": verdict, "findings": sorted(findings), "why": why}


def contained(case: Case) -> tuple[str, ...]:
    """The counterfactual models the run's model can represent: its first hidden layer alone, and a
    linear model unless a hidden layer is narrower than the linear map needs (min(inputs, outputs)):
    a 2-unit bottleneck cannot copy a 64 → 10 linear model."""
    model = case.spec["model"]
    if model.get("arch", "mlp") != "mlp":
        return ()
    features, outputs, _ = data_shape(case.id)
    linear_fits = min(model.get("hidden") or [0]) >= min(features, outputs)
    return ("shallower", "linear_model") if linear_fits else ("shallower",)


def data_shape(case_id: str) -> tuple[int, int, int]:
    """(features, outputs, validation rows) of a case's prepared data."""
    facts = data_facts(case_id)
    return facts.features, facts.outputs, facts.val_rows


def constrained_halves(run: dict, cfs: dict) -> bool:
    """Overfitting (b): the validation loss is at least twice what a constrained model reaches."""
    best = min(number(cfs[n]["best_val_loss"]) for n in CONSTRAINED if n in cfs)
    return number(run["best_val_loss"]) >= 2 * best


def u_curve(case: Case, run: dict) -> dict[str, float] | None:
    """Overfitting (a): measured on the run's own curves by the rules' own test
    (``rules.rose_from_best``, the issue's definition plus the validation rows' sampling noise)."""
    val, train = np.array(run["val_curve"], dtype=float), np.array(run["train_curve"], dtype=float)
    return rose_from_best(val, train, data_shape(case.id)[2])


def mismatched(case: Case, run: dict, cfs: dict, chance: float) -> bool:
    """A separate test set ≥ 1.5x worse than the same model on an in-distribution test split."""
    if "in_distribution" not in cfs:
        return False
    test, inside = number(run["test_loss"]), number(cfs["in_distribution"]["test_loss"])
    return test >= 1.5 * inside and test - inside >= 0.05 * chance


def structural_findings(case: Case, run: dict, beats: Any, outcomes: dict[str, Any]) -> set[str]:
    """Findings whose label is a measurement (more exact than the rules') or a counterfactual."""
    found: set[str] = set()
    spec, measured = case.spec, run.get("measured") or {}
    if spec["data"].get("task") == "regression" and case.dataset not in (
        "diabetes",
        "gaussian_regression",
        "up_friedman",
    ):
        found.add("label_encoding")
    if scaling_helps(case, run, outcomes):
        found.add("ill_conditioned_features")
    if beats(("fix_shuffle",)):
        found.add("unshuffled_data")
    if any(v >= 0.5 for v in (measured.get("dead") or {}).values()):
        found.add("dead_units")
    if any(v >= 0.5 for v in (measured.get("saturated") or {}).values()):
        found.add("saturated_units")
    ratio = measured.get("gradient_ratio_at_init")
    if ratio is not None and ratio < 1e-2 and beats(("relu_kaiming",)):
        found.add("vanishing_gradients")
    if ratio is not None and ratio > 1e2 and beats(("clip",)):
        found.add("exploding_gradients")
    point = (measured.get("critical_point") or {}).get("class")
    if point == "saddle":
        found.add("critical_point.saddle")
    elif point == "local_minimum":
        found.add("critical_point.local_minimum")
    if oscillates(run, outcomes[case.id]["variants"].get("cosine"), chance_loss(case.id)):
        found.add("oscillation")
    return found


def flat(run: dict) -> bool:
    """A plateau: the full-batch gradient ended below 1% of its size at initialization, and the
    point is not a saddle (no negative curvature to escape along)."""
    measured = run.get("measured") or {}
    point, start = measured.get("critical_point") or {}, measured.get("grad_norm_at_init")
    if not point or not start:
        return False
    return point["class"] != "saddle" and number(point["grad_norm"]) <= 0.01 * number(start)


SCALED = ("fix_scaling", "fix_scaling_x10", "fix_scaling_x100", "fix_scaling_x1000")


def scaling_helps(case: Case, run: dict, outcomes: dict[str, Any]) -> bool:
    """Ill-conditioned features: standardized, at its best rate, the model trains clearly better
    than unscaled at *its* best rate (the run's own or 10-1000x higher) and ends no worse on
    validation rows than the run's best: the scaling, not the rate, held it back."""
    cfs = outcomes[case.id]["variants"]
    unscaled = [run] + [cfs[n] for n in HIGHER_RATES if n in cfs]
    best_unscaled = min(number(o["train_loss"]) for o in unscaled)
    chance = chance_loss(case.id)
    return any(
        better(best_unscaled, number(cfs[n]["train_loss"]), chance, spread(outcomes, case, n, "train_loss"))
        and number(cfs[n]["val_loss"]) <= number(run["best_val_loss"])
        for n in SCALED
        if n in cfs
    )


def oscillates(run: dict, cosine: dict | None, chance: float) -> bool:
    """Oscillation: over the second half of training the loss rose in at least a third of the
    epochs and its epoch-to-epoch changes have a standard deviation of at least 1% of chance (a
    noise band, not a descent), and the same run with a cosine-decayed rate ends at or below the
    middle of that band (decaying the rate settles it; a run stuck for another reason stays up)."""
    train = np.array(run["train_curve"][1:], dtype=float)
    half = train[len(train) // 2 :]
    if cosine is None or len(half) < 4 or not np.all(np.isfinite(half)):
        return False
    changes = np.diff(half)
    return (
        float(np.mean(changes > 0)) >= 1 / 3
        and float(np.std(changes)) >= 0.01 * chance
        and number(cosine["train_loss"]) <= float(np.median(half))
    )


def all_labels(outcomes: dict[str, Any]) -> dict[str, Any]:
    labels = {}
    _ALL.clear()
    _ALL.update(outcomes)
    for case in CASES.values():
        entry = outcomes.get(case.id)
        if (
            not entry
            or entry.get("run") is None
            or any(n not in entry["variants"] for n in needed(case, entry))
        ):
            continue
        labels[case.id] = label(case, outcomes, chance_loss(case.id)) | {
            "split": case.split,
            "family": case.family,
        }
    return labels


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    parser.add_argument("--only", nargs="*", help="families to (re)compute")
    parser.add_argument("--labels-only", action="store_true", help="derive labels from cached outcomes")
    args = parser.parse_args()
    cases = [c for c in CASES.values() if not args.only or c.family in args.only]
    outcomes = load_outcomes() if args.labels_only else compute(cases, args.workers)
    labels = all_labels(json.loads(json.dumps(outcomes)))
    save(LABELS, labels)
    from collections import Counter

    print(Counter(v["verdict"] for v in labels.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
