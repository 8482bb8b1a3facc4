"""The diagnosis codes of the public contract: one verdict per finished job, any number of findings.

The API validates query filters against these lists and the worker's diagnosis names its results
with them, so a code can only be added or renamed here.
"""

from __future__ import annotations

VERDICTS = (
    "good_fit",
    "underfitting.model_bias",
    "underfitting.optimization",
    "overfitting",
    "mismatch",
    "diverged",
)

FINDINGS = (
    "critical_point.saddle",
    "critical_point.local_minimum",
    "plateau.flat_surface",
    "oscillation",
    "learning_rate.too_high",
    "learning_rate.too_low",
    "not_converged",
    "vanishing_gradients",
    "exploding_gradients",
    "dead_units",
    "saturated_units",
    "ill_conditioned_features",
    "label_encoding",
    "unshuffled_data",
    "sharp_minimum",
    "deeper_is_worse",
    "batch_size_sharpness",
)
