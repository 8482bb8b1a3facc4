"""Reference scores on the job's own data: what chance gives and what a quick non-parametric model
reaches. "Large loss" is judged against these, never against a constant."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

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
    else:
        out["chance_loss"] = chance_loss(y_tr, "regression", 0)
        if len(va):
            model = KNeighborsRegressor(n_neighbors=k).fit(X_tr, y_tr.reshape(len(y_tr), -1))
            pred = model.predict(X_va).reshape(-1)
            out["knn_val_loss"] = float(np.mean((pred - y_va.reshape(-1)) ** 2))
    return out
