"""Tests for the Wesolowski VDF wrapper, run against the real chiavdf."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import chiavdf
import pytest

from linguachain.ledger.constants import (
    VDF_FORM_BYTES,
    VDF_ITERATIONS,
    ConsensusError,
    VdfParameterError,
)
from linguachain.ledger.vdf import (
    VdfProof,
    vdf_challenge,
    vdf_output_seed,
    vdf_prove,
    vdf_verify,
)

# Small enough that proving takes a few milliseconds.
TEST_ITERATIONS = 2_000


@pytest.fixture(scope="module")
def challenge() -> bytes:
    return vdf_challenge(hashlib.sha256(b"parent block").digest())


@pytest.fixture(scope="module")
def proof(challenge: bytes) -> VdfProof:
    return vdf_prove(challenge, iterations=TEST_ITERATIONS)


def flip_byte(data: bytes, index: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= 0x01
    return bytes(flipped)


def test_challenge_hex_equals_bytes() -> None:
    parent_hash = hashlib.sha256(b"parent block").digest()

    assert vdf_challenge(parent_hash) == vdf_challenge(parent_hash.hex())
    assert len(vdf_challenge(parent_hash)) == 32
    assert vdf_challenge(parent_hash) != vdf_challenge(b"another parent")


@pytest.mark.parametrize("parent_hash", [b"", "", "not hex", 12])
def test_challenge_rejects_invalid_parent(parent_hash: Any) -> None:
    with pytest.raises(VdfParameterError):
        vdf_challenge(parent_hash)


def test_prove_output_layout(proof: VdfProof) -> None:
    assert len(proof.output) == VDF_FORM_BYTES
    assert len(proof.proof) == VDF_FORM_BYTES
    assert proof.iterations == TEST_ITERATIONS
    assert proof.discriminant_bits == 1024


def test_verify_accepts_valid_proof(challenge: bytes, proof: VdfProof) -> None:
    assert vdf_verify(challenge, proof)


def test_prove_is_deterministic(challenge: bytes, proof: VdfProof) -> None:
    assert vdf_prove(challenge, iterations=TEST_ITERATIONS) == proof


def test_verify_at_default_iterations(challenge: bytes) -> None:
    default_proof = vdf_prove(challenge)

    assert default_proof.iterations == VDF_ITERATIONS
    assert vdf_verify(challenge, default_proof)


def test_verify_smaller_discriminant(challenge: bytes) -> None:
    small_proof = vdf_prove(
        challenge, iterations=TEST_ITERATIONS, discriminant_bits=512
    )

    assert vdf_verify(challenge, small_proof)
    relabelled = dataclasses.replace(small_proof, discriminant_bits=1024)
    assert not vdf_verify(challenge, relabelled)


@pytest.mark.parametrize("index", [0, 1, 5, 50, 99])
def test_verify_rejects_flipped_output_byte(
    challenge: bytes, proof: VdfProof, index: int
) -> None:
    forged = dataclasses.replace(proof, output=flip_byte(proof.output, index))

    assert vdf_verify(challenge, forged) is False


@pytest.mark.parametrize("index", [0, 1, 5, 50, 99])
def test_verify_rejects_flipped_proof_byte(
    challenge: bytes, proof: VdfProof, index: int
) -> None:
    forged = dataclasses.replace(proof, proof=flip_byte(proof.proof, index))

    assert vdf_verify(challenge, forged) is False


@pytest.mark.parametrize(
    "iterations", [TEST_ITERATIONS - 1, TEST_ITERATIONS + 1, 2 * TEST_ITERATIONS, 1]
)
def test_verify_rejects_wrong_iterations(
    challenge: bytes, proof: VdfProof, iterations: int
) -> None:
    forged = dataclasses.replace(proof, iterations=iterations)

    assert vdf_verify(challenge, forged) is False


def test_verify_rejects_padding_bits() -> None:
    # For this challenge the last output byte has unused padding bits, which
    # verify_wesolowski alone ignores.
    challenge = vdf_challenge(b"p")
    proof = vdf_prove(challenge, iterations=1_000)

    for bit in range(8):
        output = bytearray(proof.output)
        output[-1] ^= 1 << bit
        forged = dataclasses.replace(proof, output=bytes(output))
        assert vdf_verify(challenge, forged) is False, f"bit {bit} of the last byte"


def test_verify_rejects_other_challenge(proof: VdfProof) -> None:
    other = vdf_challenge(b"another parent")

    assert vdf_verify(other, proof) is False


@pytest.mark.parametrize(
    "changes",
    [
        {"proof": b""},
        {"output": b""},
        {"iterations": 0},
        {"iterations": -1},
        {"iterations": 2**64},
        {"discriminant_bits": 0},
        {"discriminant_bits": 1000},
        {"discriminant_bits": 2048},
        {"output": bytes(VDF_FORM_BYTES)},
        {"proof": bytes(VDF_FORM_BYTES)},
        {"proof": b"\xff" * VDF_FORM_BYTES},
    ],
    ids=lambda changes: ",".join(f"{k}={str(v)[:12]}" for k, v in changes.items()),
)
def test_verify_rejects_malformed_proof(
    challenge: bytes, proof: VdfProof, changes: dict[str, Any]
) -> None:
    forged = dataclasses.replace(proof, **changes)

    assert vdf_verify(challenge, forged) is False


@pytest.mark.parametrize("length", [0, 1, 50, VDF_FORM_BYTES - 1])
def test_verify_rejects_truncated_proof(
    challenge: bytes, proof: VdfProof, length: int
) -> None:
    forged = dataclasses.replace(proof, proof=proof.proof[:length])

    assert vdf_verify(challenge, forged) is False


def test_verify_rejects_extended_proof(challenge: bytes, proof: VdfProof) -> None:
    forged = dataclasses.replace(proof, proof=proof.proof + b"\x00")

    assert vdf_verify(challenge, forged) is False


def test_verify_rejects_empty_challenge(proof: VdfProof) -> None:
    with pytest.raises(VdfParameterError):
        vdf_verify(b"", proof)


@pytest.mark.parametrize(
    ("challenge_value", "iterations", "discriminant_bits"),
    [
        (b"challenge", TEST_ITERATIONS, 0),
        (b"challenge", TEST_ITERATIONS, -1024),
        (b"challenge", TEST_ITERATIONS, 100),
        (b"challenge", TEST_ITERATIONS, 64),
        (b"challenge", TEST_ITERATIONS, 1032),
        (b"challenge", TEST_ITERATIONS, 2048),
        (b"challenge", TEST_ITERATIONS, True),
        (b"challenge", 0, 1024),
        (b"challenge", -1, 1024),
        (b"challenge", 2**64, 1024),
        (b"challenge", 1.5, 1024),
        (b"challenge", True, 1024),
        (b"", TEST_ITERATIONS, 1024),
        ("challenge", TEST_ITERATIONS, 1024),
    ],
)
def test_prove_rejects_bad_parameters(
    monkeypatch: pytest.MonkeyPatch,
    challenge_value: Any,
    iterations: Any,
    discriminant_bits: Any,
) -> None:
    def fail(*args: Any) -> None:
        raise AssertionError("chiavdf must not be called with invalid parameters")

    monkeypatch.setattr(chiavdf, "prove", fail)
    monkeypatch.setattr(chiavdf, "create_discriminant", fail)

    with pytest.raises(ValueError) as raised:
        vdf_prove(challenge_value, iterations, discriminant_bits)
    assert isinstance(raised.value, ConsensusError)


def test_verify_zero_bits_skips_chiavdf(
    monkeypatch: pytest.MonkeyPatch, challenge: bytes, proof: VdfProof
) -> None:
    def fail(*args: Any) -> None:
        raise AssertionError("chiavdf must not be called with invalid parameters")

    monkeypatch.setattr(chiavdf, "create_discriminant", fail)
    monkeypatch.setattr(chiavdf, "verify_wesolowski", fail)

    assert (
        vdf_verify(challenge, dataclasses.replace(proof, discriminant_bits=0)) is False
    )


def test_output_seed(proof: VdfProof) -> None:
    seed = vdf_output_seed(proof.output)

    assert len(seed) == 32
    assert seed == vdf_output_seed(proof.output)
    assert seed != vdf_output_seed(flip_byte(proof.output, 0))


@pytest.mark.parametrize("output", [b"", bytes(VDF_FORM_BYTES - 1), "00" * 100])
def test_output_seed_rejects_bad_length(output: Any) -> None:
    with pytest.raises(VdfParameterError):
        vdf_output_seed(output)
