"""Datasets: loading, the train/val/test split, corruption and feature scaling.

Everything here is numpy; ``to_device`` moves the prepared splits to the training device once, so
the training loop never copies batches from the host.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split

from models.spec import GENERATOR_DEFAULTS, Data


@dataclass
class RawData:
    X: np.ndarray  # float32, (n, d)
    y: np.ndarray  # int64 class indices or float32 targets
    task: str  # classification | regression
    n_classes: int  # 0 for regression
    input_shape: tuple[int, ...] | None = None  # image shape (C, H, W) for cnn, when known
    feature_names: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what the run's data facts add (uploads)


def _classification(X: np.ndarray, y: np.ndarray, **kw: Any) -> RawData:
    classes, y_idx = np.unique(y, return_inverse=True)
    return RawData(X.astype(np.float32), y_idx.astype(np.int64), "classification", len(classes), **kw)


def _regression(X: np.ndarray, y: np.ndarray, **kw: Any) -> RawData:
    return RawData(X.astype(np.float32), y.astype(np.float32), "regression", 0, **kw)


GENERATORS: dict[str, tuple[Any, str]] = {
    "moons": (skd.make_moons, "classification"),
    "circles": (skd.make_circles, "classification"),
    "blobs": (skd.make_blobs, "classification"),
    "gaussian_regression": (skd.make_regression, "regression"),
}

LOADERS = {
    "digits": skd.load_digits,
    "iris": skd.load_iris,
    "wine": skd.load_wine,
    "breast_cancer": skd.load_breast_cancer,
    "diabetes": skd.load_diabetes,
}


def load_builtin(name: str, params: dict[str, Any], seed: int) -> RawData:
    if name in GENERATORS:
        make, task = GENERATORS[name]
        # The spec has already refused unknown parameters (models.spec.GENERATOR_DEFAULTS).
        kwargs = {**GENERATOR_DEFAULTS[name], **params, "random_state": seed}
        if name == "gaussian_regression":
            kwargs["n_informative"] = min(kwargs["n_informative"], kwargs["n_features"])
        X, y = make(**kwargs)[:2]
        return _classification(X, y) if task == "classification" else _regression(X, y)
    if params:
        raise ValueError(f"data.params: {name} is a fixed dataset and takes no parameters")
    bunch = LOADERS[name]()
    names = [str(n) for n in getattr(bunch, "feature_names", [])]
    if name == "diabetes":
        return _regression(bunch.data, bunch.target, feature_names=names)
    shape = (1, 8, 8) if name == "digits" else None
    return _classification(bunch.data, bunch.target, input_shape=shape, feature_names=names)


def load_uploaded(fmt: str, payload: bytes, label: str | None, task: str) -> RawData:
    """An upload that the API has already validated (CSV, NPZ, or images it decoded); rows keep
    their file order."""
    if fmt == "images":
        return load_images(payload, task)
    if fmt == "npz":
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            X, y = np.asarray(npz["X"]), np.asarray(npz["y"])
        shape = tuple(int(s) for s in X.shape[1:]) if X.ndim > 2 else None
        if shape is not None and len(shape) == 2:
            shape = (1, *shape)
        X = X.reshape(len(X), -1)
    else:
        X, y, _ = parse_csv(payload, label or "")
        shape = None
    if task == "classification":
        return _classification(X, y, input_shape=shape)
    return _regression(X, y, input_shape=shape)


# Class names kept in a run's data facts (a folder of 10,000 classes would swell every summary).
MAX_FACT_CLASSES = 100


def load_images(payload: bytes, task: str) -> RawData:
    """An image upload (api.services.images): uint8 N×C×H×W, normalized per channel with the mean
    and std stored at upload, kept as rows of C·H·W values in C order, which the convolutional
    archs view as N×C×H×W without a copy. Labels are indices into the stored class names, so a
    train and a test upload of the same classes agree on them."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        X, y, mean, std, classes = (npz[k] for k in ("X", "y", "mean", "std", "classes"))
    shape = tuple(int(s) for s in X.shape[1:])
    images = (X.astype(np.float32) - mean[None, :, None, None]) / std[None, :, None, None]
    facts = {
        "images": {
            "shape": list(shape),
            "classes": [str(c) for c in classes[:MAX_FACT_CLASSES]],
            "n_classes": int(len(classes)),
            "channel_mean": [float(m) for m in mean],
            "channel_std": [float(s) for s in std],
        }
    }
    rows = images.reshape(len(X), -1)
    if task == "regression":
        return _regression(rows, y, input_shape=shape, facts=facts)
    return RawData(rows, y.astype(np.int64), "classification", int(len(classes)), shape, facts=facts)


