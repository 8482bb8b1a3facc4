"""Reference scores on the job's own data: what chance gives, what a quick non-parametric model
(k-NN) reaches on held-out rows and, cross-validated, on the training rows themselves (label noise
included), and what a constrained model (L2-regularized logistic or ridge regression) reaches; for a
job whose model computes a linear function, and for a regression whose training loss stays at 10% of
chance or more, also what a nonlinear one (gradient-boosted trees) reaches on held-out rows. "Large
loss" and "overfitting" are judged against these, never against a constant."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from threadpoolctl import threadpool_limits

from worker.data import Prepared
from worker.diagnosis.rules import MATERIAL

# k-NN costs O(n_train · n_val); subsample so the reference stays a second or less on big data.
MAX_TRAIN, MAX_VAL = 5_000, 2_000
# Fewer, smaller trees at a larger step than scikit-learn's defaults: 0.8 s instead of 2.0 s on
# digits (10 classes, one thread), and a held-out loss as good (0.09 against 0.12).
TREES = {"learning_rate": 0.2, "max_iter": 50, "max_leaf_nodes": 15}


def chance_loss(y_train: np.ndarray, task: str, n_classes: int) -> float:
    """Loss of the best constant prediction: class frequencies (cross-entropy) or the mean (MSE)."""
    if task == "classification":
        freq = np.bincount(y_train, minlength=n_classes) / len(y_train)
        return float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
    return float(np.var(y_train))


def _standardize(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Distances need comparable features whatever scaling the job chose; fit on the training rows.
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return (train - mean) / std, (other - mean) / std


def _subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))


@dataclass(frozen=True)
class Rows:
    """The rows every reference is fitted and scored on: the training split and the held-out one
    (validation, or test where there is none), each capped (``MAX_TRAIN``, ``MAX_VAL``)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_held: np.ndarray
    y_held: np.ndarray


def reference_rows(data: Prepared, seed: int) -> Rows:
    rng = np.random.default_rng(seed + 11)
    tr = _subsample(len(data.y_train), MAX_TRAIN, rng)
    held_X, held_y = (data.X_val, data.y_val) if len(data.y_val) else (data.X_test, data.y_test)
    va = _subsample(len(held_y), MAX_VAL, rng)
    y_train, y_held = data.y_train[tr], held_y[va]
    if data.task == "classification":
        y_train, y_held = y_train.astype(np.int64), y_held.astype(np.int64)
    return Rows(data.X_train[tr], y_train, held_X[va], y_held)


def reference_scores(
    data: Prepared, seed: int, linear_model: bool = False, train_loss: float | None = None
) -> dict[str, Any]:
    """``linear_model``: the job's model computes a linear function (``Model.computes_linear_function``),
    so the trees are fitted too (0.1-0.8 s on many classes, 20-30 ms on a regression of a few
    hundred rows; the rest tens of milliseconds). ``train_loss``:
    the job's final training loss, once it is known; a regression that leaves a material share of
    the target's variance gets the trees then too (``regression_trees``)."""
    # One thread: the data are capped (MAX_TRAIN, MAX_VAL), and scikit-learn's OpenMP k-NN on every
    # core of a worker that is busy training took 0.6-0.9 s on digits against 0.03 s on one thread
    # (benchmarks/job_cost.py: it was 15% of a small job).
    rows = reference_rows(data, seed)
    with threadpool_limits(limits=1):
        out = _reference_scores(data, rows, seed)
        if linear_model:
            out |= nonlinear_reference(data, rows, seed)
    if train_loss is not None:
        out |= regression_trees(data, seed, out, train_loss)
    return out


def regression_trees(
    data: Prepared, seed: int, reference: dict[str, Any], train_loss: float
) -> dict[str, Any]:
    """The trees' held-out loss for a regression whose final training loss is at least 10% of
    chance (``rules.MATERIAL``: the share the labels call material), whatever the model: a network
    that the trees beat on held-out rows by a material share of chance has a loss to explain
    (``rules.nonlinear_reference_clearly_lower``; the probes then tell bias from optimization).
    Fitted after training, when the loss is known, and only then: jobs that fit well do not pay.
    Empty when they are not wanted or already there."""
    chance = reference.get("chance_loss")
    wanted = (
        data.task == "regression"
        and "tree_val_loss" not in reference
        and chance is not None
        and math.isfinite(train_loss)
        and train_loss >= MATERIAL * chance
    )
    if not wanted:
        return {}
    with threadpool_limits(limits=1):
        return nonlinear_reference(data, reference_rows(data, seed), seed)


