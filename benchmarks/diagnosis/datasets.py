"""The benchmark's datasets: built-in ones by name, and "uploaded" ones made here as the CSV or NPZ
bytes a user would upload and parsed by the worker's own loader (``worker.data.load_uploaded``).

Transforms turn a dataset into the situations the checklist is about: rows sorted by label (for
unshuffled training), columns on wildly different scales, and separate test sets drawn from another
distribution (shifted, rescaled, with inverted labels).
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass

import numpy as np
from sklearn import datasets as skd

from models.spec import BUILTIN_DATASETS
from worker.data import RawData, load_builtin, load_uploaded

BUILTIN = BUILTIN_DATASETS


def _npz_bytes(X: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X=X, y=y)
    return buffer.getvalue()


def _csv_bytes(X: np.ndarray, y: np.ndarray, label: str) -> bytes:
    header = ",".join([f"x{i}" for i in range(X.shape[1])] + [label])
    rows = [",".join(f"{v:.6g}" for v in row) + f",{t:.6g}" for row, t in zip(X, y, strict=True)]
    return ("\n".join([header, *rows]) + "\n").encode()


def _noisy_binary(rng: np.random.Generator, risk: np.ndarray, mistaken_share: float) -> np.ndarray:
    """Binary labels drawn with probability sigmoid(risk), then a share of them flipped (mistaken)."""
    y = (rng.random(len(risk)) < 1.0 / (1.0 + np.exp(-risk))).astype(np.int64)
    mistaken = rng.random(len(risk)) < mistaken_share
    return np.where(mistaken, 1 - y, y)


def _mistaken(rng: np.random.Generator, y: np.ndarray, classes: int, share: float) -> np.ndarray:
    """Class labels with a share of them replaced by a class drawn at random (mistaken labels)."""
    mistaken = rng.random(len(y)) < share
    return np.where(mistaken, rng.integers(0, classes, len(y)), y)


def uploaded_quadrants() -> RawData:
    """An NPZ upload: 4 classes in 12 features, 6 informative, classes in several clusters each."""
    X, y = skd.make_classification(
        n_samples=1200, n_features=12, n_informative=6, n_redundant=2, n_classes=4,
        n_clusters_per_class=2, class_sep=1.2, flip_y=0.0, random_state=7,
    )  # fmt: skip
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.int64)), None, "classification")


def uploaded_friedman() -> RawData:
    """A CSV upload: Friedman's nonlinear regression benchmark, y = 10 sin(πx₁x₂) + 20(x₃-½)² + ..."""
    X, y = skd.make_friedman1(n_samples=1000, n_features=8, noise=0.5, random_state=7)
    return load_uploaded("csv", _csv_bytes(X, y, "target"), "target", "regression")


def uploaded_hastie() -> RawData:
    """A CSV upload with a class column: Hastie et al.'s 10-feature binary problem (class 1 where the
    squared norm of ten standard normal features exceeds 9.34): a spherical boundary no linear model
    draws. Added with the fresh split (cases.FRESH_DATASETS)."""
    X, y = skd.make_hastie_10_2(n_samples=1000, random_state=7)
    return load_uploaded("csv", _csv_bytes(X, (y > 0).astype(np.int64), "label"), "label", "classification")


def uploaded_friedman3() -> RawData:
    """An NPZ upload: Friedman's third regression, y = atan((x₂x₃ - 1/(x₂x₄)) / x₁) + noise, whose
    four features span 0-1 to 40π-560π. Added with the fresh split (cases.FRESH_DATASETS)."""
    X, y = skd.make_friedman3(n_samples=1000, noise=0.1, random_state=7)
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.float32)), None, "regression")


def uploaded_sparse() -> RawData:
    """A CSV upload with a class column: 3 classes in 30 features of which 5 are informative and 5
    their mixtures, 3% of labels flipped: the irrelevant columns blunt a distance-based reference,
    not a network. Added with the second fresh split (cases.FRESH2_DATASETS)."""
    X, y = skd.make_classification(
        n_samples=1200, n_features=30, n_informative=5, n_redundant=5, n_classes=3,
        n_clusters_per_class=2, class_sep=1.0, flip_y=0.03, random_state=7,
    )  # fmt: skip
    return load_uploaded("csv", _csv_bytes(X, y, "label"), "label", "classification")


def uploaded_swissroll() -> RawData:
    """An NPZ upload: the position along a noisy Swiss roll (a 2-D sheet rolled up in 3-D), predicted
    from the point's three coordinates: a smooth target on a curved manifold. Added with the second
    fresh split (cases.FRESH2_DATASETS)."""
    X, t = skd.make_swiss_roll(n_samples=1000, noise=0.5, random_state=7)
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), t.astype(np.float32)), None, "regression")


def uploaded_shells() -> RawData:
    """A CSV upload with a class column: 3 classes as concentric shells of a 6-D Gaussian (split at
    its quantiles of the radius), plus 4 pure-noise columns: a radial boundary, no linear one. Added
    with the third fresh split (cases.FRESH3_DATASETS)."""
    X, y = skd.make_gaussian_quantiles(n_samples=1200, n_features=6, n_classes=3, random_state=7)
    noise = np.random.default_rng(7).normal(size=(len(y), 4))
    return load_uploaded("csv", _csv_bytes(np.hstack([X, noise]), y, "label"), "label", "classification")


def uploaded_waves() -> RawData:
    """An NPZ upload: y = sin(2x₁) + x₂x₃ - |x₄| + noise in 6 uniform features (two irrelevant), one
    column stored in grams where the rest are in kilograms (×1000): smooth, interacting and uneven.
    Added with the third fresh split (cases.FRESH3_DATASETS)."""
    rng = np.random.default_rng(7)
    X = rng.uniform(-2, 2, size=(1000, 6))
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] - np.abs(X[:, 3]) + rng.normal(0, 0.2, 1000)
    X[:, 5] *= 1000.0
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.float32)), None, "regression")


def uploaded_imbalanced() -> RawData:
    """A CSV upload with a class column: 3 classes at 70/20/10% in 14 features (6 informative, 2
    their mixtures), 2% of labels flipped: the majority class alone is 70% right, so chance-level
    accuracy sits high and the rare class carries most of what is left to learn. Added with the
    fourth fresh split (cases.FRESH4_DATASETS)."""
    X, y = skd.make_classification(
        n_samples=1500, n_features=14, n_informative=6, n_redundant=2, n_classes=3,
        n_clusters_per_class=2, weights=[0.7, 0.2, 0.1], flip_y=0.02, class_sep=1.0, random_state=7,
    )  # fmt: skip
    return load_uploaded("csv", _csv_bytes(X, y, "label"), "label", "classification")


def uploaded_housing() -> RawData:
    """An NPZ upload: a house price in thousands from 8 columns in their own units (floor area in m²,
    rooms, age in years, distance to the centre in km, two coordinates, two irrelevant columns). The
    price saturates with area, decays with distance, trades rooms against age and varies with place:
    a target far from zero and columns spanning a factor ~100. Added with the fourth fresh split
    (cases.FRESH4_DATASETS)."""
    rng = np.random.default_rng(7)
    n = 1200
    area = rng.lognormal(np.log(90.0), 0.4, n)
    rooms = np.clip(np.round(area / 30.0 + rng.normal(0.0, 0.7, n)), 1, 8)
    age = rng.uniform(0.0, 100.0, n)
    distance = rng.exponential(6.0, n)
    lat, lon = rng.uniform(-1.0, 1.0, n), rng.uniform(-1.0, 1.0, n)
    irrelevant = rng.normal(size=(n, 2))
    price = (
        150.0 * np.log1p(area / 40.0) * np.exp(-distance / 15.0)
        + 20.0 * rooms * (1.0 - age / 150.0)
        + 30.0 * np.sin(3.0 * lat) * lon
        + rng.normal(0.0, 15.0, n)
    )
    X = np.column_stack([area, rooms, age, distance, lat, lon, irrelevant])
    return load_uploaded(
        "npz", _npz_bytes(X.astype(np.float32), price.astype(np.float32)), None, "regression"
    )


