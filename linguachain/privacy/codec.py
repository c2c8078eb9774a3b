"""Flatten model updates into one float64 vector and split it into chunks.

An update is a list of numpy arrays in the model's canonical parameter order. The
encryption layers work on one flat float64 vector cut into chunks of a fixed number
of slots, so each chunk fits one ciphertext. The last chunk may be shorter.
"""

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

Shape = tuple[int, ...]


def flatten_update(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate the arrays of an update into one float64 vector."""
    flat_parts = []
    for index, array in enumerate(arrays):
        values = np.asarray(array, dtype=np.float64).ravel()
        non_finite = int(np.count_nonzero(~np.isfinite(values)))
        if non_finite:
            raise ValueError(
                f"update parameter {index} (shape {np.shape(array)}) contains "
                f"{non_finite} NaN or inf values; a node must not encrypt a "
                "non-finite update, so check its local training for divergence"
            )
        flat_parts.append(values)

    if not flat_parts:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(flat_parts)


def update_shapes(arrays: Sequence[np.ndarray]) -> list[Shape]:
    """Return the shape of each array of an update, in order."""
    return [tuple(int(size) for size in np.shape(array)) for array in arrays]


def unflatten_update(vector: np.ndarray, shapes: Sequence[Shape]) -> list[np.ndarray]:
    """Split a flat float64 vector back into arrays of the given shapes."""
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {vector.shape}")

    sizes = [math.prod(shape) for shape in shapes]
    expected = sum(sizes)
    if vector.size != expected:
        raise ValueError(
            f"vector has {vector.size} values but the shapes need {expected}; "
            "pass the shapes of the update that was flattened"
        )

    arrays = []
    offset = 0
    for shape, size in zip(shapes, sizes):
        arrays.append(vector[offset : offset + size].reshape(shape).copy())
        offset += size
    return arrays


def count_chunks(length: int, chunk_size: int) -> int:
    """Return how many chunks of chunk_size values hold a vector of this length."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if length < 0:
        raise ValueError(f"length must not be negative, got {length}")
    return -(-length // chunk_size)


def chunk_lengths(length: int, chunk_size: int) -> list[int]:
    """Return the number of values in each chunk; only the last may be shorter."""
    num_chunks = count_chunks(length, chunk_size)
    return [min(chunk_size, length - index * chunk_size) for index in range(num_chunks)]


def split_chunks(vector: np.ndarray, chunk_size: int) -> list[np.ndarray]:
    """Split a 1-D vector into consecutive chunks of at most chunk_size values."""
    vector = np.asarray(vector)
    if vector.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {vector.shape}")
    lengths = chunk_lengths(vector.size, chunk_size)
    return [
        vector[index * chunk_size : index * chunk_size + length]
        for index, length in enumerate(lengths)
    ]


def join_chunks(chunks: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Concatenate decrypted chunks and cut the result to the original length."""
    if not chunks:
        vector = np.zeros(0, dtype=np.float64)
    else:
        vector = np.concatenate(
            [np.asarray(chunk, dtype=np.float64) for chunk in chunks]
        )
    if vector.size < length:
        raise ValueError(
            f"chunks contain {vector.size} values, fewer than the expected length "
            f"{length}; a chunk is missing"
        )
    return vector[:length]


def bytes_per_parameter(payloads: Sequence[bytes], num_parameters: int) -> float:
    """Return the serialized bytes sent per model parameter."""
    if num_parameters <= 0:
        raise ValueError(f"num_parameters must be positive, got {num_parameters}")
    return sum(len(payload) for payload in payloads) / num_parameters


def add_flat_update(
    weights: Mapping[str, np.ndarray], update: np.ndarray
) -> OrderedDict[str, np.ndarray]:
    """Return the named weights plus a flat update, each array in its own dtype.

    The server builds each new global model this way, and validators repeat it to
    check that a proposed model is its parent plus the decrypted aggregate.
    """
    names = list(weights)
    arrays = [weights[name] for name in names]
    updated = unflatten_update(flatten_update(arrays) + update, update_shapes(arrays))
    return OrderedDict(
        (name, new.astype(old.dtype)) for name, new, old in zip(names, updated, arrays)
    )
