"""Writes docs/jobspec.md, the JobSpec reference, from the pydantic models in models/spec.py.

    .venv/bin/python docs/generate_jobspec.py          # rewrite docs/jobspec.md
    .venv/bin/python docs/generate_jobspec.py --check  # exit 1 if it is out of date

Field names, types, defaults and bounds are read from the models, so they cannot drift; the one line
of meaning per field is kept here, in MEANINGS, and a field without one stops the generator (and
tests/test_first_hour_docs.py), so a new field cannot be added without saying what it does.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.spec import BUILTIN_DATASETS, GENERATOR_DEFAULTS, JobSpec  # noqa: E402

OUTPUT = ROOT / "docs" / "jobspec.md"

MEANINGS: dict[str, str] = {
    "name": "A label for lists and the dashboard; not unique.",
    "seed": "Seeds the split, the initialization, the batch order and every noise source: same spec, same run.",
    "tags": "Free key/value labels; `GET /v1/jobs?tag=key:value` filters on them.",
    "data": "What to train on, and how it is split, corrupted and scaled.",
    "data.dataset": "A built-in dataset (listed below), or an uploaded dataset's id or name. The only required field.",
    "data.params": "Generator parameters of a synthetic dataset (listed below); other datasets take none.",
    "data.task": "`auto` decides from the labels; `regression` on class labels is allowed, and diagnosed (`label_encoding`).",
    "data.split": "Fractions of the rows held out, per seed (stratified for classification).",
    "data.split.val": "Validation fraction: model selection, early stopping and the best checkpoint use it only.",
    "data.split.test": "Test fraction, reported and never used to choose anything.",
    "data.test_dataset": "A separate test set (an uploaded dataset's id or name); a big gap to validation is diagnosed (`mismatch`).",
    "data.train_size": "Keep at most this many training rows (after the split).",
    "data.label_noise": "Fraction of training labels replaced by random ones.",
    "data.input_noise": "Standard deviation of Gaussian noise added to training inputs.",
    "data.scaling": "Feature scaling, fitted on the training split only.",
    "data.shuffle": "Shuffle the training rows every epoch; training unshuffled on ordered data is diagnosed.",
    "data.augment": "Image augmentation of every training batch, on the device (image datasets only: digits or an uploaded image dataset). Drawn from the job's seed and the step: reproducible, and exact across a resume.",
    "data.augment.random_crop": "Pad each side by this many pixels (zeros: the channel mean once normalized), then crop back at a random offset; 0: off.",
    "data.augment.hflip": "Mirror each image left-right with probability 1/2.",
    "model": "The network.",
    "model.arch": "`mlp`, `linear`, `cnn`, `resnet18`/`resnet34`/`resnet50` (torchvision's, untrained; a 3×3 stride-1 stem without max-pooling for images up to 64×64), or an arch a live worker's `saddle.models` entry point provides (docs/models.md; `GET /v1/architectures` lists them). Anything else is a 422.",
    "model.hidden": "Widths of the hidden layers (mlp; the dense head of a cnn). Not used by `linear`.",
    "model.activation": "Activation after each hidden layer.",
    "model.norm": "Batch or layer normalization in each hidden layer; running statistics are used at evaluation. A resnet takes batch or none.",
    "model.norm_position": "Where the norm sits: before or after the activation. Only with a norm.",
    "model.dropout": "Dropout after each hidden layer: one rate, or one per layer of `hidden`. A resnet takes one rate, before its classifier.",
    "model.init": "Weight initialization.",
    "model.init.weights": "The scheme for weight matrices; `default` is PyTorch's.",
    "model.init.std": "Standard deviation for `weights: normal` (default 0.01).",
    "model.init.bias": "A constant for every bias; null keeps the scheme's.",
    "model.channels": "cnn only: channels of each 3×3 conv block (conv, activation, 2×2 pooling).",
    "init_from": "Fine-tuning: start from another job's checkpoint (same shapes), optionally freezing layers.",
    "init_from.job": "The job to start from (its id, in this project).",
    "init_from.checkpoint": "Its best (by validation loss) or its last checkpoint.",
    "init_from.freeze": "Layers to keep fixed, by parameter name prefix: `blocks.0` is an MLP's first hidden layer, `head` its output layer.",
    "optimizer": "The optimizer; each reads only its own fields.",
    "optimizer.name": "sgd, adam, adamw, rmsprop or adagrad (fused kernels on a CPU for all but rmsprop).",
    "optimizer.lr": "Learning rate (the peak, with a schedule or warm-up).",
    "optimizer.momentum": "sgd and rmsprop: momentum.",
    "optimizer.nesterov": "sgd with momentum > 0: Nesterov momentum.",
    "optimizer.betas": "adam and adamw: decay rates of the moment estimates.",
    "optimizer.eps": "adam, adamw, rmsprop, adagrad: the denominator's epsilon.",
    "optimizer.weight_decay": "Decoupled for adamw, added to the gradient otherwise (prefer `regularization.l2`).",
    "schedule": "The learning-rate schedule, after warm-up; each reads only its own fields.",
    "schedule.name": "constant, step, cosine, exponential, or plateau (on validation loss).",
    "schedule.warmup_epochs": "Linear warm-up to `optimizer.lr` over this many epochs (fractions allowed); the schedule starts after it.",
    "schedule.step_epochs": "step: multiply the rate by `gamma` every this many epochs.",
    "schedule.gamma": "step, exponential, plateau: the decay factor.",
    "schedule.min_lr": "cosine: the rate it ends at.",
    "schedule.patience": "plateau: epochs without improvement before the rate decays.",
    "regularization": "Penalties and limits on training.",
    "regularization.l2": "γ in L + ½γΣw²: weights only, never biases or norm parameters.",
    "regularization.gradient_noise": "Annealed Gaussian gradient noise g ← g + N(0, σ_t²), σ_t = c / (1 + t)^r.",
    "regularization.gradient_noise.c": "Noise scale c; 0 turns it off.",
    "regularization.gradient_noise.r": "Decay exponent r over the update count t.",
    "regularization.early_stopping": "Stop when validation loss has not improved for `patience` epochs; null: never.",
    "regularization.early_stopping.patience": "Epochs without improvement before stopping.",
    "regularization.early_stopping.min_delta": "The smallest decrease of validation loss that counts as improvement.",
    "regularization.grad_clip": "Clip the gradient's total norm to this value; null: no clipping.",
    "batch_size": "Training rows per update.",
    "epochs": "Passes over the training data (the sum of the curriculum's stages, if any).",
    "curriculum": "Ordered stages, e.g. clean and easy data first, then noisy and hard; empty: one stage.",
    "curriculum[].epochs": "How long this stage lasts.",
    "curriculum[].label_noise": "Fraction of labels replaced by random ones in this stage.",
    "curriculum[].input_noise": "Input noise (standard deviation) in this stage.",
    "curriculum[].fraction": "The easiest fraction of the training rows (judged by a closed-form ridge fit) used in this stage.",
    "curriculum[].lr": "This stage's learning rate; null: the optimizer's.",
    "checkpoints": "What is saved (atomically, loaded with weights_only) for resuming and fine-tuning.",
    "checkpoints.every_epochs": "A periodic checkpoint every this many epochs: a resumed job restarts from the newest.",
    "checkpoints.keep_best": "Also keep the checkpoint with the best validation loss.",
    "analysis": "What is measured besides the losses.",
    "analysis.hessian": "Hessian spectra: at initialization, periodically, at the best checkpoint and at the end.",
    "analysis.hessian.every_epochs": "A spectrum every this many epochs; 0: only at initialization, best and end.",
    "analysis.hessian.top_k": "Largest eigenvalues (Lanczos).",
    "analysis.hessian.bottom_k": "Smallest eigenvalues: a negative one beyond the noise floor marks a saddle.",
    "analysis.hessian.trace": "Estimate the trace (Hutchinson, with its standard error).",
    "analysis.hessian.density": "Estimate the spectral density (stochastic Lanczos quadrature).",
    "analysis.hessian.samples": "Training rows the Hessian is taken over.",
    "analysis.hessian.enabled": "false: no spectra at all (the curvature findings then have less evidence).",
    "analysis.probes": "When the training loss is large, short probe runs (a standard recipe, a larger model; at most a quarter of the job's compute) tell model bias from optimization trouble.",
    "analysis.diagnostics": "Per-update gradient norms, per-layer norms and unit statistics: what the diagnosis reads.",
    "resources": "Where and for how long it may run.",
    "resources.device": "auto: the worker's GPU if it has one; cpu or cuda to insist.",
    "resources.max_minutes": "The job stops (failed, with the reason) after this long.",
    "resources.cuda_graphs": "On CUDA, replay each update as one CUDA graph where that is bit-identical to eager.",
    "resources.precision": "Mixed precision: the forward pass and loss under autocast in this dtype (weights, optimizer and Hessian spectra stay fp32); fp16 adds a gradient scaler and needs CUDA.",
}

# Rules models/spec.py checks across fields (its model validators); kept beside the table they qualify.
CROSS_FIELD_RULES = [
    "`data.split.val + data.split.test` is below 0.9, so training data remains.",
    "`data.params` only for generated datasets, and only their parameters (listed below).",
    "`model.dropout` as a list has one rate per entry of `model.hidden`.",
    "`optimizer.nesterov` needs `optimizer.name: sgd` and `momentum > 0`; `betas` lie in [0, 1).",
    "`curriculum` stages last `epochs` epochs in total.",
    "`model.arch: linear` takes no `model.norm`.",
    "`schedule.warmup_epochs` is shorter than `epochs`.",
    "`data.augment` only on images; `random_crop` below the images' height and width (checked at submission for uploads).",
]


def unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """Annotated[T, Field(...)] → (T, its constraints)."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        found = []
        for item in extra:
            found.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        return base, found
    return annotation, []