def uploaded_spirals() -> RawData:
    """A CSV upload with a class column: 3 interleaved spiral arms in the plane (one turn each, the
    radius noisy), plus 4 pure-noise columns: a boundary that winds, no linear or radial one, where
    narrow or badly initialized networks stall. Added with the fifth fresh split
    (cases.FRESH5_DATASETS)."""
    rng = np.random.default_rng(7)
    n, arms = 1200, 3
    y = np.arange(n) % arms
    t = rng.uniform(0.25, 1.0, n)
    angle = 2.0 * np.pi * (t + y / arms)
    radius = t + rng.normal(0.0, 0.04, n)
    plane = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    X = np.hstack([plane, rng.normal(0.0, 0.5, size=(n, 4))])
    return load_uploaded("csv", _csv_bytes(X, y, "label"), "label", "classification")


def uploaded_energy() -> RawData:
    """An NPZ upload: a building's energy use from 10 columns, nearly linear (a weighted sum, one
    product of two columns, a mild saturation) with noise that grows with the load and a target far
    from zero: a regression where a linear model is almost, not quite, enough. Added with the fifth
    fresh split (cases.FRESH5_DATASETS)."""
    rng = np.random.default_rng(7)
    n = 1000
    X = rng.normal(0.0, 1.0, size=(n, 10))
    weights = np.array([4.0, -3.0, 2.5, 2.0, -1.5, 1.0, 0.5, 0.0, 0.0, 0.0])
    load = X @ weights + 1.5 * X[:, 0] * X[:, 1] + 3.0 * np.tanh(X[:, 2])
    y = 60.0 + load + rng.normal(0.0, 1.0, n) * (1.0 + 0.1 * np.abs(load))
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.float32)), None, "regression")


def uploaded_checker() -> RawData:
    """An NPZ upload: 2 classes on a 3x3 checkerboard in the plane (3% of labels flipped), plus 2
    noise columns: a boundary of axis-aligned cells, no smooth one, which trees draw easily and
    small networks only with width. Added with the sixth fresh split (cases.FRESH6_DATASETS)."""
    rng = np.random.default_rng(7)
    n = 1200
    plane = rng.uniform(-1.0, 1.0, size=(n, 2))
    cells = np.floor((plane + 1.0) * 1.5)
    y = ((cells[:, 0] + cells[:, 1]) % 2).astype(np.int64)
    flipped = rng.random(n) < 0.03
    y[flipped] = 1 - y[flipped]
    X = np.hstack([plane, rng.normal(0.0, 0.6, size=(n, 2))])
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y), None, "classification")


def uploaded_sales() -> RawData:
    """A CSV upload: a skewed, always positive target (weekly sales, log-normal: 0.6 to 54, median
    5.3) whose logarithm is a sum of a few effects, one interaction and one absolute value, in 9
    columns (4 irrelevant): multiplicative structure and a long right tail. Added with the sixth
    fresh split (cases.FRESH6_DATASETS)."""
    rng = np.random.default_rng(7)
    n = 1000
    X = rng.normal(0.0, 1.0, size=(n, 9))
    log_sales = (
        2.0 + 0.5 * X[:, 0] + 0.3 * X[:, 1] * X[:, 2] - 0.4 * np.abs(X[:, 3]) + 0.2 * X[:, 4]
        + rng.normal(0.0, 0.25, n)
    )  # fmt: skip
    return load_uploaded("csv", _csv_bytes(X, np.exp(log_sales), "sales"), "sales", "regression")


def uploaded_blobs() -> RawData:
    """A CSV upload with a class column: 6 classes as overlapping Gaussian blobs in 8 columns, each
    blob stretched along directions of its own, so the boundaries between classes are curved: a
    logistic regression reaches ~78% (3-fold cross-validation), a 64-64 network ~93%. Added with the
    seventh fresh split (cases.FRESH7_DATASETS)."""
    rng = np.random.default_rng(7)
    n, classes, dims = 1200, 6, 8
    y = np.arange(n) % classes
    centres = rng.normal(0.0, 1.1, size=(classes, dims))
    stretch = rng.normal(0.0, 1.0, size=(classes, dims, dims)) * 0.45
    noise = rng.normal(0.0, 1.0, size=(n, dims))
    X = centres[y] + np.einsum("nij,nj->ni", stretch[y], noise) + 0.5 * noise
    return load_uploaded("csv", _csv_bytes(X, y, "label"), "label", "classification")


def uploaded_arm() -> RawData:
    """An NPZ upload: where a two-link robot arm's hand is (its x coordinate) from its two joint angles
    in radians, plus 4 irrelevant sensor columns and a little noise: a smooth, periodic regression that
    no linear model follows and small networks fit only with enough units. Added with the seventh fresh
    split (cases.FRESH7_DATASETS)."""
    rng = np.random.default_rng(7)
    n = 1000
    shoulder = rng.uniform(-np.pi, np.pi, n)
    elbow = rng.uniform(-0.75 * np.pi, 0.75 * np.pi, n)
    y = 1.0 * np.cos(shoulder) + 0.7 * np.cos(shoulder + elbow) + rng.normal(0.0, 0.03, n)
    X = np.column_stack([shoulder, elbow, rng.normal(0.0, 1.0, size=(n, 4))])
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.float32)), None, "regression")


def uploaded_credit() -> RawData:
    """A CSV upload with a class column: 2 classes of loan applicants in 7 columns in their own units
    (age in years, income in dollars, debt ratio, years employed, open accounts, late payments, card
    utilization), the default risk a nonlinear score of them with interactions (utilization hurts
    more on small incomes, late payments more when young) and 5% of labels flipped. Added with the
    eighth fresh split (cases.FRESH8_DATASETS)."""
    rng = np.random.default_rng(8)
    n = 1500
    age = rng.uniform(18, 80, n)
    income = np.exp(rng.normal(10.8, 0.6, n))
    debt = rng.beta(2, 5, n)
    employed = np.minimum(age - 18, rng.exponential(6.0, n))
    accounts = rng.poisson(4, n).astype(float)
    late = rng.poisson(0.8, n).astype(float)
    utilization = rng.beta(2, 3, n)
    score = (
        2.5 * debt
        + 3.0 * utilization * (income < 40_000)
        + 0.8 * late * (age < 30)
        + 0.3 * late
        - 0.05 * employed
        - 0.6 * np.log(income / 50_000)
        + 0.15 * np.abs(accounts - 4)
    )
    y = (score > np.quantile(score, 0.7)).astype(int)
    flip = rng.random(n) < 0.05
    y = np.where(flip, 1 - y, y)
    X = np.column_stack([age, income, debt, employed, accounts, late, utilization])
    return load_uploaded("csv", _csv_bytes(X, y, "default"), "default", "classification")


