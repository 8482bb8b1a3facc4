"""The files the client commands read: JobSpecs, sweeps and studies in YAML or JSON, and ``--set``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from saddle.commands import UsageError


def load_mapping(path: str, what: str = "a JobSpec") -> dict[str, Any]:
    """A YAML or JSON mapping from ``path`` (``-``: stdin); anything else is a usage error."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        data = yaml.safe_load(text)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: {what} must be a mapping")
    return data


def load_spec_file(path: str) -> dict[str, Any]:
    """A JobSpec; a scenario file's ``spec`` key is unwrapped."""
    data = load_mapping(path)
    if "spec" in data and "data" not in data:
        data = data["spec"]  # a scenario file: {expect, spec}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a JobSpec must be a mapping")
    return data


def apply_overrides(spec: dict[str, Any], assignments: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--set data.train_size=200``: a dotted path and a YAML value (``[64, 64]``, ``null``, ``0.01``)."""
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise UsageError(f"--set {assignment!r}: expected PATH=VALUE, e.g. optimizer.lr=0.01")
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise UsageError(f"--set {assignment!r}: {key} is not a mapping in the spec")
            node = child
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {assignment!r}: the value is not YAML: {exc}") from None
    return spec