def type_name(annotation: Any, constraints: tuple[Any, ...] = ()) -> str:
    """``annotation`` in words, with its bounds: ``float in [0, 1)``, ``str of 1–64 chars``. The
    field's own ``constraints`` belong to its non-null type."""
    annotation, inner = unwrap(annotation)
    constraints = (*constraints, *inner)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " · ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        text = " or ".join(type_name(a, constraints if len(kinds) == 1 else ()) for a in kinds)
        return f"{text} or null" if type(None) in args else text
    if origin is list:
        return f"list of {type_name(args[0])}" + length_text(constraints, "items")
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}" + length_text(constraints, "entries")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    name = getattr(annotation, "__name__", str(annotation))
    if annotation is str:
        return name + length_text(constraints, "chars")
    return name + range_text(constraints)


def range_text(constraints: tuple[Any, ...]) -> str:
    """`` in [0, 1)``, `` ≥ 0``, or nothing."""
    low = next(((number(c.ge), "[") for c in constraints if isinstance(c, at.Ge)), None)
    low = low or next(((number(c.gt), "(") for c in constraints if isinstance(c, at.Gt)), None)
    high = next(((number(c.le), "]") for c in constraints if isinstance(c, at.Le)), None)
    high = high or next(((number(c.lt), ")") for c in constraints if isinstance(c, at.Lt)), None)
    if low and high:
        return f" in {low[1]}{low[0]}, {high[0]}{high[1]}"
    if low:
        return f" {'≥' if low[1] == '[' else '>'} {low[0]}"
    if high:
        return f" {'≤' if high[1] == ']' else '<'} {high[0]}"
    return ""


