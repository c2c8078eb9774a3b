"""Norm bounding over CKKS: clip each encrypted update to norm C without decrypting it.

The server holds each node's ciphertext Enc(x_i) of x_i = w_i u_i, the update u_i
times the node's training blocks w_i, under the `scoring` parameter set:

1. It computes Enc(|x_i|^2) per node with a ciphertext-ciphertext dot product
   per chunk (`encrypted_squared_norm`).
2. The key committee decrypts only these scalars, and |u_i| = |x_i| / w_i.
3. With the bound C (`aggregation.norm_bound`, or the round's median norm when
   it is 0), each update is scaled by min(1, C / |u_i|), and the FedAvg of the
   clipped updates, sum_i min(1, C / |u_i|) x_i / sum_i w_i, is computed
   homomorphically (`clip_weights` with `fltrust.weighted_sum`).
4. The committee decrypts only that average.

The server learns each node's update norm |u_i| and the average of the clipped
updates, the key committee the same scalars and that average, and neither learns
an update coordinate. This is the same as plaintext norm bounding releases,
except that the server never holds an update.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import tenseal as ts

from linguachain.privacy.errors import InvalidCiphertextError
from linguachain.privacy.fltrust import load_chunk, require_scoring_context


def encrypted_squared_norm(public_context: ts.Context, chunks: Sequence[bytes]) -> bytes:
    """Compute Enc(|x|^2) from a node's encrypted update chunks, serialized."""
    require_scoring_context(public_context)
    total: ts.CKKSVector | None = None
    for index, chunk in enumerate(chunks):
        vector = load_chunk(public_context, chunk, index)
        # dot() multiplies slot-wise, rescales once and sums the slots by rotation.
        square = vector.dot(vector)
        if total is None:
            total = square
        else:
            total.add_(square)
    if total is None:
        raise InvalidCiphertextError("update has no chunks")
    return total.serialize()


def round_bound(norms: Sequence[float], norm_bound: float) -> float:
    """Return the clipping bound C: `norm_bound`, or the median norm when it is 0."""
    if norm_bound > 0:
        return norm_bound
    return float(statistics.median(norms))


def clip_weights(
    norms: Sequence[float], block_weights: Sequence[int], bound: float
) -> list[float]:
    """Return the factor min(1, C / |u_i|) / sum_j w_j each Enc(w_i u_i) is scaled by."""
    if len(norms) != len(block_weights) or not norms:
        raise ValueError(
            f"got {len(norms)} norms and {len(block_weights)} weights; pass one of"
            " each per update and at least one update"
        )
    total = float(sum(block_weights))
    if total <= 0:
        raise ValueError(f"the block weights sum to {total}; they must be positive")
    factors = []
    for norm in norms:
        if not math.isfinite(norm):
            raise ValueError(f"update norm {norm!r} is not finite")
        factors.append(min(1.0, bound / norm) if norm > 0 else 1.0)
    return [factor / total for factor in factors]
