"""FLTrust over CKKS: trust scores and the trust-weighted sum under encryption.

FLTrust (Cao et al., "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping", NDSS 2021) scores each node's update u_i against a reference
update r, the server's own update on a small public root set:

    trust_i = ReLU(cos(u_i, r))
    aggregate = sum_i trust_i * (|r| / |u_i|) * u_i / sum_i trust_i

Here the nodes' updates stay encrypted under the `scoring` CKKS parameter set
(depth 2 and Galois keys). The parties and what each one computes and learns:

- node: encrypts its flat update u_i chunk by chunk (`ckks.encrypt_update` with
  token count 1) and sends the ciphertexts. It learns the global models only.
- server (public context, no secret key): computes Enc(<u_i, r>) and
  Enc(|u_i|^2) per node with a ciphertext-plaintext and a ciphertext-ciphertext
  dot product per chunk, sends these 2 ciphertexts per node to the key
  committee, receives the decrypted scalars, computes the trust weights, and
  forms Enc(sum_i w_i u_i) homomorphically. It learns r (its own), and for every
  node the inner product <u_i, r> and the norm |u_i|, hence cos(u_i, r) and the
  trust score. It never receives an update coordinate in plaintext. It learns
  the aggregate.
- key committee (secret context): decrypts only the 2 scalars per node and the
  one aggregate. It learns the same scalars and the aggregate, and no update.

A node that colludes with the server hands it the shared secret key, and then
every update can be decrypted; see the CKKS module for that trust assumption.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from linguachain.privacy.ckks import parameters_of, require_depth
from linguachain.privacy.codec import chunk_lengths, join_chunks, split_chunks
from linguachain.privacy.errors import InvalidCiphertextError

logger = logging.getLogger(__name__)

SCORING_PARAMETER_SET = "scoring"


@dataclass(frozen=True)
class EncryptedScore:
    """Enc(<u_i, r>) and Enc(|u_i|^2) of one node, serialized."""

    inner_product: bytes
    squared_norm: bytes


@dataclass(frozen=True)
class TrustWeights:
    """Plaintext FLTrust outcome per node, from the decrypted scalars."""

    cosines: list[float]
    trust: list[float]
    norms: list[float]
    # Factor each encrypted update is multiplied by: trust * |r| / |u| / sum(trust).
    weights: list[float]


def require_scoring_context(context: ts.Context) -> None:
    """Reject a CKKS context without the depth and Galois keys of a dot product."""
    params = parameters_of(context)
    require_depth(params.name, 1)
    if not params.galois_keys:
        raise ValueError(
            f"CKKS parameter set {params.name!r} has no Galois keys, so it cannot"
            f" sum slots for a dot product; use {SCORING_PARAMETER_SET!r}"
        )


def load_chunk(context: ts.Context, chunk: bytes, index: int) -> ts.CKKSVector:
    """Deserialize chunk `index` of an update as a CKKS vector of `context`."""
    try:
        return ts.ckks_vector_from(context, bytes(chunk))
    except (ValueError, RuntimeError, TypeError) as error:
        raise InvalidCiphertextError(
            f"chunk {index} is not a CKKS ciphertext of this context: {error}"
        ) from error


def encrypted_scores(
    public_context: ts.Context, chunks: Sequence[bytes], reference: np.ndarray
) -> EncryptedScore:
    """Compute Enc(<u, r>) and Enc(|u|^2) from a node's encrypted update chunks."""
    require_scoring_context(public_context)
    slots = parameters_of(public_context).slots
    reference = np.asarray(reference, dtype=np.float64)
    reference_chunks = split_chunks(reference, slots)
    if len(reference_chunks) != len(chunks):
        raise InvalidCiphertextError(
            f"update has {len(chunks)} chunks but the reference of {reference.size}"
            f" values needs {len(reference_chunks)}"
        )

    inner_product: ts.CKKSVector | None = None
    squared_norm: ts.CKKSVector | None = None
    for index, (chunk, plain) in enumerate(zip(chunks, reference_chunks, strict=True)):
        vector = load_chunk(public_context, chunk, index)
        if vector.size() != plain.size:
            raise InvalidCiphertextError(
                f"chunk {index} contains {vector.size()} values, expected {plain.size}"
            )
        # dot() multiplies slot-wise, rescales once and sums the slots by rotation.
        partial_product = vector.dot(plain.tolist())
        partial_square = vector.dot(vector)
        if inner_product is None or squared_norm is None:
            inner_product, squared_norm = partial_product, partial_square
        else:
            inner_product.add_(partial_product)
            squared_norm.add_(partial_square)
    if inner_product is None or squared_norm is None:
        raise InvalidCiphertextError("update has no chunks")
    return EncryptedScore(inner_product.serialize(), squared_norm.serialize())


def decrypt_scores(
    secret_context: ts.Context, scores: Sequence[EncryptedScore]
) -> list[tuple[float, float]]:
    """Decrypt only the (inner product, squared norm) scalars, on the key committee."""
    blobs = [blob for s in scores for blob in (s.inner_product, s.squared_norm)]
    values = decrypt_scalars(secret_context, blobs)
    return [(values[2 * i], values[2 * i + 1]) for i in range(len(scores))]


