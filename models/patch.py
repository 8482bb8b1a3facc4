"""Editing a spec as JSON: a JSON merge patch (RFC 7386), how a diagnosis's fix is expressed and
applied to a JobSpec, and a dotted path (``optimizer.lr``), how sweeps and ``--set`` name one field."""

from __future__ import annotations

import copy
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


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a spec dict, creating objects on the way (e.g. data.params.noise)."""
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = copy.deepcopy(value)


def get_path(spec: dict[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
