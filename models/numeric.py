"""Numeric facts and helpers shared by the worker, the diagnosis, sweeps and the API (torch-free)."""

from __future__ import annotations

import math

# Gradient descent on a quadratic diverges once lr * lambda_max > 2: the edge of stability.
EDGE_OF_STABILITY = 2.0


def is_finite(x: float | None) -> bool:
    """A number that is neither None, NaN nor ±inf."""
    return x is not None and math.isfinite(x)


def finite_or_none(x: float | None) -> float | None:
    """``x`` when it is finite, else None (what JSON and the rankings can hold)."""
    return x if is_finite(x) else None


def rounded(x: float | None, digits: int = 4) -> float | None:
    """``x`` to ``digits`` significant digits for evidence and tables; None when not finite."""
    return float(f"{x:.{digits}g}") if is_finite(x) else None