def uploaded_pendulum() -> RawData:
    """An NPZ upload: a pendulum's period in seconds from its length (0.1-3 m), its release angle
    (0.05-2.5 rad, where the small-angle formula fails) and the local gravity (9.6-10 m/s²), plus 3
    irrelevant columns and 1% timing noise: a smooth regression that a linear model follows only
    roughly (the period grows as the square root of the length and steeply at large angles). Added
    with the eighth fresh split (cases.FRESH8_DATASETS)."""
    rng = np.random.default_rng(8)
    n = 1000
    length = rng.uniform(0.1, 3.0, n)
    angle = rng.uniform(0.05, 2.5, n)
    gravity = rng.uniform(9.6, 10.0, n)
    # The exact period through the arithmetic-geometric mean of 1 and cos(angle / 2).
    a, b = np.ones(n), np.cos(angle / 2)
    for _ in range(8):
        a, b = (a + b) / 2, np.sqrt(a * b)
    period = 2 * np.pi * np.sqrt(length / gravity) / a * (1 + rng.normal(0.0, 0.01, n))
    X = np.column_stack([length, angle, gravity, rng.normal(0.0, 1.0, size=(n, 3))])
    return load_uploaded(
        "npz", _npz_bytes(X.astype(np.float32), period.astype(np.float32)), None, "regression"
    )


def uploaded_teacher() -> RawData:
    """A CSV upload with a class column: 4 classes in 12 columns, each row labelled by a fixed random
    two-layer tanh network (a "teacher") with 2% of labels flipped: a boundary that is smooth but
    curved in every direction, which no k-NN in 12 dimensions follows closely. Added with the ninth
    fresh split (cases.FRESH9_DATASETS)."""
    rng = np.random.default_rng(9)
    n, dims, hidden, classes = 1400, 12, 16, 4
    X = rng.normal(0.0, 1.0, size=(n, dims))
    w1, w2 = rng.normal(0.0, 1.2, size=(dims, hidden)), rng.normal(0.0, 1.0, size=(hidden, classes))
    y = np.argmax(np.tanh(X @ w1 / np.sqrt(dims) * 2.0) @ w2, axis=1)
    flip = rng.random(n) < 0.02
    y = np.where(flip, rng.integers(0, classes, n), y)
    return load_uploaded("csv", _csv_bytes(X, y, "label"), "label", "classification")


def uploaded_concrete() -> RawData:
    """An NPZ upload: a concrete mix's compressive strength in MPa from its cement, slag and water (kg
    per m³) and its age in days (1-365): strength follows the water-to-binder ratio (Abrams' law, an
    exponential) and grows with age as a saturating logarithm, with 4% noise and 2 irrelevant
    columns. Added with the ninth fresh split (cases.FRESH9_DATASETS)."""
    rng = np.random.default_rng(9)
    n = 1000
    cement = rng.uniform(100, 500, n)
    slag = rng.uniform(0, 200, n)
    water = rng.uniform(120, 250, n)
    age = np.exp(rng.uniform(0.0, np.log(365), n))
    ratio = water / (cement + 0.6 * slag)
    strength = 96.0 * np.exp(-2.2 * ratio) * (0.35 + 0.65 * np.log1p(age) / np.log1p(28)) ** 0.8
    strength *= 1 + rng.normal(0.0, 0.04, n)
    X = np.column_stack([cement, slag, water, age, rng.normal(0.0, 1.0, size=(n, 2))])
    return load_uploaded(
        "npz", _npz_bytes(X.astype(np.float32), strength.astype(np.float32)), None, "regression"
    )


def uploaded_activity() -> RawData:
    """A CSV upload with a class column: 5 activities (lying, sitting, walking, running, cycling) from
    9 summaries of a wrist sensor in their own units (mean and spread of acceleration in m/s² on
    three axes, step frequency in Hz, heart rate in beats per minute, skin temperature in °C), with
    activities that overlap (sitting and lying differ mostly in the gravity axis, walking and
    cycling in the step frequency) and 3% of labels mistaken. Added with the tenth fresh split
    (cases.FRESH10_DATASETS)."""
    rng = np.random.default_rng(10)
    n, classes = 1500, 5
    y = rng.integers(0, classes, n)
    gravity_axis = np.array([0.2, 0.8, 0.6, 0.5, 0.7])[y] + rng.normal(0.0, 0.15, n)
    intensity = np.array([0.05, 0.1, 1.2, 3.0, 1.0])[y] * rng.lognormal(0.0, 0.35, n)
    step_hz = np.array([0.0, 0.0, 1.8, 2.7, 1.2])[y] + rng.normal(0.0, 0.25, n)
    heart = np.array([60, 70, 100, 150, 125])[y] + rng.normal(0.0, 12.0, n)
    mean_xyz = np.column_stack(
        [9.81 * gravity_axis, 9.81 * np.sqrt(np.clip(1 - gravity_axis**2, 0, 1)), rng.normal(0, 1, n)]
    )
    spread_xyz = intensity[:, None] * rng.uniform(0.6, 1.4, size=(n, 3))
    skin = 33.0 + 0.01 * (heart - 60) + rng.normal(0.0, 0.6, n)
    X = np.column_stack([mean_xyz, spread_xyz, np.abs(step_hz), heart, skin])
    y = _mistaken(rng, y, classes, 0.03)
    return load_uploaded("csv", _csv_bytes(X, y, "activity"), "activity", "classification")


def uploaded_resistance() -> RawData:
    """An NPZ upload: a sailing yacht hull's residuary resistance (per unit of displacement) from its
    Froude number (0.125-0.45) and four hull ratios, plus 2 irrelevant columns and 3% noise: the
    resistance grows about 60-fold with speed, near-exponentially, and the hull ratios
    scale it by a few tens of percent, so a linear model follows the target only roughly. Added
    with the tenth fresh split (cases.FRESH10_DATASETS)."""
    rng = np.random.default_rng(10)
    n = 1000
    froude = rng.uniform(0.125, 0.45, n)
    prismatic = rng.uniform(0.53, 0.60, n)
    length_beam = rng.uniform(2.7, 3.6, n)
    beam_draught = rng.uniform(2.8, 5.1, n)
    length_displacement = rng.uniform(4.3, 5.2, n)
    hull = (prismatic / 0.565) ** 2 * (beam_draught / 4.0) ** 0.3 * (4.8 / length_displacement) ** 1.5
    resistance = hull * (0.2 + 0.05 * np.exp(16.0 * (froude - 0.125))) * (3.2 / length_beam) ** 0.4
    resistance *= 1 + rng.normal(0.0, 0.03, n)
    X = np.column_stack(
        [froude, prismatic, length_beam, beam_draught, length_displacement, rng.normal(0, 1, (n, 2))]
    )
    return load_uploaded(
        "npz", _npz_bytes(X.astype(np.float32), resistance.astype(np.float32)), None, "regression"
    )


def uploaded_signals() -> RawData:
    """An NPZ upload with integer classes: 4 kinds of machine vibration (healthy, imbalance,
    misalignment, a bearing fault) from the energy in 12 frequency bands, in their own units (the
    low bands carry 10-1000x the energy of the high ones), log-normal from recording to recording,
    with the fault's bands overlapping between kinds and 3% of labels mistaken. Added with the
    eleventh fresh split (cases.FRESH11_DATASETS)."""
    rng = np.random.default_rng(11)
    n, classes, bands = 1400, 4, 12
    y = rng.integers(0, classes, n)
    base = 10.0 ** np.linspace(3.0, 0.0, bands)  # energy falls with frequency
    gain = np.ones((classes, bands))
    gain[1, 1:3] = 2.2  # imbalance: once per revolution
    gain[2, 2:5] = 1.8  # misalignment: two and three times per revolution
    gain[3, 8:12] = 3.0  # a bearing fault: high-frequency bursts
    gain[3, 1] = 1.4
    load = rng.lognormal(0.0, 0.4, n)[:, None]  # a machine's load scales every band together
    X = base * gain[y] * load * rng.lognormal(0.0, 0.3, size=(n, bands))
    y = _mistaken(rng, y, classes, 0.03)
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.int64)), None, "classification")


