"""BLS signatures on BLS12-381 with the proof-of-possession ciphersuite.

Each function names the IETF BLS signature draft operation it runs, in the
ciphersuite BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_ (public keys in G1,
signatures in G2). Secret keys are integers in [1, r - 1], public keys are 48-byte
compressed G1 points and signatures are 96-byte compressed G2 points.

Two backends implement the same ciphersuite, so keys and signatures move freely
between them (tests sign with one and verify with the other):

| backend | library | Sign | Verify | FastAggregateVerify, 4 keys |
| --- | --- | --- | --- | --- |
| `blspy` (default) | blspy 2.0.3, Chia's C++ BLS library | 0.4 ms | 1.3 ms | 1.4 ms |
| `py_ecc` | py_ecc 8.0.0, pure Python | 150-200 ms | 0.4-0.7 s | 0.45 s |

Timings are from one process on an idle 2-core CPU. Set the environment variable
`LINGUACHAIN_BLS_BACKEND=py_ecc` (or call `set_backend`) to use the reference
implementation. KeyGen always runs in py_ecc, so a seed gives the same key under
either backend.

Aggregation is only safe against rogue-key attacks when every public key passed to
`fast_aggregate_verify` has had its proof of possession checked with `pop_verify`,
for example once when the validator joins the stake table.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence

import blspy
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

BACKENDS = ("blspy", "py_ecc")
# Domain separation tag of the proof-of-possession ciphersuite's hash to G2.
POP_CIPHERSUITE = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
BACKEND_VARIABLE = "LINGUACHAIN_BLS_BACKEND"

# Compressed encoding of the point at infinity in G1: flag bits 0b11 then zeros.
# KeyValidate rejects it, because under it the identity signature verifies for
# every message.
IDENTITY_PUBLIC_KEY = b"\xc0" + bytes(BLS_PUBLIC_KEY_BYTES - 1)


def set_backend(name: str) -> None:
    """Select the BLS implementation: "blspy" (default) or "py_ecc"."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(
            f"unknown BLS backend {name!r}: set {BACKEND_VARIABLE} to one of "
            f"{', '.join(BACKENDS)}"
        )
    _backend = name


def get_backend() -> str:
    """Return the name of the BLS implementation in use."""
    return _backend


_backend = "blspy"
set_backend(os.environ.get(BACKEND_VARIABLE, "blspy"))


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
    if _backend == "blspy":
        return bytes(_blspy_secret_key(secret_key).get_g1())
    return bytes(G2ProofOfPossession.SkToPk(secret_key))


def key_validate(public_key: bytes) -> bool:
    """Check a public key with KeyValidate: a G1 subgroup point other than identity."""
    if not isinstance(public_key, bytes) or len(public_key) != BLS_PUBLIC_KEY_BYTES:
        return False
    if _backend == "blspy":
        return _blspy_public_key(public_key) is not None
    return bool(G2ProofOfPossession.KeyValidate(public_key))


def pop_prove(secret_key: int) -> bytes:
    """Sign the secret key's own public key with PopProve (proof of possession)."""
    check_secret_key(secret_key)
    if _backend == "blspy":
        return bytes(blspy.PopSchemeMPL.pop_prove(_blspy_secret_key(secret_key)))
    return bytes(G2ProofOfPossession.PopProve(secret_key))


def pop_verify(public_key: bytes, proof: bytes) -> bool:
    """Check a proof of possession with PopVerify, which also runs KeyValidate."""
    if not _is_signature(proof):
        return False
    if _backend == "blspy":
        point = _blspy_public_key(public_key)
        signature = _blspy_signature(proof)
        if point is None or signature is None:
            return False
        return bool(blspy.PopSchemeMPL.pop_verify(point, signature))
    return bool(G2ProofOfPossession.PopVerify(public_key, proof))


