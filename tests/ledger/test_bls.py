"""Tests for the BLS wrappers, each run under both real backends (blspy and py_ecc)."""

from __future__ import annotations

from typing import Any

import pytest
from py_ecc.bls.g2_primitives import G1_to_pubkey, pubkey_to_G1
from py_ecc.optimized_bls12_381 import curve_order, neg

from linguachain.ledger import bls
from linguachain.ledger.constants import BlsAggregateError, BlsKeyError

MESSAGE = b"block 7 accepted"
IDENTITY_SIGNATURE = b"\xc0" + bytes(95)


@pytest.fixture(autouse=True, params=bls.BACKENDS)
def backend(request: pytest.FixtureRequest) -> Any:
    previous = bls.get_backend()
    bls.set_backend(request.param)
    yield request.param
    bls.set_backend(previous)


@pytest.fixture(scope="module")
def secret_keys() -> list[int]:
    return [bls.keygen(bytes([index]) * 32) for index in range(1, 4)]


@pytest.fixture(scope="module")
def public_keys(secret_keys: list[int]) -> list[bytes]:
    return [bls.sk_to_pk(secret_key) for secret_key in secret_keys]


@pytest.fixture(scope="module")
def signatures(secret_keys: list[int]) -> list[bytes]:
    return [bls.sign(secret_key, MESSAGE) for secret_key in secret_keys]


def test_keygen_is_deterministic() -> None:
    assert bls.keygen(b"\x07" * 32) == bls.keygen(b"\x07" * 32)
    assert bls.keygen(b"\x07" * 32) != bls.keygen(b"\x08" * 32)
    assert 0 < bls.keygen(b"\x07" * 32) < curve_order


@pytest.mark.parametrize("ikm", [b"", b"\x01" * 31, "a" * 32])
def test_keygen_rejects_short_ikm(ikm: Any) -> None:
    with pytest.raises(BlsKeyError, match="at least 32 bytes"):
        bls.keygen(ikm)


@pytest.mark.parametrize("secret_key", [0, -1, curve_order, True, 1.0])
def test_secret_key_out_of_range(secret_key: Any) -> None:
    with pytest.raises(BlsKeyError):
        bls.sk_to_pk(secret_key)
    with pytest.raises(BlsKeyError):
        bls.sign(secret_key, MESSAGE)


def test_public_key_is_valid(public_keys: list[bytes]) -> None:
    for public_key in public_keys:
        assert len(public_key) == 48
        assert bls.key_validate(public_key)


def test_key_validate_rejects_identity() -> None:
    assert bls.key_validate(bls.IDENTITY_PUBLIC_KEY) is False


@pytest.mark.parametrize("public_key", [b"", b"\x00" * 48, b"\xff" * 48, b"\x80" * 47])
def test_key_validate_rejects_malformed(public_key: bytes) -> None:
    assert bls.key_validate(public_key) is False


def test_sign_then_verify(public_keys: list[bytes], signatures: list[bytes]) -> None:
    assert bls.verify(public_keys[0], MESSAGE, signatures[0])


def test_verify_rejects_other_message(
    public_keys: list[bytes], signatures: list[bytes]
) -> None:
    assert bls.verify(public_keys[0], b"block 8 accepted", signatures[0]) is False


def test_verify_rejects_other_key(
    public_keys: list[bytes], signatures: list[bytes]
) -> None:
    assert bls.verify(public_keys[1], MESSAGE, signatures[0]) is False


def test_verify_rejects_identity_key() -> None:
    # Under the identity key the identity signature would verify for any message.
    assert bls.verify(bls.IDENTITY_PUBLIC_KEY, MESSAGE, IDENTITY_SIGNATURE) is False


@pytest.mark.parametrize("signature", [b"", b"\x00" * 95, b"\xff" * 96])
def test_verify_rejects_malformed_signature(
    public_keys: list[bytes], signature: bytes
) -> None:
    assert bls.verify(public_keys[0], MESSAGE, signature) is False


def test_fast_aggregate_verify(
    public_keys: list[bytes], signatures: list[bytes]
) -> None:
    aggregate_signature = bls.aggregate(signatures)

    assert bls.fast_aggregate_verify(public_keys, MESSAGE, aggregate_signature)


def test_fast_aggregate_rejects_missing_signer(
    public_keys: list[bytes], signatures: list[bytes]
) -> None:
    aggregate_signature = bls.aggregate(signatures[:2])

    assert bls.fast_aggregate_verify(public_keys, MESSAGE, aggregate_signature) is False


