"""Wesolowski VDF over class groups (chiavdf) that seeds the proposer draw.

The proposer of height h evaluates the VDF on a challenge derived from the hash of
block h - 1. Its output is unpredictable until someone has spent the sequential
work, and anyone can check the Wesolowski proof in a few milliseconds.

Every parameter is checked here before any chiavdf call, because in some chiavdf
builds a 0-bit discriminant aborts the whole process inside GMP instead of raising
(chiavdf 1.2.0 raises ValueError).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass

import chiavdf

from linguachain.ledger.constants import (
    MAX_VDF_DISCRIMINANT_BITS,
    MAX_VDF_ITERATIONS,
    MIN_VDF_DISCRIMINANT_BITS,
    VDF_DISCRIMINANT_BITS,
    VDF_FORM_BYTES,
    VDF_INITIAL_FORM,
    VDF_ITERATIONS,
    VdfParameterError,
)

logger = logging.getLogger(__name__)

# Domain tags keep these hashes apart from every other SHA-256 use in the ledger.
VDF_CHALLENGE_DOMAIN = b"linguachain/vdf-challenge/v1"
VDF_SEED_DOMAIN = b"linguachain/vdf-seed/v1"


@dataclass(frozen=True)
class VdfProof:
    """Output form and Wesolowski proof of one VDF evaluation, with its parameters."""

    output: bytes
    proof: bytes
    iterations: int
    discriminant_bits: int


def vdf_challenge(parent_hash: bytes | str) -> bytes:
    """Derive the 32-byte VDF challenge from the parent block hash (bytes or hex)."""
    if isinstance(parent_hash, str):
        try:
            parent_hash = bytes.fromhex(parent_hash)
        except ValueError as error:
            raise VdfParameterError(
                f"parent hash {parent_hash!r} is not valid hex: pass the block hash "
                "as bytes or as a hex string"
            ) from error
    if not isinstance(parent_hash, bytes):
        raise VdfParameterError(
            f"parent hash must be bytes or a hex string, got "
            f"{type(parent_hash).__name__}"
        )
    if not parent_hash:
        raise VdfParameterError("parent hash is empty: pass the parent block's hash")
    return hashlib.sha256(VDF_CHALLENGE_DOMAIN + parent_hash).digest()


def check_vdf_challenge(challenge: bytes) -> None:
    """Raise VdfParameterError unless the challenge is non-empty bytes."""
    if not isinstance(challenge, bytes) or not challenge:
        raise VdfParameterError(
            f"VDF challenge must be non-empty bytes, got {challenge!r}: derive it "
            "with vdf_challenge()"
        )


def check_vdf_parameters(
    challenge: bytes, iterations: int, discriminant_bits: int
) -> None:
    """Raise VdfParameterError unless the challenge, iterations and size are valid."""
    check_vdf_challenge(challenge)
    if not _is_int(iterations) or not 0 < iterations <= MAX_VDF_ITERATIONS:
        raise VdfParameterError(
            f"VDF iterations must be an integer in [1, {MAX_VDF_ITERATIONS}], "
            f"got {iterations!r}"
        )
    if (
        not _is_int(discriminant_bits)
        or discriminant_bits % 8 != 0
        or not MIN_VDF_DISCRIMINANT_BITS
        <= discriminant_bits
        <= MAX_VDF_DISCRIMINANT_BITS
    ):
        raise VdfParameterError(
            f"VDF discriminant size must be a multiple of 8 in "
            f"[{MIN_VDF_DISCRIMINANT_BITS}, {MAX_VDF_DISCRIMINANT_BITS}] bits, got "
            f"{discriminant_bits!r}: use {VDF_DISCRIMINANT_BITS}"
        )


def vdf_prove(
    challenge: bytes,
    iterations: int = VDF_ITERATIONS,
    discriminant_bits: int = VDF_DISCRIMINANT_BITS,
) -> VdfProof:
    """Evaluate the VDF on a challenge and prove the output with a Wesolowski proof."""
    check_vdf_parameters(challenge, iterations, discriminant_bits)

    started = time.perf_counter()
    result = chiavdf.prove(
        challenge, VDF_INITIAL_FORM, discriminant_bits, iterations, ""
    )
    elapsed = time.perf_counter() - started

    # chiavdf returns the output form followed by the proof form.
    if len(result) != 2 * VDF_FORM_BYTES:
        raise RuntimeError(
            f"chiavdf.prove returned {len(result)} bytes, expected "
            f"{2 * VDF_FORM_BYTES}: check the installed chiavdf version"
        )
    logger.debug(
        "proved VDF: %d iterations, %d-bit discriminant, %.3f s",
        iterations,
        discriminant_bits,
        elapsed,
    )
    return VdfProof(
        output=result[:VDF_FORM_BYTES],
        proof=result[VDF_FORM_BYTES:],
        iterations=iterations,
        discriminant_bits=discriminant_bits,
    )


def vdf_verify(challenge: bytes, proof: VdfProof) -> bool:
    """Check a Wesolowski proof that `proof.output` is the VDF output for the challenge.

    Raise VdfParameterError for an invalid challenge, which the verifier derives
    itself. Return False for any malformed or forged proof, which comes from the
    proposer and is untrusted.
    """
    check_vdf_challenge(challenge)

    # Reject malformed proofs here, so chiavdf is called with valid parameters only.
    try:
        check_vdf_parameters(challenge, proof.iterations, proof.discriminant_bits)
    except VdfParameterError as error:
        logger.debug("rejected VDF proof: %s", error)
        return False
    if not isinstance(proof.output, bytes) or len(proof.output) != VDF_FORM_BYTES:
        logger.debug("rejected VDF proof: output is not %d bytes", VDF_FORM_BYTES)
        return False
    if not isinstance(proof.proof, bytes) or len(proof.proof) != VDF_FORM_BYTES:
        logger.debug("rejected VDF proof: proof is not %d bytes", VDF_FORM_BYTES)
        return False

    discriminant = create_discriminant(challenge, proof.discriminant_bits)
    try:
        # verify_wesolowski ignores the unused padding bits of the last output byte,
        # so up to 2**6 encodings of one output verify. Strict decoding accepts only
        # the canonical one, which stops a proposer from grinding the derived seed.
        chiavdf.bqfc_deserialize(discriminant, proof.output, True)
        chiavdf.bqfc_deserialize(discriminant, proof.proof, True)
        return bool(
            chiavdf.verify_wesolowski(
                discriminant,
                VDF_INITIAL_FORM,
                proof.output,
                proof.proof,
                proof.iterations,
            )
        )
    except RuntimeError as error:
        # chiavdf 1.2.0 raises RuntimeError for bytes that do not decode to a
        # class-group form ("Deserializing compressed form failed").
        logger.debug("rejected VDF proof: %s", error)
        return False


@functools.lru_cache(maxsize=64)
def create_discriminant(challenge: bytes, discriminant_bits: int) -> str:
    """Derive the class-group discriminant for a challenge, caching recent ones.

    Callers must pass parameters that check_vdf_parameters accepts.
    """
    return chiavdf.create_discriminant(challenge, discriminant_bits)


def vdf_output_seed(output: bytes) -> bytes:
    """Derive the 32-byte randomness seed from a VDF output form (SHA-256)."""
    if not isinstance(output, bytes) or len(output) != VDF_FORM_BYTES:
        raise VdfParameterError(
            f"VDF output must be {VDF_FORM_BYTES} bytes, got {output!r}: pass "
            "VdfProof.output"
        )
    return hashlib.sha256(VDF_SEED_DOMAIN + output).digest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