def length_text(constraints: tuple[Any, ...], unit: str) -> str:
    """`` of 1–64 chars``, `` of ≤ 64 items``, or nothing."""
    low = next((c.min_length for c in constraints if isinstance(c, at.MinLen)), None)
    high = next((c.max_length for c in constraints if isinstance(c, at.MaxLen)), None)
    if low and high:
        return f" of {low}–{high} {unit}" if low != high else f" of {low} {unit}"
    if high:
        return f" of ≤ {high} {unit}"
    if low:
        return f" of ≥ {low} {unit}"
    return ""


def number(value: float) -> str:
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return f"{value:g}"


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(its fields' defaults)"
    return f"`{json.dumps(value)}`"


def nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The object type a field holds (directly, optionally, or as list items), and whether a list."""
    annotation, _ = unwrap(annotation)
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate, typing.get_origin(annotation) is list
    return None, False


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    out = []
    for name, field in model.model_fields.items():
        path = prefix + name
        out.append((path, field))
        inner, is_list = nested_model(field.annotation)
        if inner is not None:
            out.extend(rows(inner, path + ("[]." if is_list else ".")))
    return out


def render() -> str:
    table = rows(JobSpec)
    missing = [path for path, _ in table if path not in MEANINGS]
    if missing:
        raise SystemExit(
            f"docs/generate_jobspec.py: no meaning for {', '.join(missing)} (add them to MEANINGS)"
        )
    stale = sorted(set(MEANINGS) - {path for path, _ in table})
    if stale:
        raise SystemExit(f"docs/generate_jobspec.py: MEANINGS names fields the spec no longer has: {stale}")
    lines = [
        "# JobSpec reference",
        "",
        "<!-- Generated by docs/generate_jobspec.py from models/spec.py; do not edit by hand. -->",
        "",
        "A job is one JobSpec, sent as JSON to `POST /v1/jobs` (or as YAML/JSON with `saddle submit FILE`).",
        "Every field is optional except `data.dataset`; unknown fields are refused, and a bad value is a 422",
        "naming the field. `examples/digits.yaml` is a complete job; `examples/README.md` lists the other",
        "examples (a sweep, the studies, a fine-tuning job).",
        "",
        "| field | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for path, field in table:
        kind = type_name(field.annotation, tuple(field.metadata))
        lines.append(f"| `{path}` | {kind} | {default_text(field)} | {MEANINGS[path]} |")
    lines += ["", "## Checked across fields", ""]
    lines += [f"- {rule}" for rule in CROSS_FIELD_RULES]
    lines += ["", "## Built-in datasets", ""]
    lines += [
        f"`{name}`"
        + (
            " — parameters " + ", ".join(f"`{k}` (default {v})" for k, v in GENERATOR_DEFAULTS[name].items())
            if name in GENERATOR_DEFAULTS
            else ""
        )
        + "  "
        for name in BUILTIN_DATASETS
    ]
    lines += [
        "",
        "An uploaded dataset (`saddle dataset upload FILE --name NAME`: a CSV with a header row and a",
        "label column, an NPZ with arrays `X` and `y`, or images: a ZIP of `class_name/*.png|jpg`, a ZIP",
        "of an MNIST-family IDX pair, CIFAR-10/100 binary batches) is used by its id or its name (unique",
        "in its project; the API stores the id when the job is submitted).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run .venv/bin/python docs/generate_jobspec.py")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