def nonlinear_reference(data: Prepared, rows: Rows, seed: int) -> dict[str, Any]:
    """Held-out loss (cross-entropy or MSE) of gradient-boosted trees fitted to the training rows: the
    nonlinear model a linear one, or a regression network that leaves a material share of the
    target's variance, is compared with. Trees need no feature scaling and no tuning to find
    interactions and thresholds that a k-NN blurs when irrelevant columns are many. A network they
    beat is not thereby too small (trees fit some tabular data better than any network the labels
    try): the comparison says only that the loss is large; the probes say why."""
    if not len(rows.y_held):
        return {}
    if data.task == "classification":
        if len(np.unique(rows.y_train)) < 2:
            return {}
        model = HistGradientBoostingClassifier(**TREES, random_state=seed).fit(rows.X_train, rows.y_train)
        return {"tree_val_loss": cross_entropy(model, rows.X_held, rows.y_held, data.n_classes)}
    model = HistGradientBoostingRegressor(**TREES, random_state=seed).fit(
        rows.X_train, rows.y_train.reshape(-1)
    )
    return {"tree_val_loss": float(np.mean((model.predict(rows.X_held) - rows.y_held.reshape(-1)) ** 2))}


def _reference_scores(data: Prepared, rows: Rows, seed: int) -> dict[str, Any]:
    X_tr, X_va = _standardize(rows.X_train, rows.X_held)
    y_tr, y_va = rows.y_train, rows.y_held
    k = int(min(15, max(1, round(math.sqrt(len(y_tr)) / 2))))
    out: dict[str, Any] = {"task": data.task, "knn_k": k, "n_train": int(len(y_tr)), "n_held": int(len(y_va))}
    if data.task == "classification":
        out["chance_loss"] = chance_loss(y_tr, "classification", data.n_classes)
        out["chance_accuracy"] = float(np.bincount(y_tr).max() / len(y_tr))
        if len(y_va):
            model = KNeighborsClassifier(n_neighbors=k).fit(X_tr, y_tr)
            out["knn_val_accuracy"] = float((model.predict(X_va) == y_va).mean())
            folds = KFold(n_splits=min(5, len(y_tr)), shuffle=True, random_state=seed)
            cv = cross_val_predict(KNeighborsClassifier(n_neighbors=k), X_tr, y_tr, cv=folds)
            out["knn_cv_accuracy"] = float((cv == y_tr).mean())
            out["linear_train_loss"], out["linear_val_loss"] = linear_classifier_losses(
                X_tr, y_tr, X_va, y_va, data.n_classes
            )
    else:
        out["chance_loss"] = chance_loss(y_tr, "regression", 0)
        if len(y_va):
            model = KNeighborsRegressor(n_neighbors=k).fit(X_tr, y_tr.reshape(len(y_tr), -1))
            pred = model.predict(X_va).reshape(-1)
            out["knn_val_loss"] = float(np.mean((pred - y_va.reshape(-1)) ** 2))
            folds = KFold(n_splits=min(5, len(y_tr)), shuffle=True, random_state=seed)
            cv = cross_val_predict(KNeighborsRegressor(n_neighbors=k), X_tr, y_tr.reshape(-1), cv=folds)
            out["knn_cv_loss"] = float(np.mean((cv - y_tr.reshape(-1)) ** 2))
            ridge = Ridge(alpha=1.0).fit(X_tr, y_tr.reshape(-1))
            out["linear_train_loss"] = float(np.mean((ridge.predict(X_tr) - y_tr.reshape(-1)) ** 2))
            out["linear_val_loss"] = float(np.mean((ridge.predict(X_va) - y_va.reshape(-1)) ** 2))
    return out


def linear_classifier_losses(
    X_tr: np.ndarray, y_tr: np.ndarray, X_va: np.ndarray, y_va: np.ndarray, n: int
) -> tuple[float | None, float | None]:
    """Training and held-out cross-entropy of an L2-regularized logistic regression: the constrained
    model an overfitting network is compared with, and the optimum a linear model in disguise
    reaches. None when the training rows hold a single class."""
    if len(np.unique(y_tr)) < 2:
        return None, None
    model = LogisticRegression(C=1.0, max_iter=300).fit(X_tr, y_tr)
    return cross_entropy(model, X_tr, y_tr, n), cross_entropy(model, X_va, y_va, n)


def cross_entropy(model: Any, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Mean cross-entropy of a fitted scikit-learn classifier's probabilities on (X, y); classes it
    never saw in training get probability 1e-12, not an index error."""
    proba = np.full((len(y), n_classes), 1e-12)
    proba[:, model.classes_] = np.clip(model.predict_proba(X), 1e-12, 1.0)
    return float(-np.mean(np.log(proba[np.arange(len(y)), y])))
