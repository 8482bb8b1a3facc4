"""JSON merge patch (RFC 7386): how a diagnosis's fix is expressed and applied to a JobSpec."""

from __future__ import annotations

from typing import Any


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Objects merge recursively, null deletes a key, anything else replaces. Inputs are not modified."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out