def parse_csv(payload: bytes, label: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    reader = csv.reader(io.StringIO(payload.decode("utf-8")))
    header = next(reader)
    if label not in header:
        raise ValueError(f"label column {label!r} is not in the CSV header")
    li = header.index(label)
    rows = [r for r in reader if r]
    table = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    X = np.delete(table, li, axis=1)
    return X, table[:, li], [h for i, h in enumerate(header) if i != li]


@dataclass
class Splits:
    """Indices into the raw data, in training order (file order when shuffling is off)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(raw: RawData, val: float, test: float, seed: int, stratify: bool) -> Splits:
    idx = np.arange(len(raw.y))
    labels = raw.y if stratify and raw.task == "classification" else None

    def cut(pool: np.ndarray, fraction: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
        if fraction <= 0:
            return pool, pool[:0]
        strat = labels[pool] if labels is not None else None
        try:
            keep, held = train_test_split(pool, test_size=fraction, random_state=seed + salt, stratify=strat)
        except ValueError:  # a class too small to stratify: fall back to a plain random split
            keep, held = train_test_split(pool, test_size=fraction, random_state=seed + salt)
        return np.sort(keep), np.sort(held)

    rest, test_idx = cut(idx, test, 0)
    train_idx, val_idx = cut(rest, val / max(1e-12, 1.0 - test), 1)
    return Splits(train_idx, val_idx, test_idx)


def cap_training(train: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    if size is None or size >= len(train):
        return train
    rng = np.random.default_rng(seed + 2)
    return np.sort(rng.choice(train, size=size, replace=False))


def corrupt_labels(y: np.ndarray, fraction: float, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Replace a fraction of labels at random: a random class, or a random other sample's target."""
    if fraction <= 0:
        return y
    y = y.copy()
    hit = rng.random(len(y)) < fraction
    if n_classes > 0:
        y[hit] = rng.integers(0, n_classes, hit.sum())
    else:
        y[hit] = rng.permutation(y)[: hit.sum()]
    return y


def add_input_noise(X: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    if std <= 0:
        return X
    return (X + rng.normal(0.0, std, X.shape)).astype(np.float32)


@dataclass
class Scaler:
    """A feature transform fitted on the training split only, stored with the job and checkpoints."""

    method: str
    shift: np.ndarray
    scale: np.ndarray

    def apply(self, X: np.ndarray) -> np.ndarray:
        if self.method == "unit_length":
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            return (X / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return ((X - self.shift) / self.scale).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(d["method"], np.asarray(d["shift"], np.float32), np.asarray(d["scale"], np.float32))


def fit_scaler(method: str, X_train: np.ndarray) -> Scaler:
    d = X_train.shape[1]
    shift, scale = np.zeros(d, np.float64), np.ones(d, np.float64)
    if method in ("minmax", "mean"):
        lo, hi = X_train.min(axis=0), X_train.max(axis=0)
        shift = lo if method == "minmax" else X_train.mean(axis=0)
        scale = hi - lo
    elif method == "standardize":
        shift, scale = X_train.mean(axis=0), X_train.std(axis=0)
    # A constant feature has zero spread; dividing by 1 leaves it constant instead of NaN.
    scale = np.where(scale > 1e-12, scale, 1.0)
    return Scaler(method, shift.astype(np.float32), scale.astype(np.float32))


@dataclass
class TargetScale:
    """Regression targets are standardized on the training split, so a loss of 1.0 is what predicting
    the mean scores: losses then compare across datasets, and so do the diagnosis thresholds."""

    shift: float
    scale: float

    @classmethod
    def fit(cls, y: np.ndarray) -> TargetScale:
        std = float(np.std(y))
        return cls(float(np.mean(y)), std if std > 1e-12 else 1.0)

    def apply(self, y: np.ndarray) -> np.ndarray:
        if self.shift == 0.0 and self.scale == 1.0:
            return y
        return ((y - self.shift) / self.scale).astype(np.float32)


@dataclass
class Prepared:
    """The arrays the training loop sees, plus what was decided while preparing them."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    task: str  # the loss the model trains with: classification | regression
    data_task: str  # what the labels are: classification labels may be regressed (and diagnosed)
    n_classes: int
    n_outputs: int
    scaler: Scaler
    input_shape: tuple[int, ...] | None
    info: dict[str, Any]


def resolve_task(requested: str, raw: RawData) -> str:
    if requested == "auto":
        return raw.task
    if requested == "classification" and raw.task == "regression":
        raise ValueError(
            "data.task: classification needs class labels, but this dataset has continuous targets"
        )
    return requested


def prepare(spec_data: Data, raw: RawData, seed: int, test_raw: RawData | None = None) -> Prepared:
    task = resolve_task(spec_data.task, raw)
    splits = split_indices(raw, spec_data.split.val, spec_data.split.test, seed, stratify=True)
    train = cap_training(splits.train, spec_data.train_size, seed)
    rng = np.random.default_rng(seed + 3)
    y = raw.y if task == "classification" else raw.y.astype(np.float32)
    y_train = corrupt_labels(
        y[train], spec_data.label_noise, raw.n_classes if task == "classification" else 0, rng
    )
    X_train = add_input_noise(raw.X[train], spec_data.input_noise, rng)
    scaler = fit_scaler(spec_data.scaling, X_train)
    target = TargetScale.fit(y_train) if task == "regression" else TargetScale(0.0, 1.0)
    if test_raw is not None:  # a separate test set replaces the held-out test split
        X_test, y_test = test_raw.X, test_raw.y if task == "classification" else test_raw.y.astype(np.float32)
    else:
        X_test, y_test = raw.X[splits.test], y[splits.test]
    n_outputs = raw.n_classes if task == "classification" else 1
    info = {
        "n_train": int(len(train)),
        "n_val": int(len(splits.val)),
        "n_test": int(len(y_test)),
        "n_features": int(raw.X.shape[1]),
        "n_classes": int(raw.n_classes),
        "task": task,
        "data_task": raw.task,
        "feature_scale": feature_scale_summary(raw.X[train]),
        "order": order_summary(raw.y[train], task == "classification" or raw.task == "classification"),
        **raw.facts,
        "augment": spec_data.augment.model_dump() if spec_data.augment else None,
    }
    return Prepared(
        scaler.apply(X_train),
        target.apply(y_train),
        scaler.apply(raw.X[splits.val]),
        target.apply(y[splits.val]),
        scaler.apply(X_test),
        target.apply(y_test),
        task,
        raw.task,
        raw.n_classes,
        n_outputs,
        scaler,
        raw.input_shape,
        {**info, "target_shift": target.shift, "target_scale": target.scale},
    )


def feature_scale_summary(X: np.ndarray) -> dict[str, float]:
    """Spread of the raw features' scales: what the unscaled-features diagnosis reads."""
    spread = X.std(axis=0)
    live = spread[spread > 1e-12]
    if len(live) == 0:
        return {"min_std": 0.0, "max_std": 0.0, "ratio": 1.0, "max_abs_mean": 0.0}
    return {
        "min_std": float(live.min()),
        "max_std": float(live.max()),
        "ratio": float(live.max() / live.min()),
        "max_abs_mean": float(np.abs(X.mean(axis=0)).max()),
    }


def order_summary(y: np.ndarray, classes: bool) -> dict[str, float]:
    """How ordered the training rows are in their own (file) order: what unshuffled training sees.

    For classes: how often neighbours share a label, against what a random order gives (Σ p_k²).
    For targets: the rank correlation of the target with the row position.
    """
    if len(y) < 3:
        return {}
    if classes:
        y = y.astype(np.int64)
        freq = np.bincount(y) / len(y)
        return {
            "adjacent_same_label": float(np.mean(y[1:] == y[:-1])),
            "expected_at_random": float((freq**2).sum()),
        }
    ranks = np.argsort(np.argsort(y))
    return {"rank_correlation_with_position": float(np.corrcoef(ranks, np.arange(len(y)))[0, 1])}