def uploaded_airfoil() -> RawData:
    """A CSV upload with a target column: an airfoil's self-noise in dB from the frequency (200-20000
    Hz, log-uniform), the angle of attack (0-20°), the chord (0.025-0.3 m), the free-stream
    velocity (30-72 m/s) and the boundary layer's thickness (mm), plus one irrelevant column and
    noise of 1 dB: the level peaks at a frequency that moves with the velocity over the thickness
    (a Strouhal number), so the target is a bump in log-frequency that no linear model follows.
    Added with the eleventh fresh split (cases.FRESH11_DATASETS)."""
    rng = np.random.default_rng(11)
    n = 1100
    frequency = np.exp(rng.uniform(np.log(200.0), np.log(20000.0), n))
    angle = rng.uniform(0.0, 20.0, n)
    chord = rng.uniform(0.025, 0.3, n)
    velocity = rng.uniform(30.0, 72.0, n)
    thickness = 40.0 * chord * (1.0 + angle / 8.0) * rng.uniform(0.8, 1.2, n)  # mm
    off_peak = np.log10(frequency * thickness * 1e-3 / velocity) + 0.4  # decades from the peak
    level = 50.0 * np.log10(velocity) + 10.0 * np.log10(thickness) + 17.0
    level += -12.0 * off_peak**2 / (1.0 + 0.5 * np.abs(off_peak)) + rng.normal(0.0, 1.0, n)
    X = np.column_stack([frequency, angle, chord, velocity, thickness, rng.normal(0.0, 1.0, n)])
    return load_uploaded("csv", _csv_bytes(X, level, "decibels"), "decibels", "regression")


def uploaded_glass() -> RawData:
    """A CSV upload with a class column: 3 kinds of glass (float, container, tableware) from the
    refractive index and 8 oxides' weight percentages (Na, Mg, Al, Si, K, Ca, Ba, Fe), which sum to
    about 100, so silicon is what the others leave: compositional columns with large offsets and
    small spreads (the refractive index moves in its third decimal around 1.518), barium and iron
    absent from most rows, kinds that overlap in every oxide, and 3% of labels mistaken. Added with
    the twelfth fresh split (cases.FRESH12_DATASETS)."""
    rng = np.random.default_rng(12)
    n, classes = 1200, 3
    y = rng.integers(0, classes, n)
    na = np.array([13.2, 13.9, 14.6])[y] + rng.normal(0.0, 0.7, n)
    mg = np.array([3.5, 0.9, 1.6])[y] * rng.lognormal(0.0, 0.6, n)
    al = np.array([1.2, 2.0, 1.6])[y] + rng.normal(0.0, 0.3, n)
    k = np.array([0.55, 0.75, 0.2])[y] * rng.lognormal(0.0, 0.5, n)
    ca = np.array([8.6, 10.1, 8.9])[y] + rng.normal(0.0, 0.8, n)
    ba = np.where(rng.random(n) < np.array([0.05, 0.15, 0.6])[y], rng.exponential(0.8, n), 0.0)
    fe = np.where(rng.random(n) < np.array([0.4, 0.2, 0.05])[y], rng.exponential(0.08, n), 0.0)
    si = 100.0 - (na + mg + al + k + ca + ba + fe) - rng.uniform(0.0, 0.5, n)
    index = 1.5180 + 0.0012 * (ca - 8.9) - 0.0004 * (si - 72.8) + rng.normal(0.0, 0.0004, n)
    X = np.column_stack([index, na, mg, al, si, k, ca, ba, fe])
    y = _mistaken(rng, y, classes, 0.03)
    return load_uploaded("csv", _csv_bytes(X, y, "glass_type"), "glass_type", "classification")


def uploaded_battery() -> RawData:
    """An NPZ upload: a lithium-ion cell's remaining capacity (% of new) from its charge cycles
    (0-3000), the ambient temperature (10-45 °C), the charge rate (0.2-3 C, log-uniform) and the
    depth of discharge (20-100%), plus 2 irrelevant columns and 1% noise: the fade grows as a power
    of the cycles (~0.55) times a temperature factor that is lowest near 25 °C and rises both ways,
    so a linear model follows it only roughly. Added with the twelfth fresh split
    (cases.FRESH12_DATASETS)."""
    rng = np.random.default_rng(12)
    n = 1000
    cycles = rng.uniform(0.0, 3000.0, n)
    temperature = rng.uniform(10.0, 45.0, n)
    rate = np.exp(rng.uniform(np.log(0.2), np.log(3.0), n))
    depth = rng.uniform(0.2, 1.0, n)
    temperature_factor = np.exp(0.06 * (temperature - 25.0)) + 0.4 * np.exp(-0.12 * (temperature - 10.0))
    fade = 0.25 * temperature_factor * depth**0.6 * rate**0.4 * cycles**0.55
    capacity = (100.0 - fade) * (1 + rng.normal(0.0, 0.01, n))
    X = np.column_stack([cycles, temperature, rate, depth, rng.normal(0.0, 1.0, (n, 2))])
    return load_uploaded(
        "npz", _npz_bytes(X.astype(np.float32), capacity.astype(np.float32)), None, "regression"
    )


def uploaded_traffic() -> RawData:
    """An NPZ upload with integer classes: 4 kinds of network flow (browsing, streaming, a bulk
    transfer, a port scan) from a flow's duration (s), bytes, packets, distinct ports and the share
    of bytes sent upstream, plus one irrelevant column: heavy-tailed columns in their own units (the
    bytes span ten decades), durations and rates log-normal within each kind so the kinds overlap,
    3% of labels mistaken. Added with the thirteenth fresh split (cases.FRESH13_DATASETS)."""
    rng = np.random.default_rng(13)
    n, classes = 1500, 4
    y = rng.integers(0, classes, n)
    duration = np.array([2.0, 300.0, 60.0, 0.05])[y] * rng.lognormal(0.0, 1.2, n)
    rate = np.array([2e4, 5e5, 2e6, 3e2])[y] * rng.lognormal(0.0, 1.1, n)  # bytes per second
    sent = duration * rate
    packets = sent / np.array([600.0, 1200.0, 1400.0, 60.0])[y] * rng.lognormal(0.0, 0.2, n)
    ports = np.array([3.0, 1.0, 1.0, 40.0])[y] * rng.lognormal(0.0, 0.5, n)
    upstream = np.clip(np.array([0.2, 0.03, 0.5, 0.5])[y] + rng.normal(0.0, 0.12, n), 0.0, 1.0)
    X = np.column_stack([duration, sent, packets, ports, upstream, rng.normal(0.0, 1.0, n)])
    y = _mistaken(rng, y, classes, 0.03)
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.int64)), None, "classification")


def uploaded_crop() -> RawData:
    """A CSV upload with a target column: a crop's yield (t/ha) from the season's rainfall (mm),
    mean temperature (°C), nitrogen applied (kg/ha) and the soil's pH, plus 2 irrelevant columns and
    5% noise: a product of diminishing returns in water and nitrogen (Mitscherlich), a temperature
    optimum near 21 °C and a pH optimum near 6.5, so a linear model follows it hardly at all (ridge
    R² 0.16, a forest 0.94). Added with the thirteenth fresh split (cases.FRESH13_DATASETS)."""
    rng = np.random.default_rng(13)
    n = 1000
    rain = rng.uniform(200.0, 1200.0, n)
    temperature = rng.uniform(12.0, 30.0, n)
    nitrogen = rng.uniform(0.0, 250.0, n)
    ph = rng.uniform(4.5, 8.5, n)
    water = 1.0 - np.exp(-rain / 400.0)
    heat = np.exp(-(((temperature - 21.0) / 6.0) ** 2))
    fertilizer = 1.0 - 0.65 * np.exp(-nitrogen / 80.0)
    soil = np.clip(1.0 - 0.12 * (ph - 6.5) ** 2, 0.2, None)
    crop_yield = 11.0 * water * heat * fertilizer * soil * rng.lognormal(0.0, 0.05, n)
    X = np.column_stack([rain, temperature, nitrogen, ph, rng.normal(0.0, 1.0, (n, 2))])
    return load_uploaded("csv", _csv_bytes(X, crop_yield, "yield"), "yield", "regression")


