"""Reference scores on the job's own data: what chance gives, what a quick non-parametric model
(k-NN) reaches on held-out rows and, cross-validated, on the training rows themselves (label noise
included), and what a constrained model (L2-regularized logistic or ridge regression) reaches.
"Large loss" and "overfitting" are judged against these, never against a constant."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from threadpoolctl import threadpool_limits

from worker.data import Prepared

# k-NN costs O(n_train · n_val); subsample so the reference stays a second or less on big data.
MAX_TRAIN, MAX_VAL = 5_000, 2_000


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


def reference_scores(data: Prepared, seed: int) -> dict[str, Any]:
    # One thread: the data are capped (MAX_TRAIN, MAX_VAL), and scikit-learn's OpenMP k-NN on every
    # core of a worker that is busy training took 0.6-0.9 s on digits against 0.03 s on one thread
    # (benchmarks/job_cost.py: it was 15% of a small job).
    with threadpool_limits(limits=1):
        return _reference_scores(data, seed)


def _reference_scores(data: Prepared, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 11)
    tr = _subsample(len(data.y_train), MAX_TRAIN, rng)
    held_X, held_y = (data.X_val, data.y_val) if len(data.y_val) else (data.X_test, data.y_test)
    va = _subsample(len(held_y), MAX_VAL, rng)
    X_tr, X_va = _standardize(data.X_train[tr], held_X[va])
    y_tr, y_va = data.y_train[tr], held_y[va]
    k = int(min(15, max(1, round(math.sqrt(len(tr)) / 2))))
    out: dict[str, Any] = {"task": data.task, "knn_k": k, "n_train": int(len(tr)), "n_held": int(len(va))}
    if data.task == "classification":
        y_tr, y_va = y_tr.astype(np.int64), y_va.astype(np.int64)
        out["chance_loss"] = chance_loss(y_tr, "classification", data.n_classes)
        out["chance_accuracy"] = float(np.bincount(y_tr).max() / len(y_tr))
        if len(va):
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
        if len(va):
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

    def loss(X: np.ndarray, y: np.ndarray) -> float:
        proba = np.full((len(y), n), 1e-12)
        proba[:, model.classes_] = np.clip(model.predict_proba(X), 1e-12, 1.0)
        return float(-np.mean(np.log(proba[np.arange(len(y)), y])))

    return loss(X_tr, y_tr), loss(X_va, y_va)
