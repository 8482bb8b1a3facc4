"""The practitioner's checklist as rules over one run's evidence.

Every threshold is relative: to chance level, to a k-NN reference fitted on the same training split,
to the run's own starting values (initial gradient norm, best validation loss), or to curvature (the
edge of stability 2/λ_max). None is tuned to one dataset. Each rule documents its inputs, its
threshold and why.

Findings come first; the verdict is decided from them:
    diverged                       the loss became NaN/inf or exploded;
    underfitting.optimization      the training loss is large and something kept the optimizer from
                                   the reachable loss (saddle, plateau, vanishing gradients, badly
                                   scaled features, a rate far too low, or it simply had not converged);
    underfitting.model_bias        the training loss is large but the optimizer did its job (converged,
                                   no pathology; for a convex model, convergence alone proves it);
    overfitting                    validation loss turned up from its best while training loss fell;
    mismatch                       validation fine, a separate test set poor;
    good_fit                       none of the above.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from worker.diagnosis.evidence import Evidence

EDGE_OF_STABILITY = 2.0


@dataclass
class Finding:
    code: str
    severity: str  # info | warning | error
    confidence: float
    evidence: dict[str, Any]
    recommendation: str
    patch: dict[str, Any] = field(default_factory=dict)
    kind: str = "finding"
    # Findings that explain a large training loss by optimization trouble.
    blames_optimizer: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("blames_optimizer")
        return out


def confidence(value: float, threshold: float, higher_is_worse: bool = True) -> float:
    """0.5 at the threshold, rising towards 0.99 as the value moves a decade past it."""
    if not (math.isfinite(value) and threshold > 0 and value > 0):
        return 0.9
    ratio = value / threshold if higher_is_worse else threshold / value
    return float(min(0.99, max(0.5, 0.5 + 0.5 * math.tanh(math.log10(max(ratio, 1e-12)) * 2))))


def _r(x: float, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.{digits}g}")


# ----- shared facts ------------------------------------------------------------------------------
@dataclass
class Facts:
    train_loss: np.ndarray
    val_loss: np.ndarray
    chance: float
    window: int  # epochs in the "end of training" window


def facts(ev: Evidence) -> Facts:
    train = ev.series("train/loss")
    val = ev.series("val/loss")
    chance = ev.reference.get("chance_loss") or (math.log(ev.summary.get("data", {}).get("n_classes") or 2))
    # The last fifth of training (at least 3 epochs) is where "has it stopped improving" is judged.
    window = max(3, ev.epochs_run // 5)
    return Facts(train, val if len(val) else train, float(chance), window)


def relative_drop(series: np.ndarray, window: int) -> float:
    """Fractional decrease of a loss over its last ``window`` epochs (positive = still falling)."""
    if len(series) <= window or not np.all(np.isfinite(series[-window - 1 :])):
        return 0.0
    start, end = series[-window - 1], series[-1]
    return float((start - end) / max(abs(start), 1e-12))


def underfit_evidence(ev: Evidence, f: Facts) -> dict[str, Any] | None:
    """Is the training loss large? Judged against chance and against a k-NN reference on held-out rows.

    A model with enough capacity, well optimized, fits its own training rows at least as well as a
    k-NN fits rows it has never seen. So training accuracy below the reference's held-out accuracy
    (by more than two standard errors of that accuracy, and at least 2 points) is a large training
    loss; for regression, a training MSE above the reference's held-out MSE. A training loss within
    10% of chance (the best constant prediction) is large whatever the reference says.
    """
    if not len(f.train_loss):
        return None
    loss = float(f.train_loss[-1])
    out: dict[str, Any] = {
        "train_loss": _r(loss),
        "chance_loss": _r(f.chance),
        "loss_over_chance": _r(loss / f.chance),
    }
    near_chance = loss >= 0.9 * f.chance
    ref = ev.reference
    if ev.classification and "knn_val_accuracy" in ref:
        acc = ev.final("train/accuracy")
        p, n = ref["knn_val_accuracy"], max(1, ref.get("n_held", 1))
        margin = max(0.02, 2 * math.sqrt(max(p * (1 - p), 1e-4) / n))
        out |= {"train_accuracy": _r(acc), "reference_val_accuracy": _r(p), "margin": _r(margin)}
        below = acc < p - margin
    elif "knn_val_loss" in ref:
        out["reference_val_loss"] = _r(ref["knn_val_loss"])
        below = loss > 1.1 * ref["knn_val_loss"]
    else:
        below = False
    out["near_chance"] = near_chance
    return out if (near_chance or below) else None


# ----- individual findings -------------------------------------------------------------------------
def diverged(ev: Evidence) -> Finding | None:
    step = ev.summary.get("diverged_step")
    if step is None:
        return None
    losses = ev.step_series.get("train/batch_loss", np.zeros(0))
    finite = losses[: max(0, step - 1)]
    finite = finite[np.isfinite(finite)]
    evidence = {
        "step": step,
        "epoch": round(step / max(1, len(losses)) * ev.epochs_run, 2) if len(losses) else None,
        "first_loss": _r(float(finite[0])) if len(finite) else None,
        "last_finite_loss": _r(float(finite[-1])) if len(finite) else None,
    }
    return Finding(
        "diverged",
        "error",
        0.99,
        evidence,
        f"The loss became NaN or infinite at update {step}; training stopped there.",
        kind="verdict",
    )


def initial_sharpness(ev: Evidence) -> tuple[float | None, dict[str, Any] | None]:
    spectra = [s for s in ev.spectra if s.get("top")]
    if not spectra:
        return None, None
    first = spectra[0]
    return float(first["top"][0]), first


def learning_rate_too_high(ev: Evidence, div: Finding | None) -> Finding | None:
    """lr·λ_max above 2 leaves gradient descent unstable along the top eigenvector (the edge of
    stability); a loss that grew from its first value before it blew up says the same without
    curvature."""
    lr = ev.spec.optimizer.lr
    lam, spec_row = initial_sharpness(ev)
    losses = ev.step_series.get("train/batch_loss", np.zeros(0))
    grew = False
    if len(losses) >= 3:
        head = losses[: max(3, len(losses) // 10)]
        finite = head[np.isfinite(head)]
        grew = len(finite) >= 2 and (finite.max() > 2 * finite[0] or not np.isfinite(head).all())
    beyond = lam is not None and lr * lam > EDGE_OF_STABILITY
    if not (div and (grew or beyond)):
        return None
    suggested = (1.0 / lam) if lam else lr / 10
    suggested = float(f"{min(suggested, lr / 3):.2g}")
    evidence = {"lr": lr, "loss_grew_before_divergence": bool(grew)}
    if lam is not None:
        evidence |= {
            "lambda_max_initial": _r(lam),
            "lr_times_lambda_max": _r(lr * lam),
            "edge_of_stability": 2.0,
            "spectrum_epoch": spec_row.get("epoch"),
        }
    return Finding(
        "learning_rate.too_high",
        "error",
        confidence(lr * lam, 2.0) if lam else 0.8,
        evidence,
        f"The learning rate {lr:g} is too high for this loss surface"
        + (f": lr·λ_max = {lr * lam:.3g} is past the stable limit 2" if lam else "")
        + f". Use about {suggested:g} (half the stable limit), or add warm-up.",
        {"optimizer": {"lr": suggested}},
    )


def held_out_below_reference(ev: Evidence) -> bool:
    """Does the model do worse on validation rows than the k-NN reference does? (Same margin as the
    underfitting test: two standard errors of the reference's accuracy, at least 2 points; for
    regression, 10% above the reference's MSE.)"""
    ref = ev.reference
    if ev.classification and "knn_val_accuracy" in ref:
        p, n = ref["knn_val_accuracy"], max(1, ref.get("n_held", 1))
        margin = max(0.02, 2 * math.sqrt(max(p * (1 - p), 1e-4) / n))
        return ev.final("val/accuracy") < p - margin
    if "knn_val_loss" in ref:
        return ev.final("val/loss") > 1.1 * ref["knn_val_loss"]
    return True


def oscillation(ev: Evidence, f: Facts) -> Finding | None:
    """The loss bounces instead of settling while the gradient stays large.

    Over the end-of-training window: the training loss goes *up* in at least 35% of epochs, its
    epoch-to-epoch changes are at least 3× larger than its net trend, at least 2% of its level and
    at least 1% of the chance-level loss,
    and the minibatch gradient norm is still at least half of what it was in the first epoch (a
    loss stuck at a minimum has small changes; a loss descending slowly has a trend that dominates).
    It is a warning when the model falls short of the k-NN reference on validation rows, else info.
    """
    loss = f.train_loss[1:]
    w = max(6, f.window)
    if len(loss) < w or not np.all(np.isfinite(loss[-w:])):
        return None
    tail = loss[-w:]
    d = np.diff(tail)
    up = float(np.mean(d > 0))
    noise, trend, level = float(np.std(d)), abs(float(np.mean(d))), float(np.mean(tail))
    g = ev.series("train/grad_norm")
    g_ratio = float(np.mean(g[-w:]) / max(g[0], 1e-12)) if len(g) >= w else 0.0
    # ... and the bouncing must matter on the problem's scale (1% of the chance-level loss): a loss
    # jittering between 0.02 and 0.03 near a minimum is not a run in trouble.
    material = noise >= 0.01 * f.chance
    if not (up >= 0.35 and noise >= 3 * trend and noise >= 0.02 * level and g_ratio >= 0.5 and material):
        return None
    bs = ev.spec.batch_size
    n_train = ev.summary.get("data", {}).get("n_train") or bs
    new_bs = int(min(n_train, max(32, bs * 8)))
    evidence = {
        "epochs_examined": w,
        "fraction_of_epochs_loss_rose": _r(up),
        "loss_change_std": _r(noise),
        "loss_trend_per_epoch": _r(-float(np.mean(d))),
        "loss_level": _r(level),
        "grad_norm_end_over_start": _r(g_ratio),
        "batch_size": bs,
        "lr": ev.spec.optimizer.lr,
    }
    # A bounce that still lets the model reach the reference on held-out rows costs little: info.
    hurts = held_out_below_reference(ev)
    evidence["held_out_below_reference"] = hurts
    return Finding(
        "oscillation",
        "warning" if hurts else "info",
        confidence(noise / max(level, 1e-12), 0.02),
        evidence,
        "The loss keeps jumping up and down while the gradient stays large: steps overshoot across a "
        f"valley. Decay the learning rate (cosine) and use a larger batch ({new_bs}) to average out noise.",
        {"schedule": {"name": "cosine"}, "batch_size": new_bs},
        blames_optimizer=True,
    )


def not_converged(ev: Evidence, f: Facts, underfit: bool) -> Finding | None:
    """Still improving at the end: over the last fifth of training (≥ 3 epochs) the loss fell by more
    than 2% and fell in most epochs. Judged on training loss when it is large (the optimizer has
    work left), else on validation loss (more epochs would still generalize better)."""
    series = f.train_loss if underfit else f.val_loss
    drop = relative_drop(series, f.window)
    if drop <= 0.02 or len(series) <= f.window:
        return None
    falling = float(np.mean(np.diff(series[-f.window - 1 :]) < 0))
    if falling < 0.7:
        return None
    epochs = ev.spec.epochs
    return Finding(
        "not_converged",
        "warning" if underfit else "info",
        confidence(drop, 0.02),
        {
            "series": "train/loss" if underfit else "val/loss",
            "window_epochs": f.window,
            "relative_drop_in_window": _r(drop),
            "fraction_of_epochs_falling": _r(falling),
        },
        f"The {'training' if underfit else 'validation'} loss was still falling when training ended "
        f"({drop:.1%} over the last {f.window} epochs): train longer.",
        {"epochs": min(10_000, epochs * 2)} if not ev.spec.curriculum else {},
        blames_optimizer=underfit,
    )


def layer_rms(ev: Evidence) -> list[tuple[str, float]]:
    """Per weight tensor, its gradient norm per element (RMS), averaged over training epochs."""
    out = []
    sizes = ev.summary.get("layer_sizes") or {}
    for name, values in ev.layer_grad_norms().items():
        v = values[np.isfinite(values)]
        if len(v):
            out.append((name, float(np.mean(v)) / math.sqrt(max(1, sizes.get(name, 1)))))
    return out


def gradient_flow(ev: Evidence) -> Finding | None:
    """Vanishing or exploding gradients across depth (needs ≥ 2 hidden layers).

    The first layer's gradient RMS against the last layer's: below 1/100 it learns two orders of
    magnitude slower than the head (vanishing); above 100 the early layers get steps the head's
    scale cannot absorb (exploding). A factor 100 is well outside what initialization schemes
    that preserve variance (Glorot, He) produce, which keep the ratio near 1.
    """
    if len(ev.spec.model.hidden) < 2 or ev.spec.model.arch != "mlp":
        return None
    rms = layer_rms(ev)
    if len(rms) < 3:
        return None
    (first_name, first), (last_name, last) = rms[0], rms[-1]
    if last <= 0 or first <= 0:
        return None
    ratio = first / last
    per_layer = {name: _r(v) for name, v in rms}
    if ratio < 1e-2:
        return Finding(
            "vanishing_gradients",
            "warning",
            confidence(ratio, 1e-2, higher_is_worse=False),
            {
                "first_layer": first_name,
                "last_layer": last_name,
                "first_over_last_rms": _r(ratio),
                "grad_rms_per_layer": per_layer,
                "activation": ev.spec.model.activation,
                "depth": len(ev.spec.model.hidden),
            },
            f"Gradients shrink {1 / ratio:.3g}× from the head to the first layer, so early layers barely "
            "learn. Use ReLU with He (Kaiming) initialization, or batch normalization.",
            {"model": {"activation": "relu", "init": {"weights": "kaiming"}}},
            blames_optimizer=True,
        )
    if ratio > 1e2:
        return Finding(
            "exploding_gradients",
            "warning",
            confidence(ratio, 1e2),
            {
                "first_layer": first_name,
                "last_layer": last_name,
                "first_over_last_rms": _r(ratio),
                "grad_rms_per_layer": per_layer,
            },
            f"Gradients grow {ratio:.3g}× from the head to the first layer. Clip gradients and use a "
            "variance-preserving initialization.",
            {"regularization": {"grad_clip": 1.0}, "model": {"init": {"weights": "xavier"}}},
            blames_optimizer=True,
        )
    return None


def units(ev: Evidence, underfit: bool) -> list[Finding]:
    """Dead ReLU units (never active on 512 training rows) and saturated sigmoid/tanh units (output
    within 2% of its limits on ≥ 90% of rows: the local derivative is then < 0.04 of its peak).
    A layer with half of its units in that state has lost half its width."""
    found = []
    dead = {k: v for k, v in ev.unit_fractions("dead").items() if v >= 0.5}
    if dead:
        found.append(
            Finding(
                "dead_units",
                "warning",
                confidence(max(dead.values()), 0.5),
                {"dead_fraction_per_layer": dead},
                "Half or more of the units in a layer never activate, so they pass no gradient. Lower the "
                "learning rate or use leaky ReLU.",
                {"model": {"activation": "leaky_relu"}},
                blames_optimizer=underfit,
            )
        )
    sat = {k: v for k, v in ev.unit_fractions("saturated").items() if v >= 0.5}
    if sat:
        patch = (
            {"data": {"scaling": "standardize"}}
            if ev.spec.data.scaling == "none"
            else {"model": {"activation": "relu"}}
        )
        found.append(
            Finding(
                "saturated_units",
                "warning",
                confidence(max(sat.values()), 0.5),
                {"saturated_fraction_per_layer": sat},
                "Most units of a layer sit at the flat ends of their activation, where the derivative is "
                "nearly zero. Scale the inputs, or use ReLU.",
                patch,
                blames_optimizer=underfit,
            )
        )
    return found


def ill_conditioned_features(ev: Evidence, underfit: bool, stalled: bool) -> Finding | None:
    """Unscaled features whose standard deviations span more than a factor 100.

    For a linear layer the Hessian's conditioning grows with the square of that spread (10⁴ for a
    factor 100), and gradient descent's progress along the flattest direction is limited by it. The
    finding is raised when the run is hurt by it: plain or momentum SGD (adaptive methods rescale
    per parameter), or a run that underfits or stopped short."""
    if ev.spec.data.scaling != "none":
        return None
    scale = ev.summary.get("data", {}).get("feature_scale") or {}
    ratio = scale.get("ratio", 1.0)
    sgd = ev.spec.optimizer.name == "sgd"
    if ratio < 100 or not (sgd or underfit or stalled):
        return None
    evidence = {
        "feature_std_ratio": _r(ratio),
        "min_feature_std": _r(scale.get("min_std")),
        "max_feature_std": _r(scale.get("max_std")),
        "scaling": "none",
    }
    final = [s for s in ev.spectra if s.get("top") and s.get("bottom")]
    if final:
        s = final[-1]
        evidence |= {"hessian_lambda_max": _r(s["top"][0]), "hessian_lambda_min": _r(s["bottom"][0])}
    return Finding(
        "ill_conditioned_features",
        "warning",
        confidence(ratio, 100),
        evidence,
        f"Feature scales differ by a factor {ratio:.3g}: the error surface is a narrow valley that "
        "gradient descent crawls along. Standardize the features (fitted on the training split).",
        {"data": {"scaling": "standardize"}},
        blames_optimizer=underfit,
    )


def label_encoding(ev: Evidence) -> Finding | None:
    data = ev.summary.get("data", {})
    if not (data.get("task") == "regression" and data.get("data_task") == "classification"):
        return None
    return Finding(
        "label_encoding",
        "error",
        0.99,
        {"task": "regression", "labels": "classes", "n_classes": data.get("n_classes")},
        "Class labels are regressed as numbers, which imposes an order and distances between classes "
        "that do not exist. Train a classifier (cross-entropy over one-hot classes).",
        {"data": {"task": "classification"}},
    )


def unshuffled(ev: Evidence) -> Finding | None:
    """Training in file order on data sorted by label: neighbouring rows share a label at least half
    the time and twice as often as in a random order (or the target's rank correlation with the row
    position is ≥ 0.5), so each stretch of minibatches sees one class and the weights chase it."""
    if ev.spec.data.shuffle:
        return None
    order = ev.summary.get("data", {}).get("order") or {}
    same, expected = order.get("adjacent_same_label"), order.get("expected_at_random")
    corr = order.get("rank_correlation_with_position")
    ordered = (same is not None and same >= 0.5 and same >= 2 * expected) or (
        corr is not None and abs(corr) >= 0.5
    )
    if not ordered:
        return None
    return Finding(
        "unshuffled_data",
        "warning",
        0.9,
        {k: _r(v) for k, v in order.items()} | {"shuffle": False},
        "The training rows are ordered (by label or target) and training visits them in that order, so "
        "consecutive updates pull towards one class at a time. Shuffle every epoch.",
        {"data": {"shuffle": True}},
        blames_optimizer=True,
    )


def critical_points(ev: Evidence, underfit: bool) -> list[Finding]:
    out = []
    classes = [(s, (s.get("critical_point") or {}).get("class")) for s in ev.spectra]
    saddles = [s for s, c in classes if c == "saddle"]
    if saddles:
        s = saddles[-1]
        cp = s.get("critical_point") or {}
        zero_init = ev.spec.model.init.weights == "zeros"
        patch = (
            {"model": {"init": {"weights": "default"}}}
            if zero_init
            else {"regularization": {"gradient_noise": {"c": 0.01, "r": 0.55}}}
        )
        out.append(
            Finding(
                "critical_point.saddle",
                "warning" if underfit else "info",
                0.9 if underfit else 0.6,
                {
                    "epoch": s["epoch"],
                    "reason": s.get("reason"),
                    "lambda_min": _r(s["bottom"][0]) if s.get("bottom") else None,
                    "lambda_max": _r(s["top"][0]) if s.get("top") else None,
                    "grad_norm": _r(s.get("grad_norm")),
                    "noise_floor": _r(cp.get("noise_floor")),
                    "escape_direction_stored": bool(s.get("escape_artifact")),
                    "spectrum_id": s.get("id"),
                },
                "The optimizer sits at a saddle point: the gradient is (nearly) zero but the Hessian has a "
                "negative eigenvalue, so a step along its eigenvector (stored as the escape direction) lowers the "
                "loss. "
                + (
                    "All-zero initial weights make every unit identical and the gradient exactly zero; use "
                    "a random initialization."
                    if zero_init
                    else "Gradient noise or momentum moves off it."
                ),
                patch,
                blames_optimizer=True,
            )
        )
    final = ev.spectra[-1] if ev.spectra else None
    if final and (final.get("critical_point") or {}).get("class") == "local_minimum":
        out.append(
            Finding(
                "critical_point.local_minimum",
                "info",
                0.8,
                {
                    "epoch": final["epoch"],
                    "lambda_min": _r(final["bottom"][0]) if final.get("bottom") else None,
                    "lambda_max": _r(final["top"][0]) if final.get("top") else None,
                    "grad_norm": _r(final.get("grad_norm")),
                },
                "Training ended at a local minimum: small gradient, no negative curvature beyond the noise floor.",
            )
        )
    return out


def plateau(ev: Evidence, f: Facts, underfit: bool, saddle: bool) -> Finding | None:
    """A flat region: large loss, the gradient fell below 1% of its first-epoch size, and the loss
    moved less than 1% over the end window, without the negative curvature of a saddle."""
    g = ev.series("train/grad_norm")
    if not underfit or saddle or len(g) < 2 or g[0] <= 0:
        return None
    ratio = float(g[-1] / g[0])
    drop = relative_drop(f.train_loss, f.window)
    if ratio >= 1e-2 or drop >= 0.01:
        return None
    return Finding(
        "plateau.flat_surface",
        "warning",
        confidence(ratio, 1e-2, higher_is_worse=False),
        {
            "grad_norm_first_epoch": _r(float(g[0])),
            "grad_norm_last_epoch": _r(float(g[-1])),
            "relative_drop_in_window": _r(drop),
        },
        "The loss surface is flat here: tiny gradient, almost no progress, no negative curvature. An "
        "adaptive optimizer (Adam) rescales the small gradient.",
        {"optimizer": {"name": "adam", "lr": 0.001}},
        blames_optimizer=True,
    )


def learning_rate_too_low(ev: Evidence, nc: Finding | None, underfit: bool) -> Finding | None:
    """Plain SGD whose rate is 100× below the stable limit (lr·λ_max < 0.02 against 2) while the loss
    is still falling: each step uses 1% of the step size the curvature allows."""
    if ev.spec.optimizer.name != "sgd" or nc is None or not underfit:
        return None
    tops = [s["top"][0] for s in ev.spectra if s.get("top")]
    if not tops:
        return None
    lam = max(tops)
    lr = ev.spec.optimizer.lr
    if lam <= 0 or lr * lam >= 0.02:
        return None
    suggested = float(f"{min(lr * 10, 0.5 / lam):.2g}")
    return Finding(
        "learning_rate.too_low",
        "warning",
        confidence(lr * lam, 0.02, higher_is_worse=False),
        {"lr": lr, "lambda_max": _r(lam), "lr_times_lambda_max": _r(lr * lam), "stable_limit": 2.0},
        f"The learning rate {lr:g} is far below what the curvature allows (lr·λ_max = {lr * lam:.2g} against "
        f"a limit of 2); raise it to about {suggested:g}.",
        {"optimizer": {"lr": suggested}},
        blames_optimizer=True,
    )


def overfitting(ev: Evidence, f: Facts) -> Finding | None:
    """Validation loss turned up from its best while training loss kept falling.

    The rise from the best validation loss to the final one must exceed 10% of the best, 3× the
    epoch-to-epoch noise of the validation loss and 5% of the chance-level loss, the best epoch must lie before the last fifth of
    training, and the training loss must be lower at the end than at the best epoch. A gap between
    training and validation loss alone is not overfitting.
    """
    val, train = f.val_loss, f.train_loss
    if len(val) < 5 or not np.all(np.isfinite(val)):
        return None
    if ev.summary.get("stopped_early"):
        return None  # early stopping already ended the run near its best and kept that checkpoint
    best = int(np.argmin(val))
    rise = float(val[-1] - val[best])
    # Noise: how much the validation loss jitters from epoch to epoch after its best (the descent
    # before the best is signal, not noise).
    after = val[best:]
    noise = float(np.std(np.diff(after))) if len(after) >= 3 else 0.0
    late = best >= len(val) - 1 - max(1, (len(val) - 1) // 5)
    # The rise must also matter on the problem's own scale: at least 5% of the chance-level loss. A
    # validation loss drifting from 0.044 to 0.069 on a 3-class problem (chance 1.1) is not a model
    # that got worse in any way a user would notice.
    material = rise >= 0.05 * f.chance
    if late or rise < 0.1 * val[best] or rise < 3 * noise or not material or not train[-1] < train[best]:
        return None
    spec = ev.spec
    patch: dict[str, Any] = {
        "regularization": {
            "early_stopping": {"patience": max(5, spec.epochs // 20)},
            "l2": max(spec.regularization.l2, 1e-4),
        },
        "checkpoints": {"keep_best": True},
    }
    if spec.data.train_size is not None:
        patch["data"] = {"train_size": None}
    return Finding(
        "overfitting",
        "warning",
        confidence(rise / max(val[best], 1e-12), 0.1),
        {
            "best_epoch": best,
            "best_val_loss": _r(float(val[best])),
            "final_val_loss": _r(float(val[-1])),
            "train_loss_at_best": _r(float(train[best])),
            "final_train_loss": _r(float(train[-1])),
            "val_noise": _r(noise),
            "generalization_gap": _r(float(val[-1] - train[-1])),
        },
        f"Validation loss was lowest at epoch {best} and rose {rise / val[best]:.0%} since, while training loss "
        "kept falling. Use the best checkpoint; stop early; add L2 or dropout; more data or fewer parameters.",
        patch,
        kind="verdict",
    )


def mismatch(ev: Evidence, f: Facts) -> Finding | None:
    """A separate test set scores much worse than validation: > 1.5× the loss (and, for classes, 10
    points less accuracy): the test data come from another distribution than the training data."""
    if not ev.test_is_separate:
        return None
    test, val = ev.final("test/loss"), float(np.min(f.val_loss))
    if not (math.isfinite(test) and test > 1.5 * val):
        return None
    evidence = {"val_loss": _r(val), "test_loss": _r(test), "ratio": _r(test / val)}
    if ev.classification:
        ta, va = ev.final("test/accuracy"), float(np.max(ev.series("val/accuracy")))
        if not ta < va - 0.1:
            return None
        evidence |= {"val_accuracy": _r(va), "test_accuracy": _r(ta)}
    return Finding(
        "mismatch",
        "warning",
        confidence(test / val, 1.5),
        evidence,
        "Validation is fine but the separate test set is much worse: it comes from a different "
        "distribution. Add data like the test set to training (and to validation).",
        kind="verdict",
    )