def uploaded_cardio() -> RawData:
    """A CSV upload with a class column: whether a patient has heart disease (2 classes) from age
    (years), systolic blood pressure (mmHg), cholesterol (mg/dL), body-mass index, a smoker flag
    (0/1) and resting heart rate (beats/min), plus one irrelevant column: columns in their own
    units (cholesterol in the hundreds beside a 0/1 flag), a risk that is logistic in a sum with one
    interaction (age with blood pressure), 35% of patients ill, and 4% of labels mistaken. Added
    with the fourteenth fresh split (cases.FRESH14_DATASETS)."""
    rng = np.random.default_rng(14)
    n = 1400
    age = rng.uniform(30.0, 80.0, n)
    pressure = 110.0 + 0.5 * (age - 30.0) + rng.normal(0.0, 15.0, n)
    cholesterol = rng.normal(210.0, 40.0, n)
    bmi = rng.lognormal(np.log(27.0), 0.15, n)
    smoker = (rng.random(n) < 0.25).astype(float)
    heart_rate = rng.normal(72.0, 10.0, n)
    risk = (
        0.06 * (age - 55.0)
        + 0.03 * (pressure - 130.0)
        + 0.0012 * (age - 55.0) * (pressure - 130.0)
        + 0.012 * (cholesterol - 210.0)
        + 0.08 * (bmi - 27.0)
        + 0.9 * smoker
        - 0.9
    )
    y = _noisy_binary(rng, risk, mistaken_share=0.04)
    X = np.column_stack([age, pressure, cholesterol, bmi, smoker, heart_rate, rng.normal(0.0, 1.0, n)])
    return load_uploaded("csv", _csv_bytes(X, y, "disease"), "disease", "classification")


def uploaded_power() -> RawData:
    """An NPZ upload: a combined-cycle power plant's net output (MW) from the ambient temperature
    (2-35 °C), the exhaust vacuum (25-80 cmHg), the ambient pressure (990-1035 mbar) and the
    relative humidity (25-100%), plus one irrelevant column and noise of 4 MW: nearly linear (the
    output falls with temperature and vacuum, which move together), with a mild curvature in
    temperature and a pressure column whose spread is 2% of its mean, so a linear model follows it
    closely (ridge R² about 0.93) and a network must beat it only by a little. Added with the
    fourteenth fresh split (cases.FRESH14_DATASETS)."""
    rng = np.random.default_rng(14)
    n = 1200
    temperature = rng.uniform(2.0, 35.0, n)
    vacuum = np.clip(25.0 + 1.4 * temperature + rng.normal(0.0, 6.0, n), 25.0, 80.0)
    pressure = rng.normal(1013.0, 6.0, n)
    humidity = np.clip(90.0 - 1.2 * temperature + rng.normal(0.0, 12.0, n), 25.0, 100.0)
    output = (
        495.0
        - 1.9 * temperature
        - 0.25 * vacuum
        + 0.06 * (pressure - 1013.0)
        - 0.14 * (humidity - 70.0)
        - 0.02 * (temperature - 18.0) ** 2
        + rng.normal(0.0, 4.0, n)
    )
    X = np.column_stack([temperature, vacuum, pressure, humidity, rng.normal(0.0, 1.0, n)])
    return load_uploaded(
        "npz", _npz_bytes(X.astype(np.float32), output.astype(np.float32)), None, "regression"
    )


def uploaded_seeds() -> RawData:
    """A CSV upload with a class column: 3 varieties of wheat from 7 measurements of a kernel (area,
    perimeter, compactness, length, width, asymmetry, groove length), all derived from a kernel's
    length and width, so the columns are nearly collinear (area, perimeter and compactness follow
    from the other two), with one asymmetry column that separates a variety on its own, varieties
    that overlap in size, and 3% of labels mistaken. Added with the fifteenth fresh split
    (cases.FRESH15_DATASETS)."""
    rng = np.random.default_rng(15)
    n, classes = 1100, 3
    y = rng.integers(0, classes, n)
    length = np.array([5.5, 6.1, 5.2])[y] + rng.normal(0.0, 0.22, n)  # mm
    width = np.array([3.25, 3.7, 2.85])[y] + rng.normal(0.0, 0.16, n)
    area = np.pi / 4 * length * width * rng.normal(1.0, 0.02, n)
    perimeter = np.pi * np.sqrt((length**2 + width**2) / 2) * rng.normal(1.0, 0.01, n)
    compactness = 4 * np.pi * area / perimeter**2
    asymmetry = np.array([2.7, 3.6, 4.8])[y] * rng.lognormal(0.0, 0.35, n)
    groove = np.array([5.1, 5.9, 5.1])[y] + rng.normal(0.0, 0.15, n)
    X = np.column_stack([area, perimeter, compactness, length, width, asymmetry, groove])
    y = _mistaken(rng, y, classes, 0.03)
    return load_uploaded("csv", _csv_bytes(X, y, "variety"), "variety", "classification")


def uploaded_bikes() -> RawData:
    """An NPZ upload: hourly bike rentals from the hour of day (0-23), a workday flag, the temperature
    (-5 to 35 °C), the humidity (20-100%) and the wind speed (0-40 km/h), plus one irrelevant column:
    counts with Poisson noise around a demand that peaks at the morning and evening rush on
    workdays and in the afternoon otherwise, rises with temperature up to about 28 °C and falls with
    humidity and wind, so no linear model follows the hour. Added with the fifteenth fresh split
    (cases.FRESH15_DATASETS)."""
    rng = np.random.default_rng(15)
    n = 1300
    hour = rng.integers(0, 24, n).astype(float)
    workday = (rng.random(n) < 5 / 7).astype(float)
    temperature = rng.uniform(-5.0, 35.0, n)
    humidity = rng.uniform(20.0, 100.0, n)
    wind = rng.gamma(2.0, 6.0, n)

    def bump(center: float, width: float) -> np.ndarray:
        return np.exp(-0.5 * ((hour - center) / width) ** 2)

    rush = 3.0 * bump(8.0, 1.2) + 3.5 * bump(17.5, 1.5) + 0.8 * bump(13.0, 3.0)
    leisure = 2.2 * bump(14.5, 3.5)
    by_hour = 0.15 + workday * rush + (1 - workday) * leisure
    weather = np.clip(1.0 + 0.05 * temperature - 0.0009 * temperature**2, 0.05, None)
    weather *= np.exp(-0.008 * (humidity - 50.0).clip(0)) * np.exp(-0.02 * wind)
    rentals = rng.poisson(60.0 * by_hour * weather).astype(float)
    X = np.column_stack([hour, workday, temperature, humidity, wind, rng.normal(0.0, 1.0, n)])
    return load_uploaded(
        "npz", _npz_bytes(X.astype(np.float32), rentals.astype(np.float32)), None, "regression"
    )