def decrypt_scalars(secret_context: ts.Context, blobs: Sequence[bytes]) -> list[float]:
    """Decrypt ciphertexts that each hold one scalar, on the key committee.

    Raise InvalidCiphertextError for a ciphertext of more than one value, so the
    committee never decrypts update coordinates here.
    """
    if not secret_context.is_private():
        raise ValueError(
            "the context has no secret key; decrypt scores on a node of the key"
            " committee"
        )
    scalars = []
    for index, blob in enumerate(blobs):
        values = load_chunk(secret_context, blob, index).decrypt()
        if len(values) != 1:
            raise InvalidCiphertextError(
                f"ciphertext {index} decrypts to {len(values)} values, expected one"
                " scalar each; the committee decrypts nothing longer"
            )
        scalars.append(float(values[0]))
    return scalars


def trust_weights(
    scalars: Sequence[tuple[float, float]], reference_norm: float
) -> TrustWeights:
    """Turn decrypted scalars into FLTrust cosines, trust scores and sum weights."""
    if not math.isfinite(reference_norm) or reference_norm <= 0:
        raise ValueError(
            f"reference update norm {reference_norm!r} must be positive and finite;"
            " the server's root-set update is zero"
        )
    cosines, trust, norms = [], [], []
    for inner, square in scalars:
        # CKKS noise can make a tiny squared norm slightly negative.
        norm = math.sqrt(max(square, 0.0))
        cosine = inner / (norm * reference_norm) if norm > 0 else 0.0
        cosines.append(cosine)
        trust.append(max(0.0, cosine))
        norms.append(norm)
    total = sum(trust)
    weights = [
        t * reference_norm / n / total if total > 0 and n > 0 else 0.0
        for t, n in zip(trust, norms, strict=True)
    ]
    return TrustWeights(cosines=cosines, trust=trust, norms=norms, weights=weights)


def weighted_sum(
    public_context: ts.Context,
    chunk_lists: Sequence[Sequence[bytes]],
    weights: Sequence[float],
) -> list[bytes]:
    """Compute Enc(sum_i w_i u_i) chunk-wise from the nodes' encrypted updates."""
    require_scoring_context(public_context)
    if len(chunk_lists) != len(weights) or not chunk_lists:
        raise ValueError(
            f"got {len(chunk_lists)} updates and {len(weights)} weights; pass one"
            " weight per update and at least one update"
        )
    totals: list[ts.CKKSVector] | None = None
    for chunks, weight in zip(chunk_lists, weights, strict=True):
        scaled = [
            load_chunk(public_context, c, i) * float(weight) for i, c in enumerate(chunks)
        ]
        if totals is None:
            totals = scaled
            continue
        if len(scaled) != len(totals):
            raise InvalidCiphertextError(
                f"update has {len(scaled)} chunks, the first one has {len(totals)}"
            )
        for total, vector in zip(totals, scaled, strict=True):
            total.add_(vector)
    assert totals is not None
    return [total.serialize() for total in totals]


def decrypt_aggregate(
    secret_context: ts.Context, chunks: Sequence[bytes], length: int
) -> np.ndarray:
    """Decrypt the trust-weighted sum, the only vector the key committee decrypts."""
    if not secret_context.is_private():
        raise ValueError(
            "the context has no secret key; decrypt on a node of the key committee"
        )
    expected_sizes = chunk_lengths(length, parameters_of(secret_context).slots)
    if len(chunks) != len(expected_sizes):
        raise InvalidCiphertextError(
            f"aggregate has {len(chunks)} chunks, but {length} values need"
            f" {len(expected_sizes)}"
        )
    decrypted = []
    for index, (chunk, size) in enumerate(zip(chunks, expected_sizes, strict=True)):
        vector = load_chunk(secret_context, chunk, index)
        if vector.size() != size:
            raise InvalidCiphertextError(
                f"chunk {index} contains {vector.size()} values, expected {size}"
            )
        decrypted.append(np.asarray(vector.decrypt(), dtype=np.float64))
    return join_chunks(decrypted, length)


def fltrust_aggregate(
    public_context: ts.Context,
    secret_context: ts.Context,
    chunk_lists: Sequence[Sequence[bytes]],
    reference: np.ndarray,
) -> tuple[np.ndarray, TrustWeights]:
    """Run one FLTrust round over encrypted updates, the secret context as committee."""
    reference = np.asarray(reference, dtype=np.float64)
    scores = [
        encrypted_scores(public_context, chunks, reference) for chunks in chunk_lists
    ]
    scalars = decrypt_scores(secret_context, scores)
    weights = trust_weights(scalars, float(np.linalg.norm(reference)))
    logger.info(
        "FLTrust: trust scores %s over %d encrypted updates",
        ", ".join(f"{t:.3f}" for t in weights.trust),
        len(chunk_lists),
    )
    if sum(weights.trust) == 0:
        logger.warning("FLTrust: every trust score is 0; the aggregate is zero")
        return np.zeros(reference.size), weights
    summed = weighted_sum(public_context, chunk_lists, weights.weights)
    return decrypt_aggregate(secret_context, summed, reference.size), weights
