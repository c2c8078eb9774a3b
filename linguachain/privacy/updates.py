"""Model updates as named arrays: difference to the global model, norm, clipping.

An update is local minus global weights, keyed by parameter name in the model's
canonical order. Norms are taken over all arrays together, in float64.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

Weights = OrderedDict[str, np.ndarray]


def weights_difference(
    local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]
) -> Weights:
    """Return local minus base weights, requiring the same names and shapes."""
    if list(local) != list(base):
        raise ValueError(
            f"Update arrays {list(local)[:3]}... do not match the global model's"
            f" {list(base)[:3]}...; server and node run different presets."
        )
    difference: Weights = OrderedDict()
    for name, value in local.items():
        value = np.asarray(value)
        if value.shape != np.shape(base[name]):
            raise ValueError(
                f"Array {name} has shape {value.shape}, the global model has"
                f" {np.shape(base[name])}."
            )
        difference[name] = value - np.asarray(base[name])
    return difference


def add_update(
    base: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]
) -> Weights:
    """Return base weights plus an update, in the base weights' dtype."""
    return OrderedDict(
        (name, (np.asarray(value) + update[name]).astype(np.asarray(value).dtype))
        for name, value in base.items()
    )


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """Return the L2 norm of an update over all its arrays."""
    total = sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values())
    return math.sqrt(total)


def is_finite(update: Mapping[str, np.ndarray]) -> bool:
    """Return whether every value of the update is finite."""
    return all(bool(np.all(np.isfinite(v))) for v in update.values())


def scale_update(update: Mapping[str, np.ndarray], factor: float) -> Weights:
    """Multiply every array of an update by `factor`, keeping dtypes."""
    return OrderedDict(
        (name, (np.asarray(v) * factor).astype(np.asarray(v).dtype))
        for name, v in update.items()
    )


def clip_update(
    update: Mapping[str, np.ndarray], bound: float
) -> tuple[Weights, float]:
    """Scale the update down to L2 norm `bound`; return it and its norm before."""
    norm = update_norm(update)
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    return scale_update(update, factor), norm


def flat_vector(update: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate the arrays of an update into one float64 vector."""
    if not update:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(
        [np.asarray(v, dtype=np.float64).ravel() for v in update.values()]
    )


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Return the cosine of two flat vectors, 0 when either is zero."""
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if norm_a == 0 or norm_b == 0:
        return 0.0
    return float(np.dot(a, b) / (norm_a * norm_b))