def uploaded_faults() -> RawData:
    """An NPZ upload: 4 kinds of surface fault on steel plates (scratch, stain, bump, other) from 8
    measurements of a fault's outline: its area in pixels (log-normal, 20 to 100,000), its perimeter,
    its width and height, the mean and spread of its grey level (0-255), the plate's thickness (mm)
    and a 0/1 flag for the steel grade, plus one irrelevant column. The kinds differ in shape
    (scratches long and thin, stains round and dark, bumps large and bright) more than in any one
    column, and 5% of labels are mistaken. Added with the sixteenth fresh split
    (cases.FRESH16_DATASETS)."""
    rng = np.random.default_rng(16)
    n, classes = 1300, 4
    y = rng.choice(classes, n, p=[0.3, 0.25, 0.2, 0.25])
    area = rng.lognormal(np.array([5.0, 6.5, 8.5, 6.0])[y], 1.0, n)
    elongation = rng.lognormal(np.array([1.8, 0.1, 0.3, 0.6])[y], 0.4, n)  # height / width
    width = np.sqrt(area / elongation)
    height = width * elongation
    perimeter = 2.0 * (width + height) * rng.normal(1.0, 0.05, n)
    grey_mean = np.clip(np.array([110.0, 70.0, 150.0, 115.0])[y] + rng.normal(0.0, 22.0, n), 0, 255)
    grey_spread = rng.gamma(np.array([4.0, 2.0, 6.0, 3.0])[y], 5.0, n)
    thickness = rng.choice([40.0, 70.0, 100.0, 200.0], n)
    grade = (rng.random(n) < 0.4).astype(float)
    X = np.column_stack(
        [area, perimeter, width, height, grey_mean, grey_spread, thickness, grade, rng.normal(0.0, 1.0, n)]
    )
    y = _mistaken(rng, y, classes, 0.05)
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.int64)), None, "classification")


def uploaded_insurance() -> RawData:
    """A CSV upload with a target column: yearly medical charges (dollars, 1,000-60,000) from age
    (18-64), body-mass index, the number of children (0-5), a smoker flag and a region code (0-3),
    plus one irrelevant column: charges grow with age, and smokers pay far more, much more again
    when their body-mass index is over 30 (a step interaction no linear model follows), with
    multiplicative noise. Added with the sixteenth fresh split (cases.FRESH16_DATASETS)."""
    rng = np.random.default_rng(16)
    n = 1250
    age = rng.integers(18, 65, n).astype(float)
    bmi = rng.normal(30.5, 6.0, n).clip(16.0, 53.0)
    children = rng.choice(6, n, p=[0.43, 0.24, 0.18, 0.11, 0.03, 0.01]).astype(float)
    smoker = (rng.random(n) < 0.2).astype(float)
    region = rng.integers(0, 4, n).astype(float)
    base = 250.0 * age + 400.0 * children - 2000.0 + 300.0 * (region == 0)
    smoking = smoker * (13000.0 + 20000.0 * (bmi > 30.0))
    charges = (base.clip(1000.0) + smoking) * rng.lognormal(0.0, 0.12, n)
    X = np.column_stack([age, bmi, children, smoker, region, rng.normal(0.0, 1.0, n)])
    return load_uploaded("csv", _csv_bytes(X, charges, "charges"), "charges", "regression")


def uploaded_churn() -> RawData:
    """A CSV upload with a class column: whether a customer leaves (2 classes) from tenure (months,
    0-72), monthly charges (dollars, 20-120), a contract code (0 monthly, 1 yearly, 2 two-year),
    support calls last quarter (0-9), a paperless-billing flag and data used (GB, log-normal), plus
    one irrelevant column: new customers on monthly contracts leave, more so with many support calls
    and high charges, while long contracts hold almost everyone whatever they pay (an interaction
    of tenure with the contract), 37% leave, and 3% of labels are mistaken. Added with the
    seventeenth fresh split (cases.FRESH17_DATASETS)."""
    rng = np.random.default_rng(17)
    n = 1350
    contract = rng.choice(3, n, p=[0.55, 0.25, 0.2]).astype(float)
    tenure = np.clip(rng.exponential(np.array([14.0, 30.0, 45.0])[contract.astype(int)]), 0.0, 72.0)
    charges = rng.uniform(20.0, 120.0, n)
    calls = rng.poisson(1.5, n).clip(0, 9).astype(float)
    paperless = (rng.random(n) < 0.6).astype(float)
    data_gb = rng.lognormal(np.log(8.0), 0.9, n)
    monthly = contract == 0
    risk = (
        np.where(monthly, 1.2 - 0.06 * tenure, -2.5 - 0.01 * tenure)
        + 0.45 * calls * monthly
        + 0.02 * (charges - 70.0)
        + 0.3 * paperless
        - 0.6
    )
    y = _noisy_binary(rng, risk, mistaken_share=0.03)
    X = np.column_stack([tenure, charges, contract, calls, paperless, data_gb, rng.normal(0.0, 1.0, n)])
    return load_uploaded("csv", _csv_bytes(X, y, "churned"), "churned", "classification")


def uploaded_solar() -> RawData:
    """An NPZ upload: a solar panel's output (watts) from the hour of day (5-20), the day of year
    (1-365), the cloud cover (0-1), the air temperature (°C) and the panel's tilt (degrees), plus one
    irrelevant column: output follows the sun's height (a bump over the hours, higher in summer),
    falls with clouds (sharply past 0.7) and with heat (efficiency drops above 25 °C), peaks near a
    tilt of 35°, with noise that grows with the output. Added with the seventeenth fresh split
    (cases.FRESH17_DATASETS)."""
    rng = np.random.default_rng(17)
    n = 1250
    hour = rng.uniform(5.0, 20.0, n)
    day = rng.integers(1, 366, n).astype(float)
    clouds = rng.beta(1.2, 1.8, n)
    season = 0.5 - 0.5 * np.cos(2 * np.pi * (day - 10.0) / 365.0)  # 0 in winter, 1 in summer
    temperature = 2.0 + 25.0 * season + 6.0 * np.sin(np.pi * (hour - 6.0) / 14.0) + rng.normal(0.0, 3.0, n)
    tilt = rng.uniform(0.0, 70.0, n)
    half_day = 5.0 + 2.5 * season
    sun = np.clip(np.cos(np.pi * (hour - 12.5) / (2 * half_day)), 0.0, None) * (0.55 + 0.45 * season)
    cover = 1.0 - 0.5 * clouds - 0.45 * np.clip(clouds - 0.7, 0.0, None) / 0.3
    heat = 1.0 - 0.005 * np.clip(temperature - 25.0, 0.0, None)
    angle = np.cos(np.radians(tilt - 35.0))
    power = 300.0 * sun * cover * heat * angle
    power = power * rng.normal(1.0, 0.08, n) + rng.normal(0.0, 4.0, n)
    X = np.column_stack([hour, day, clouds, temperature, tilt, rng.normal(0.0, 1.0, n)])
    return load_uploaded(
        "npz", _npz_bytes(X.astype(np.float32), power.astype(np.float32)), None, "regression"
    )


def uploaded_occupancy() -> RawData:
    """An NPZ upload: how many people are in an office room (3 classes: nobody, one, several) from
    the light level (lux, 0-1,000, daylight through the window adds to the lamps), the CO2 level
    (ppm, 300-1,400, rising with each person but lagging behind arrivals), the temperature (°C), the
    relative humidity (%), the sound level (dB) and the hour of day (0-23), plus one irrelevant
    column: lamps and CO2 tell an empty room from an occupied one, while one person and several
    differ mostly in CO2 and sound, and 4% of labels are mistaken. Added with the eighteenth fresh
    split (cases.FRESH18_DATASETS)."""
    rng = np.random.default_rng(18)
    n, classes = 1300, 3
    hour = rng.integers(0, 24, n).astype(float)
    office_hours = (hour >= 8) & (hour <= 18)
    y = np.where(
        office_hours, rng.choice(classes, n, p=[0.3, 0.4, 0.3]), rng.choice(classes, n, p=[0.85, 0.12, 0.03])
    )
    daylight = 600.0 * np.clip(np.sin(np.pi * (hour - 6.0) / 13.0), 0.0, None) * rng.beta(2.0, 2.0, n)
    lamps = np.where(y > 0, rng.normal(450.0, 60.0, n), 0.0) * (rng.random(n) > 0.1)
    light = daylight + lamps
    people = np.array([0.0, 1.0, 3.5])[y] * rng.lognormal(0.0, 0.3, n)
    co2 = 420.0 + 180.0 * people * rng.uniform(0.4, 1.0, n) + rng.normal(0.0, 40.0, n)
    temperature = 20.5 + 0.4 * people + 2.0 * daylight / 600.0 + rng.normal(0.0, 0.6, n)
    humidity = 35.0 + 1.5 * people + rng.normal(0.0, 4.0, n)
    sound = 32.0 + 10.0 * np.log1p(people) + rng.normal(0.0, 3.0, n)
    X = np.column_stack([light, co2, temperature, humidity, sound, hour, rng.normal(0.0, 1.0, n)])
    y = _mistaken(rng, y, classes, 0.04)
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.int64)), None, "classification")