def test_fast_aggregate_rejects_empty_signer_set(signatures: list[bytes]) -> None:
    assert bls.fast_aggregate_verify([], MESSAGE, signatures[0]) is False
    assert bls.fast_aggregate_verify([], MESSAGE, IDENTITY_SIGNATURE) is False


def test_fast_aggregate_rejects_identity_key() -> None:
    assert (
        bls.fast_aggregate_verify(
            [bls.IDENTITY_PUBLIC_KEY], MESSAGE, IDENTITY_SIGNATURE
        )
        is False
    )


def test_fast_aggregate_rejects_cancelling_keys(public_keys: list[bytes]) -> None:
    # Each key is valid, but they sum to the identity, under which the identity
    # signature would verify without any secret key.
    negated = G1_to_pubkey(neg(pubkey_to_G1(public_keys[0])))

    assert bls.key_validate(negated)
    assert (
        bls.fast_aggregate_verify(
            [public_keys[0], negated], MESSAGE, IDENTITY_SIGNATURE
        )
        is False
    )


def test_aggregate_rejects_empty_list() -> None:
    with pytest.raises(BlsAggregateError, match="at least one signature"):
        bls.aggregate([])


def test_aggregate_rejects_malformed_signature(signatures: list[bytes]) -> None:
    with pytest.raises(BlsAggregateError):
        bls.aggregate([signatures[0], b"\x00" * 95])
    with pytest.raises(BlsAggregateError):
        bls.aggregate([signatures[0], b"\x00" * 96])


def test_pop_prove_then_verify(
    secret_keys: list[int], public_keys: list[bytes]
) -> None:
    proof = bls.pop_prove(secret_keys[0])

    assert bls.pop_verify(public_keys[0], proof)
    assert bls.pop_verify(public_keys[1], proof) is False


def test_pop_rejects_message_signature(
    public_keys: list[bytes], signatures: list[bytes]
) -> None:
    # A signature on an ordinary message is no proof of possession (separate DST).
    assert bls.pop_verify(public_keys[0], signatures[0]) is False


def test_pop_rejects_identity_key() -> None:
    assert bls.pop_verify(bls.IDENTITY_PUBLIC_KEY, IDENTITY_SIGNATURE) is False


def test_backends_agree_byte_for_byte(secret_keys: list[int]) -> None:
    outputs = {}
    for name in bls.BACKENDS:
        bls.set_backend(name)
        outputs[name] = (
            bls.sk_to_pk(secret_keys[0]),
            bls.sign(secret_keys[0], MESSAGE),
            bls.pop_prove(secret_keys[0]),
            bls.aggregate([bls.sign(k, MESSAGE) for k in secret_keys]),
        )
    assert outputs["blspy"] == outputs["py_ecc"]


def test_signature_from_other_backend_verifies(
    backend: str, secret_keys: list[int], public_keys: list[bytes]
) -> None:
    other = "py_ecc" if backend == "blspy" else "blspy"
    bls.set_backend(other)
    signature = bls.sign(secret_keys[1], MESSAGE)
    bls.set_backend(backend)
    assert bls.verify(public_keys[1], MESSAGE, signature)
    assert not bls.verify(public_keys[0], MESSAGE, signature)


def test_set_backend_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown BLS backend 'blst'"):
        bls.set_backend("blst")


def _batch(secret_keys: list[int], count: int) -> list[tuple[list[bytes], bytes, bytes]]:
    items = []
    for index in range(count):
        message = b"block %d" % index
        signers = secret_keys[: 1 + index % len(secret_keys)]
        signature = bls.aggregate([bls.sign(k, message) for k in signers])
        items.append(([bls.sk_to_pk(k) for k in signers], message, signature))
    return items


def test_batch_verify_accepts_valid_triples(secret_keys: list[int]) -> None:
    items = _batch(secret_keys, 4)
    assert bls.batch_fast_aggregate_verify(items)
    assert bls.batch_fast_aggregate_verify([])


def test_batch_verify_rejects_one_bad_triple(
    secret_keys: list[int], public_keys: list[bytes]
) -> None:
    items = _batch(secret_keys, 4)
    keys, message, signature = items[2]
    cases = {
        "other message": (keys, b"forged", signature),
        "missing signer": (keys[:-1] or [public_keys[2]], message, signature),
        "identity key": ([bls.IDENTITY_PUBLIC_KEY], message, IDENTITY_SIGNATURE),
        "no signers": ([], message, signature),
        "truncated signature": (keys, message, signature[:-1]),
    }
    for name, triple in cases.items():
        forged = items[:2] + [triple] + items[3:]
        assert not bls.batch_fast_aggregate_verify(forged), name
