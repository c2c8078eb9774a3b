"""Content-addressed store of model weights: one file per weights hash.

A file `<hash>.npz` contains the named arrays in canonical order; loading
recomputes `hash_weights` and rejects a file whose content no longer matches
its name.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from linguachain.ledger.hashing import hash_weights

ORDER_KEY = "__order__"


def weights_path(store: str | os.PathLike[str], model_hash: str) -> Path:
    """Return where the weights with `model_hash` live in the store."""
    return Path(store) / f"{model_hash}.npz"


def save_weights(store: str | os.PathLike[str], weights: dict[str, np.ndarray]) -> Path:
    """Store weights under their hash (atomically) and return the file path."""
    model_hash = hash_weights(weights)
    path = weights_path(store, model_hash)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    names = np.array(list(weights), dtype=str)
    np.savez(temporary, **{ORDER_KEY: names}, **{f"w{i}": a for i, a in enumerate(weights.values())})
    os.replace(temporary, path)
    return path


def load_weights(
    store: str | os.PathLike[str], model_hash: str
) -> OrderedDict[str, np.ndarray]:
    """Load the weights with `model_hash`, checking the hash of what was read."""
    path = weights_path(store, model_hash)
    if not path.is_file():
        raise FileNotFoundError(f"weights {model_hash} not found in store {store}")
    with np.load(path) as data:
        names = [str(name) for name in data[ORDER_KEY]]
        weights = OrderedDict((name, data[f"w{i}"]) for i, name in enumerate(names))
    actual = hash_weights(weights)
    if actual != model_hash:
        raise ValueError(
            f"weights file {path} hashes to {actual}, not {model_hash}: the store is"
            " corrupted, restore the file"
        )
    return weights