def sign(secret_key: int, message: bytes) -> bytes:
    """Sign a message with Sign and return the 96-byte signature."""
    check_secret_key(secret_key)
    if not isinstance(message, bytes):
        raise TypeError(f"BLS message must be bytes, got {type(message).__name__}")
    if _backend == "blspy":
        return bytes(blspy.PopSchemeMPL.sign(_blspy_secret_key(secret_key), message))
    return bytes(G2ProofOfPossession.Sign(secret_key, message))


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check a signature with Verify, which also runs KeyValidate on the public key."""
    if not _is_signature(signature) or not isinstance(message, bytes):
        return False
    if _backend == "blspy":
        point = _blspy_public_key(public_key)
        decoded = _blspy_signature(signature)
        if point is None or decoded is None:
            return False
        return bool(blspy.PopSchemeMPL.verify(point, message, decoded))
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
    if _backend == "blspy":
        decoded = [_blspy_signature(signature) for signature in signatures]
        for index, point in enumerate(decoded):
            if point is None:
                raise BlsAggregateError(
                    f"Aggregate failed: signature {index} does not decode to a G2 "
                    "point in the prime-order subgroup"
                )
        return bytes(blspy.PopSchemeMPL.aggregate(decoded))
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
    if _backend == "blspy":
        points = [_blspy_public_key(key) for key in public_keys]
        decoded = _blspy_signature(signature)
        if decoded is None or any(point is None for point in points):
            return False
        return bool(blspy.PopSchemeMPL.fast_aggregate_verify(points, message, decoded))
    return bool(
        G2ProofOfPossession.FastAggregateVerify(list(public_keys), message, signature)
    )


def batch_fast_aggregate_verify(
    items: Sequence[tuple[Sequence[bytes], bytes, bytes]],
) -> bool:
    """Check many (public keys, message, aggregate signature) triples at once.

    True means every message was signed by its keys: the signatures add up to a
    valid AggregateVerify of each message under the sum of its keys. Messages
    signed by the same key set share one pairing, because e(P, H(a)) e(P, H(b))
    = e(P, H(a) + H(b)), so a chain signed by one committee costs one pairing
    plus a hash to G2 per message. Every key must have passed pop_verify.

    NOTE: a sum also passes when two stored signatures are shifted by +d and -d,
    so a caller that must vouch for each stored signature on its own (not only
    for what was signed) checks it with fast_aggregate_verify.
    """
    if not items:
        return True
    if _backend != "blspy":
        return all(fast_aggregate_verify(k, m, s) for k, m, s in items)
    # Sum of H(message) per signer set, keyed by the sorted public keys.
    hashed: dict[tuple[bytes, ...], blspy.G2Element] = {}
    signatures = []
    for public_keys, message, signature in items:
        decoded = _blspy_signature(signature)
        if decoded is None or not isinstance(message, bytes):
            return False
        key_set = tuple(sorted(public_keys))
        if not key_set or _blspy_aggregate_key(key_set) is None:
            return False
        point = blspy.G2Element.from_message(message, POP_CIPHERSUITE)
        hashed[key_set] = hashed[key_set] + point if key_set in hashed else point
        signatures.append(decoded)
    left = blspy.G1Element.generator().pair(blspy.PopSchemeMPL.aggregate(signatures))
    right = None
    for key_set, message_sum in hashed.items():
        aggregate_key = _blspy_aggregate_key(key_set)
        assert aggregate_key is not None
        term = aggregate_key.pair(message_sum)
        right = term if right is None else right * term
    return bool(left == right)


@functools.lru_cache(maxsize=256)
def _blspy_aggregate_key(key_set: tuple[bytes, ...]) -> blspy.G1Element | None:
    """Sum a set of public keys, or return None unless KeyValidate accepts each."""
    points = [_blspy_public_key(key) for key in key_set]
    if any(point is None for point in points):
        return None
    total = points[0]
    for point in points[1:]:
        total = total + point
    return total


def _is_signature(signature: object) -> bool:
    return isinstance(signature, bytes) and len(signature) == BLS_SIGNATURE_BYTES


def _blspy_secret_key(secret_key: int) -> blspy.PrivateKey:
    return blspy.PrivateKey.from_bytes(secret_key.to_bytes(32, "big"))


@functools.lru_cache(maxsize=4096)
def _blspy_public_key(public_key: bytes) -> blspy.G1Element | None:
    """Decode a public key, or return None unless KeyValidate accepts it."""
    if not isinstance(public_key, bytes) or len(public_key) != BLS_PUBLIC_KEY_BYTES:
        return None
    try:
        # from_bytes checks the encoding, the curve and the prime-order subgroup.
        point = blspy.G1Element.from_bytes(public_key)
    except ValueError:
        return None
    return None if point == blspy.G1Element() else point


def _blspy_signature(signature: bytes) -> blspy.G2Element | None:
    if not _is_signature(signature):
        return None
    try:
        return blspy.G2Element.from_bytes(signature)
    except ValueError:
        return None