def uploaded_fuel() -> RawData:
    """A CSV upload with a target column: a car's fuel use (litres per 100 km) from its weight (kg,
    800-2,500), engine power (kW), displacement (litres), cylinders (3, 4, 6 or 8), model year
    (1995-2020) and a hybrid flag, plus one irrelevant column: use grows with weight and power,
    falls with the years (a curve that flattens), hybrids use up to 45% less in light cars and about
    15% less in the heaviest (an interaction), with multiplicative noise. Added with the eighteenth fresh
    split (cases.FRESH18_DATASETS)."""
    rng = np.random.default_rng(18)
    n = 1200
    cylinders = rng.choice([3.0, 4.0, 6.0, 8.0], n, p=[0.1, 0.55, 0.25, 0.1])
    displacement = cylinders * rng.uniform(0.25, 0.55, n)
    weight = 700.0 + 180.0 * cylinders + rng.normal(0.0, 150.0, n)
    power = 22.0 * displacement * rng.lognormal(0.0, 0.2, n)
    year = rng.integers(1995, 2021, n).astype(float)
    hybrid = (rng.random(n) < 0.15 * (year > 2005)).astype(float)
    progress = 1.0 - 0.3 * (1.0 - np.exp(-(year - 1995.0) / 10.0))
    use = (2.0 + 0.0042 * weight + 0.025 * power) * progress
    use *= 1.0 - hybrid * np.clip(0.45 - 0.0002 * (weight - 900.0), 0.05, 0.45)
    use = use * rng.lognormal(0.0, 0.06, n)
    X = np.column_stack([weight, power, displacement, cylinders, year, hybrid, rng.normal(0.0, 1.0, n)])
    return load_uploaded("csv", _csv_bytes(X, use, "litres_per_100km"), "litres_per_100km", "regression")


def uploaded_network() -> RawData:
    """An NPZ upload: what a network connection is (3 classes: normal traffic, a port scan, a flood)
    from its duration (s), packets and bytes sent (heavy-tailed, spanning up to 4.6 orders of magnitude),
    the number of distinct ports touched, the share of connection errors and the hour of day, plus
    one irrelevant column: scans touch many ports with tiny packets and many errors, floods send
    many packets in a short time, normal traffic is everything else; 5% of labels are mistaken
    (labelled by a tool that misses some). Added with the nineteenth fresh split
    (cases.FRESH19_DATASETS)."""
    rng = np.random.default_rng(19)
    n, classes = 1400, 3
    y = rng.choice(classes, n, p=[0.6, 0.2, 0.2])
    duration = np.exp(rng.normal(np.array([1.5, 0.5, -0.5])[y], 1.2))
    packets = np.exp(rng.normal(np.array([3.0, 2.0, 6.0])[y], 1.0)) + 1.0
    bytes_per_packet = np.exp(rng.normal(np.array([6.5, 4.0, 5.0])[y], 0.6))
    ports = 1.0 + rng.poisson(np.array([1.5, 40.0, 2.0])[y] * rng.lognormal(0.0, 0.5, n))
    errors = rng.beta(np.array([1.0, 5.0, 2.0])[y], np.array([20.0, 5.0, 8.0])[y])
    hour = rng.integers(0, 24, n).astype(float)
    X = np.column_stack(
        [duration, packets, packets * bytes_per_packet, ports, errors, hour, rng.normal(0.0, 1.0, n)]
    )
    y = _mistaken(rng, y, classes, 0.05)
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.int64)), None, "classification")


def uploaded_wind() -> RawData:
    """A CSV upload with a target column: a wind turbine's power output (kW) from the wind speed
    (m/s, 0-30), the air temperature (°C, which sets the air's density), the wind's direction
    (degrees, the turbine yawing after it with some loss), the turbulence intensity and the hour,
    plus one irrelevant column: no power under 3 m/s, a cubic rise to the rated 2,000 kW at about
    12 m/s, flat to 25 m/s where the turbine cuts out to nothing (a curve with three kinks), with
    noise. Added with the nineteenth fresh split (cases.FRESH19_DATASETS)."""
    rng = np.random.default_rng(19)
    n = 1300
    speed = 30.0 * rng.beta(1.8, 2.6, n)
    temperature = rng.normal(10.0, 8.0, n)
    direction = rng.uniform(0.0, 360.0, n)
    turbulence = rng.uniform(0.05, 0.25, n)
    hour = rng.integers(0, 24, n).astype(float)
    density = 1.225 * 288.15 / (273.15 + temperature)
    yaw_loss = 1.0 - 0.08 * np.abs(np.sin(np.radians(direction - 225.0)))
    cubic = 2000.0 * np.clip((speed - 3.0) / 9.0, 0.0, 1.0) ** 3 * density / 1.225 * yaw_loss
    power = np.where(speed < 25.0, np.minimum(cubic, 2000.0), 0.0)
    power = np.clip(
        power * (1.0 - 0.5 * turbulence * rng.standard_normal(n)) + rng.normal(0.0, 30.0, n), 0.0, None
    )
    X = np.column_stack([speed, temperature, direction, turbulence, hour, rng.normal(0.0, 1.0, n)])
    return load_uploaded("csv", _csv_bytes(X, power, "power_kw"), "power_kw", "regression")


def uploaded_stars() -> RawData:
    """An NPZ upload: what kind of star a star is (4 classes: white dwarf, main-sequence dwarf,
    giant, supergiant) from its surface temperature (K, 2,500-40,000), its radius (solar radii,
    lognormal, from about 0.008 to 1,500: five orders of magnitude), its absolute magnitude (which
    follows from both, -2.5 log of R²T⁴), its colour index (falling with temperature) and its
    distance (parsecs, irrelevant), plus one irrelevant column: the classes overlap in every single
    column and are told apart by where a star sits in the temperature-brightness plane; 3% of labels
    are mistaken (catalogue errors). Added with the twentieth fresh split (cases.FRESH20_DATASETS)."""
    rng = np.random.default_rng(20)
    n, classes = 1500, 4
    y = rng.choice(classes, n, p=[0.15, 0.45, 0.25, 0.15])
    log_temperature = rng.normal(np.array([4.1, 3.75, 3.65, 3.8])[y], np.array([0.2, 0.18, 0.1, 0.25])[y])
    temperature = 10.0 ** np.clip(log_temperature, np.log10(2500.0), np.log10(40000.0))
    radius = np.exp(rng.normal(np.log(np.array([0.012, 0.9, 15.0, 300.0]))[y], 0.45))
    magnitude = 4.74 - 2.5 * np.log10(radius**2 * (temperature / 5772.0) ** 4) + rng.normal(0.0, 0.3, n)
    colour = 7360.0 / temperature - 0.64 + rng.normal(0.0, 0.05, n)
    distance = np.exp(rng.normal(5.0, 1.0, n))
    X = np.column_stack([temperature, radius, magnitude, colour, distance, rng.normal(0.0, 1.0, n)])
    y = _mistaken(rng, y, classes, 0.03)
    return load_uploaded("npz", _npz_bytes(X.astype(np.float32), y.astype(np.int64)), None, "classification")


