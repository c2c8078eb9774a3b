"""Consensus constants, with units, and the typed errors raised when a rule is broken.

| name | value | unit |
| --- | --- | --- |
| `VDF_ITERATIONS` | 150_000 | class-group squarings |
| `VDF_DISCRIMINANT_BITS` | 1024 | bits |
| `MIN_VDF_DISCRIMINANT_BITS` | 128 | bits |
| `MAX_VDF_DISCRIMINANT_BITS` | 1024 | bits |
| `MAX_VDF_ITERATIONS` | 2**64 - 1 | class-group squarings |
| `VDF_FORM_BYTES` | 100 | bytes |
| `VDF_INITIAL_FORM` | `0x08` then 99 zero bytes | serialized class-group form |
| `VDF_INTERVAL` | 64 | blocks per VDF proof |
| `POW_DIFFICULTY_BITS` | 12 | leading zero bits of SHA-256 |
| `MIN_POW_DIFFICULTY_BITS` | 1 | leading zero bits |
| `MAX_POW_DIFFICULTY_BITS` | 32 | leading zero bits |
| `POW_NONCE_BYTES` | 8 | bytes, big-endian |
| `BLS_KEYGEN_MIN_IKM_BYTES` | 32 | bytes |
| `BLS_PUBLIC_KEY_BYTES` | 48 | bytes (compressed G1 point) |
| `BLS_SIGNATURE_BYTES` | 96 | bytes (compressed G2 point) |
| `QUORUM_NUMERATOR` / `QUORUM_DENOMINATOR` | 2 / 3 | share of total stake |
| `BASE_UNITS_PER_LINGUACOIN` | 10**8 | base units |
| `BASIS_POINTS` | 10_000 | basis points in one whole |
| `SLASH_BASIS_POINTS` | 500 | basis points of bonded stake |
"""

from __future__ import annotations

# --- Verifiable delay function (chiavdf, Wesolowski proof) ---

# NOTE: sized so that proving takes about 1 s at the ~130-160k iterations/s that
# chiavdf 1.2.0 reached on a 2-core CPU (150k iterations: 1.1-1.3 s to prove, 5 ms
# to verify). A faster prover finishes sooner, so deployments should set the
# iteration count from a measurement on their slowest eligible proposer.
VDF_ITERATIONS = 150_000
VDF_DISCRIMINANT_BITS = 1024
# Smaller class groups are cheap to precompute, so anything below this is rejected.
MIN_VDF_DISCRIMINANT_BITS = 128
# chiavdf 1.2.0 serializes forms into 100 bytes, which fits discriminants up to
# 1024 bits, and raises for larger sizes.
MAX_VDF_DISCRIMINANT_BITS = 1024
# chiavdf takes the iteration count as an unsigned 64-bit integer.
MAX_VDF_ITERATIONS = 2**64 - 1
VDF_FORM_BYTES = 100
# The generator form (a=2, b=1) in chiavdf's compressed encoding, as Chia uses it.
VDF_INITIAL_FORM = b"\x08" + bytes(VDF_FORM_BYTES - 1)
# Blocks per VDF epoch: the first block of each epoch carries a VDF proof, and its
# output seeds the proposer draw of every height up to the next VDF block. A
# 1024-bit proof costs about 25 ms to check (20 ms of it deriving the
# discriminant), so one per block would cost about 250 s per 10,000 blocks replayed.
VDF_INTERVAL = 64

# --- Proof of work (hashcash over SHA-256) ---

# About 4096 SHA-256 calls on average: 2.1 ms mean, 11 ms worst, over 200 random
# headers on a 2-core CPU (CPython 3.11).
POW_DIFFICULTY_BITS = 12
MIN_POW_DIFFICULTY_BITS = 1
# Each extra bit doubles the expected work; 32 bits is about 4.3e9 SHA-256 calls.
MAX_POW_DIFFICULTY_BITS = 32
POW_NONCE_BYTES = 8

# --- BLS signatures (BLS12-381, G2ProofOfPossession ciphersuite) ---

# KeyGen in the IETF BLS signature draft requires at least 32 bytes of input key
# material.
BLS_KEYGEN_MIN_IKM_BYTES = 32
BLS_PUBLIC_KEY_BYTES = 48
BLS_SIGNATURE_BYTES = 96

# --- Stake and quorum ---

# A block is final once its signers hold at least two thirds of the total stake.
QUORUM_NUMERATOR = 2
QUORUM_DENOMINATOR = 3

# --- LinguaCoin ---

BASE_UNITS_PER_LINGUACOIN = 10**8
BASIS_POINTS = 10_000
# Share of a validator's bonded stake burned for one double-sign offence (5%).
SLASH_BASIS_POINTS = 500


# --- Errors ---


class ConsensusError(ValueError):
    """Base class for a broken consensus rule or an invalid consensus parameter."""


class VdfParameterError(ConsensusError):
    """Invalid VDF challenge, discriminant size or iteration count."""


class PowParameterError(ConsensusError):
    """Invalid proof-of-work header or difficulty."""


class BlsKeyError(ConsensusError):
    """Invalid BLS key material: short KeyGen input, secret key out of range."""


class BlsAggregateError(ConsensusError):
    """Invalid input to BLS Aggregate, such as an empty signature list."""


class StakeError(ConsensusError):
    """Invalid stake table: negative or non-integer stakes, duplicate ids, no stake."""


class ProposerParameterError(ConsensusError):
    """Invalid seed or block height for the proposer draw."""


class TransactionError(ConsensusError):
    """Base class for a transaction that breaks a LinguaCoin state-transition rule."""


class UnknownTransactionKindError(TransactionError):
    """Transaction kind outside transfer, reward, stake and slash."""


class MalformedTransactionError(TransactionError):
    """Transaction field with the wrong type or format, or a missing field."""


class InvalidAmountError(TransactionError):
    """Transaction amount that is not a positive integer or not the expected value."""


class InvalidNonceError(TransactionError):
    """Replayed, stale or skipped nonce."""


class InsufficientFundsError(TransactionError):
    """Sender balance, or bonded stake for a slash, below the amount."""


class InvalidSignatureError(TransactionError):
    """Missing or invalid BLS signature on a transaction."""


class InvalidEvidenceError(TransactionError):
    """Double-sign evidence that does not prove an offence, or one already slashed."""
