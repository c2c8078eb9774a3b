"""Hashcash-style proof of work over a block header's bytes (SHA-256)."""

from __future__ import annotations

import hashlib
import logging

from linguachain.ledger.constants import (
    MAX_POW_DIFFICULTY_BITS,
    MIN_POW_DIFFICULTY_BITS,
    POW_DIFFICULTY_BITS,
    POW_NONCE_BYTES,
    PowParameterError,
)

logger = logging.getLogger(__name__)

MAX_POW_NONCE = 2 ** (8 * POW_NONCE_BYTES) - 1


def check_pow_parameters(header_bytes: bytes, difficulty_bits: int) -> None:
    """Raise PowParameterError for an empty header or a difficulty out of range."""
    if not isinstance(header_bytes, bytes) or not header_bytes:
        raise PowParameterError(
            f"block header must be non-empty bytes, got {header_bytes!r}: pass the "
            "serialized header without its nonce"
        )
    if (
        not isinstance(difficulty_bits, int)
        or isinstance(difficulty_bits, bool)
        or not MIN_POW_DIFFICULTY_BITS <= difficulty_bits <= MAX_POW_DIFFICULTY_BITS
    ):
        raise PowParameterError(
            f"proof-of-work difficulty must be an integer in "
            f"[{MIN_POW_DIFFICULTY_BITS}, {MAX_POW_DIFFICULTY_BITS}] bits, got "
            f"{difficulty_bits!r}: use {POW_DIFFICULTY_BITS}"
        )


def pow_hash(header_bytes: bytes, nonce: int) -> bytes:
    """Return SHA-256(header || nonce), with the nonce as 8 big-endian bytes."""
    return hashlib.sha256(
        header_bytes + nonce.to_bytes(POW_NONCE_BYTES, "big")
    ).digest()


def leading_zero_bits(digest: bytes) -> int:
    """Count the leading zero bits of a digest."""
    value = int.from_bytes(digest, "big")
    return 8 * len(digest) - value.bit_length()


def check_pow(header_bytes: bytes, nonce: int, difficulty_bits: int) -> bool:
    """Check that SHA-256(header || nonce) has at least `difficulty_bits` leading zeros.

    Raise PowParameterError for an invalid header or difficulty, which the verifier
    supplies. Return False for a nonce outside [0, 2**64 - 1], which comes from the
    proposer and is untrusted.
    """
    check_pow_parameters(header_bytes, difficulty_bits)
    if not isinstance(nonce, int) or isinstance(nonce, bool):
        return False
    if not 0 <= nonce <= MAX_POW_NONCE:
        return False
    return leading_zero_bits(pow_hash(header_bytes, nonce)) >= difficulty_bits


def solve_pow(header_bytes: bytes, difficulty_bits: int = POW_DIFFICULTY_BITS) -> int:
    """Find the smallest nonce for which check_pow holds, counting up from 0."""
    check_pow_parameters(header_bytes, difficulty_bits)

    # A digest has `difficulty_bits` leading zeros exactly when it is below this bound.
    bound = 1 << (256 - difficulty_bits)
    header_hash = hashlib.sha256(header_bytes)
    for nonce in range(MAX_POW_NONCE + 1):
        nonce_hash = header_hash.copy()
        nonce_hash.update(nonce.to_bytes(POW_NONCE_BYTES, "big"))
        digest = nonce_hash.digest()
        if int.from_bytes(digest, "big") < bound:
            logger.debug(
                "solved proof of work: %d bits after %d hashes",
                difficulty_bits,
                nonce + 1,
            )
            return nonce

    # Unreachable in practice: 2**64 nonces all failing has probability about
    # exp(-2**(64 - difficulty_bits)).
    raise RuntimeError(
        f"no nonce in [0, {MAX_POW_NONCE}] meets {difficulty_bits} bits for this header"
    )