def uploaded_dose() -> RawData:
    """A CSV upload with a target column: a drug's concentration in the blood (mg/L) some hours
    after an oral dose, from the dose (mg), the hours since it (0.25-24), the patient's weight (kg),
    age and kidney function (creatinine clearance, mL/min), plus one irrelevant column: a
    one-compartment model, absorption at rate ka and elimination at a rate that grows with kidney
    function, the volume of distribution with weight, so the concentration rises and then decays
    exponentially, at a speed set by the patient (interactions no linear model follows), with 10%
    multiplicative noise. Added with the twentieth fresh split (cases.FRESH20_DATASETS)."""
    rng = np.random.default_rng(20)
    n = 1200
    dose = rng.choice([100.0, 250.0, 500.0, 1000.0], n)
    hours = rng.uniform(0.25, 24.0, n)
    weight = rng.normal(75.0, 15.0, n).clip(40.0, 140.0)
    age = rng.uniform(18.0, 90.0, n)
    clearance = ((140.0 - age) * weight / 72.0 * rng.lognormal(0.0, 0.15, n)).clip(10.0, 200.0)
    volume = 0.7 * weight
    absorption = 1.2 * rng.lognormal(0.0, 0.2, n)
    elimination = 0.02 + 0.0025 * clearance
    shape = np.exp(-elimination * hours) - np.exp(-absorption * hours)
    concentration = dose / volume * absorption / (absorption - elimination) * shape
    concentration = concentration * rng.lognormal(0.0, 0.1, n)
    X = np.column_stack([dose, hours, weight, age, clearance, rng.normal(0.0, 1.0, n)])
    return load_uploaded("csv", _csv_bytes(X, concentration, "mg_per_litre"), "mg_per_litre", "regression")


UPLOADED = {
    "up_quadrants": uploaded_quadrants,
    "up_friedman": uploaded_friedman,
    "up_hastie": uploaded_hastie,
    "up_friedman3": uploaded_friedman3,
    "up_sparse": uploaded_sparse,
    "up_swissroll": uploaded_swissroll,
    "up_shells": uploaded_shells,
    "up_waves": uploaded_waves,
    "up_imbalanced": uploaded_imbalanced,
    "up_housing": uploaded_housing,
    "up_spirals": uploaded_spirals,
    "up_energy": uploaded_energy,
    "up_checker": uploaded_checker,
    "up_sales": uploaded_sales,
    "up_blobs": uploaded_blobs,
    "up_arm": uploaded_arm,
    "up_credit": uploaded_credit,
    "up_pendulum": uploaded_pendulum,
    "up_teacher": uploaded_teacher,
    "up_concrete": uploaded_concrete,
    "up_activity": uploaded_activity,
    "up_resistance": uploaded_resistance,
    "up_signals": uploaded_signals,
    "up_airfoil": uploaded_airfoil,
    "up_glass": uploaded_glass,
    "up_battery": uploaded_battery,
    "up_traffic": uploaded_traffic,
    "up_crop": uploaded_crop,
    "up_cardio": uploaded_cardio,
    "up_power": uploaded_power,
    "up_seeds": uploaded_seeds,
    "up_bikes": uploaded_bikes,
    "up_faults": uploaded_faults,
    "up_insurance": uploaded_insurance,
    "up_churn": uploaded_churn,
    "up_solar": uploaded_solar,
    "up_occupancy": uploaded_occupancy,
    "up_fuel": uploaded_fuel,
    "up_network": uploaded_network,
    "up_wind": uploaded_wind,
    "up_stars": uploaded_stars,
    "up_dose": uploaded_dose,
}
DATASETS = (*BUILTIN, *UPLOADED)


def dataset_id(name: str) -> str:
    """A stable 32-hex id standing for an uploaded dataset in the spec (the API's form of it)."""
    return hashlib.md5(name.encode()).hexdigest()  # noqa: S324 (an identifier, not a secret)


@dataclass(frozen=True)
class DataCase:
    """Which rows a case trains on: a dataset, its generator parameters, and a transform."""

    dataset: str
    params: tuple[tuple[str, float], ...] = ()
    transform: str = "none"  # none | sorted | unscaled
    test_shift: str = "none"  # none | shift | rescale | invert: a separate test set

    @property
    def uploaded(self) -> bool:
        return self.dataset in UPLOADED or self.transform != "none" or self.test_shift != "none"

    def spec_data(self) -> dict:
        """The spec's ``data`` section (scaling, shuffle etc. are added by the family)."""
        if not self.uploaded:
            return {"dataset": self.dataset, **({"params": dict(self.params)} if self.params else {})}
        out = {"dataset": dataset_id(f"{self.dataset}:{self.params}:{self.transform}")}
        if self.test_shift != "none":
            out["test_dataset"] = dataset_id(f"{self.dataset}:{self.params}:{self.test_shift}")
        return out


@functools.cache
def uploaded(name: str) -> RawData:
    """An uploaded dataset, generated and parsed once per process: every case of a dataset reads the
    same file (generating and parsing it for each of the ~9,800 cases was two thirds of the time
    labelling spent preparing their data). Its arrays are read-only, so a consumer that wrote into
    them would fail loudly instead of changing the data of the cases after it."""
    raw = UPLOADED[name]()
    raw.X.setflags(write=False)
    raw.y.setflags(write=False)
    return raw


def load(case: DataCase, seed: int) -> tuple[RawData, RawData | None]:
    """The raw training data and the separate test set, if the case has one."""
    if case.dataset in UPLOADED:
        raw = uploaded(case.dataset)
    else:
        raw = load_builtin(case.dataset, dict(case.params), seed)
    test = shifted_test(raw, case.test_shift, seed) if case.test_shift != "none" else None
    return transformed(raw, case.transform, seed), test


def transformed(raw: RawData, transform: str, seed: int) -> RawData:
    if transform == "sorted":  # file order by label (or target): what shuffle: false then trains on
        order = np.argsort(raw.y, kind="stable")
        return RawData(raw.X[order], raw.y[order], raw.task, raw.n_classes, raw.input_shape)
    if transform == "unscaled":  # columns multiplied by 10^u, u uniform in [-2, 3]
        rng = np.random.default_rng(1000 + seed)
        scales = 10.0 ** rng.uniform(-2, 3, raw.X.shape[1])
        scales[np.argmin(scales)], scales[np.argmax(scales)] = 1e-2, 1e3  # the full spread, every seed
        return RawData((raw.X * scales).astype(np.float32), raw.y, raw.task, raw.n_classes, raw.input_shape)
    return raw


def shifted_test(raw: RawData, shift: str, seed: int) -> RawData:
    """A test set from another distribution: the dataset's rows (a bootstrap sample) moved by two
    standard deviations per feature, multiplied by 3, or with their labels inverted."""
    rng = np.random.default_rng(2000 + seed)
    rows = rng.choice(len(raw.y), size=min(len(raw.y), 400), replace=True)
    X, y = raw.X[rows].astype(np.float64), raw.y[rows].copy()
    if shift == "shift":
        X = X + 2.0 * X.std(axis=0)
    elif shift == "rescale":
        X = 3.0 * X
    elif shift == "invert":
        y = (raw.n_classes - 1 - y) if raw.task == "classification" else -y
    return RawData(X.astype(np.float32), y, raw.task, raw.n_classes, raw.input_shape)
