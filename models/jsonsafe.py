"""JSON columns and responses cannot hold NaN or infinity (Postgres JSONB refuses them)."""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively; numpy scalars become Python numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item())
    return value
