"""BLS signatures on BLS12-381 with the proof-of-possession ciphersuite (py_ecc).

Thin wrappers over `py_ecc.bls.G2ProofOfPossession` (IETF BLS signature draft:
public keys in G1, signatures in G2). Each function names the draft's operation it
runs. Secret keys are integers in [1, r - 1], public keys are 48-byte compressed G1
points and signatures are 96-byte compressed G2 points.

Aggregation is only safe against rogue-key attacks when every public key passed to
`fast_aggregate_verify` has had its proof of possession checked with `pop_verify`,
for example once when the validator joins the stake table.

py_ecc is pure Python. Measured with py_ecc 8.0.0 on a busy 2-core CPU, Sign takes
150-200 ms, Verify and PopVerify 0.4-0.7 s and FastAggregateVerify over 4 keys
about 0.45 s, so a block's attestations should be checked as one aggregate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from eth_utils import ValidationError
from py_ecc.bls import G2ProofOfPossession
from py_ecc.optimized_bls12_381 import curve_order

from linguachain.ledger.constants import (
    BLS_KEYGEN_MIN_IKM_BYTES,
    BLS_PUBLIC_KEY_BYTES,
    BLS_SIGNATURE_BYTES,
    BlsAggregateError,
    BlsKeyError,
)

logger = logging.getLogger(__name__)

# Compressed encoding of the point at infinity in G1: flag bits 0b11 then zeros.
# KeyValidate rejects it, because under it the identity signature verifies for
# every message.
IDENTITY_PUBLIC_KEY = b"\xc0" + bytes(BLS_PUBLIC_KEY_BYTES - 1)


def keygen(ikm: bytes, key_info: bytes = b"") -> int:
    """Derive a secret key from input key material with KeyGen."""
    if not isinstance(ikm, bytes) or len(ikm) < BLS_KEYGEN_MIN_IKM_BYTES:
        length = len(ikm) if isinstance(ikm, bytes) else type(ikm).__name__
        raise BlsKeyError(
            f"KeyGen needs at least {BLS_KEYGEN_MIN_IKM_BYTES} bytes of input key "
            f"material, got {length}: pass a seed from secrets.token_bytes(32)"
        )
    return G2ProofOfPossession.KeyGen(ikm, key_info)


def check_secret_key(secret_key: int) -> None:
    """Raise BlsKeyError unless the secret key is an integer in [1, r - 1]."""
    if (
        not isinstance(secret_key, int)
        or isinstance(secret_key, bool)
        or not 0 < secret_key < curve_order
    ):
        # The key itself stays out of the message, because it is a secret.
        raise BlsKeyError(
            "BLS secret key must be an integer in [1, r - 1] for the BLS12-381 "
            "group order r: derive it with keygen()"
        )


def sk_to_pk(secret_key: int) -> bytes:
    """Compute the 48-byte public key for a secret key with SkToPk."""
    check_secret_key(secret_key)
    return bytes(G2ProofOfPossession.SkToPk(secret_key))


def key_validate(public_key: bytes) -> bool:
    """Check a public key with KeyValidate: a G1 subgroup point other than identity."""
    if not isinstance(public_key, bytes) or len(public_key) != BLS_PUBLIC_KEY_BYTES:
        return False
    return bool(G2ProofOfPossession.KeyValidate(public_key))


def pop_prove(secret_key: int) -> bytes:
    """Sign the secret key's own public key with PopProve (proof of possession)."""
    check_secret_key(secret_key)
    return bytes(G2ProofOfPossession.PopProve(secret_key))


def pop_verify(public_key: bytes, proof: bytes) -> bool:
    """Check a proof of possession with PopVerify, which also runs KeyValidate."""
    if not _is_signature(proof):
        return False
    return bool(G2ProofOfPossession.PopVerify(public_key, proof))


def sign(secret_key: int, message: bytes) -> bytes:
    """Sign a message with Sign and return the 96-byte signature."""
    check_secret_key(secret_key)
    if not isinstance(message, bytes):
        raise TypeError(f"BLS message must be bytes, got {type(message).__name__}")
    return bytes(G2ProofOfPossession.Sign(secret_key, message))


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check a signature with Verify, which also runs KeyValidate on the public key."""
    if not _is_signature(signature) or not isinstance(message, bytes):
        return False
    return bool(G2ProofOfPossession.Verify(public_key, message, signature))


def aggregate(signatures: Sequence[bytes]) -> bytes:
    """Combine signatures into one with Aggregate.

    Raise BlsAggregateError for an empty list or a malformed signature, because an
    aggregate of nothing would be the identity signature.
    """
    if len(signatures) == 0:
        raise BlsAggregateError(
            "Aggregate needs at least one signature, got none: collect attestations "
            "before aggregating"
        )
    for index, signature in enumerate(signatures):
        if not _is_signature(signature):
            raise BlsAggregateError(
                f"signature {index} is not {BLS_SIGNATURE_BYTES} bytes: pass the "
                "output of sign()"
            )
    try:
        return bytes(G2ProofOfPossession.Aggregate(list(signatures)))
    except (ValidationError, ValueError, AssertionError) as error:
        raise BlsAggregateError(
            f"Aggregate failed: a signature does not decode to a G2 point ({error})"
        ) from error


def fast_aggregate_verify(
    public_keys: Sequence[bytes], message: bytes, signature: bytes
) -> bool:
    """Check one message's aggregate signature by many keys with FastAggregateVerify.

    Return False for an empty signer set, so that no signers never verify. Every key
    must have passed pop_verify before, or a rogue key can forge the aggregate.
    """
    if len(public_keys) == 0:
        logger.debug("rejected aggregate signature: empty signer set")
        return False
    if not _is_signature(signature) or not isinstance(message, bytes):
        return False
    return bool(
        G2ProofOfPossession.FastAggregateVerify(list(public_keys), message, signature)
    )


def _is_signature(signature: object) -> bool:
    return isinstance(signature, bytes) and len(signature) == BLS_SIGNATURE_BYTES
