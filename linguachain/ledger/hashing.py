"""Canonical byte serializations and their SHA-256 hashes.

Model weights: for each parameter in the model's canonical order (GPT-2's
`named_parameters` order), the UTF-8 name, the numpy dtype string and the
shape, each length-prefixed, then the raw little-endian bytes of the C-order
array. Structured data (block headers, metrics): JSON with sorted keys, no
whitespace and ASCII only, which Python's `json` produces identically on
every platform for the ints, strings, lists and finite floats stored here.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack(">Q", len(data)) + data


def weights_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    """Serialize named arrays canonically, in the mapping's order."""
    parts = []
    for name, array in weights.items():
        array = np.ascontiguousarray(array)
        little_endian = array.astype(array.dtype.newbyteorder("<"), copy=False)
        parts.append(_length_prefixed(name.encode("utf-8")))
        parts.append(_length_prefixed(little_endian.dtype.str.encode("ascii")))
        parts.append(_length_prefixed(json.dumps(list(array.shape)).encode("ascii")))
        parts.append(_length_prefixed(little_endian.tobytes()))
    return b"".join(parts)


def hash_weights(weights: Mapping[str, np.ndarray]) -> str:
    """Return the SHA-256 hex digest of the canonical weights serialization."""
    digest = hashlib.sha256()
    for name, array in weights.items():
        digest.update(weights_bytes({name: array}))
    return digest.hexdigest()


def canonical_json(value: Any) -> bytes:
    """Serialize JSON-compatible data canonically (sorted keys, no whitespace).

    Raise ValueError for a non-finite float, which has no JSON form.
    """
    try:
        text = json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
    except ValueError as error:
        raise ValueError(
            f"Cannot hash a non-finite float ({error}); store it as null."
        ) from error
    return text.encode("ascii")


def hash_json(value: Any) -> str:
    """Return the SHA-256 hex digest of `canonical_json(value)`."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
