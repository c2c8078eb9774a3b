"""LinguaCoin transactions: canonical encoding, BLS signatures and state transitions.

Accounts are identified by their BLS public key written as 96 lowercase hex
characters, so a signature can be checked against the sender id alone. Amounts are
integers in base units (`BASE_UNITS_PER_LINGUACOIN` per coin).

| kind | sender | effect on supply |
| --- | --- | --- |
| transfer | account, signs it | none: moves balance from sender to recipient |
| stake | account, signs it | none: bonds balance of the sender as its stake |
| reward | `PROTOCOL_ACCOUNT` | mints `amount` to the recipient's balance |
| slash | `PROTOCOL_ACCOUNT` | burns `amount` of the recipient's bonded stake |

Reward and slash transactions carry no signature: the proposer puts them in a block
and the block's BLS quorum authorizes them, with double-sign evidence for a slash.
Every sender, the protocol included, numbers its transactions 1, 2, 3, ... and a
transaction is valid only with the next number, which rejects replays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from linguachain.ledger import bls
from linguachain.ledger.constants import (
    BASIS_POINTS,
    BLS_PUBLIC_KEY_BYTES,
    SLASH_BASIS_POINTS,
    InsufficientFundsError,
    InvalidAmountError,
    InvalidEvidenceError,
    InvalidNonceError,
    InvalidSignatureError,
    MalformedTransactionError,
    UnknownTransactionKindError,
)

logger = logging.getLogger(__name__)

# NOTE: the signed bytes carry no chain id yet, so a transaction signed for one
# linguachain network also verifies on another network that shares its accounts.
TRANSACTION_DOMAIN = b"linguachain/transaction/v1\x00"
ATTESTATION_DOMAIN = b"linguachain/attestation/v1\x00"

# Sender of reward and slash transactions, which no key signs.
PROTOCOL_ACCOUNT = "protocol"
ACCOUNT_ID_PATTERN = re.compile(f"[0-9a-f]{{{2 * BLS_PUBLIC_KEY_BYTES}}}")
BLOCK_HASH_BYTES = 32
# Attestations sign heights as 8 big-endian bytes. Amounts and nonces are limited
# to the same unsigned 64-bit range, so any implementation can store them as uint64.
MAX_UINT64 = 2**64 - 1


class TransactionKind(StrEnum):
    """Kind of a LinguaCoin transaction."""

    TRANSFER = "transfer"
    REWARD = "reward"
    STAKE = "stake"
    SLASH = "slash"


KIND_VALUES = frozenset(kind.value for kind in TransactionKind)
SIGNED_KINDS = frozenset({TransactionKind.TRANSFER, TransactionKind.STAKE})
PROTOCOL_KINDS = frozenset({TransactionKind.REWARD, TransactionKind.SLASH})


@dataclass(frozen=True)
class Attestation:
    """A validator's BLS signature on the block hash it accepts at one height."""

    validator: str
    height: int
    block_hash: bytes
    signature: bytes


@dataclass(frozen=True)
class DoubleSignEvidence:
    """Two attestations by one validator for two different blocks at one height."""

    first: Attestation
    second: Attestation


@dataclass(frozen=True)
class Transaction:
    """A LinguaCoin transaction. Only a slash carries `evidence`, and it must."""

    kind: str
    sender: str
    recipient: str
    amount: int
    nonce: int
    signature: bytes = b""
    evidence: DoubleSignEvidence | None = None


@dataclass(frozen=True)
class AccountState:
    """Balances, bonded stakes and nonces per account, with supply counters.

    `slashed` contains the (validator, height) offences already punished, so the
    same evidence cannot slash twice.
    """

    balances: Mapping[str, int] = field(default_factory=dict)
    stakes: Mapping[str, int] = field(default_factory=dict)
    nonces: Mapping[str, int] = field(default_factory=dict)
    slashed: frozenset[tuple[str, int]] = frozenset()
    minted: int = 0
    burned: int = 0


# --- Accounts and attestations ---


def account_id(public_key: bytes) -> str:
    """Return the account id of a BLS public key: its 96 lowercase hex characters."""
    if not isinstance(public_key, bytes) or len(public_key) != BLS_PUBLIC_KEY_BYTES:
        raise MalformedTransactionError(
            f"BLS public key must be {BLS_PUBLIC_KEY_BYTES} bytes, got {public_key!r}"
        )
    return public_key.hex()


def is_account_id(value: object) -> bool:
    """Check that a value has the account id format (96 lowercase hex characters)."""
    return isinstance(value, str) and ACCOUNT_ID_PATTERN.fullmatch(value) is not None


def attestation_message(height: int, block_hash: bytes) -> bytes:
    """Return the bytes a validator signs to accept `block_hash` at `height`."""
    _check_height(height)
    _check_block_hash(block_hash)
    return ATTESTATION_DOMAIN + height.to_bytes(8, "big") + block_hash


def sign_attestation(secret_key: int, height: int, block_hash: bytes) -> Attestation:
    """Sign the attestation message for a block with the validator's BLS key."""
    message = attestation_message(height, block_hash)
    return Attestation(
        validator=account_id(bls.sk_to_pk(secret_key)),
        height=height,
        block_hash=block_hash,
        signature=bls.sign(secret_key, message),
    )


def verify_attestation(attestation: Attestation) -> bool:
    """Check an attestation's BLS signature against its validator's public key."""
    if not is_account_id(attestation.validator):
        return False
    try:
        message = attestation_message(attestation.height, attestation.block_hash)
    except MalformedTransactionError:
        return False
    public_key = bytes.fromhex(attestation.validator)
    return bls.verify(public_key, message, attestation.signature)


# --- Canonical encoding ---


def check_transaction_format(tx: Transaction) -> None:
    """Raise a TransactionError subclass for a field with an invalid type or format."""
    if not isinstance(tx.kind, str) or tx.kind not in KIND_VALUES:
        raise UnknownTransactionKindError(
            f"transaction kind {tx.kind!r} is unknown: use one of "
            f"{', '.join(kind.value for kind in TransactionKind)}"
        )
    if not _is_uint64(tx.amount) or tx.amount <= 0:
        raise InvalidAmountError(
            f"{tx.kind} amount must be an integer in [1, {MAX_UINT64}] base units, "
            f"got {tx.amount!r}"
        )
    if not _is_uint64(tx.nonce) or tx.nonce <= 0:
        raise InvalidNonceError(
            f"{tx.kind} nonce must be an integer in [1, {MAX_UINT64}], got "
            f"{tx.nonce!r}: nonces start at 1"
        )
    if not isinstance(tx.signature, bytes):
        raise MalformedTransactionError(
            f"signature must be bytes, got {type(tx.signature).__name__}"
        )

    # Who may send which kind, and to whom.
    if tx.kind in SIGNED_KINDS and not is_account_id(tx.sender):
        raise MalformedTransactionError(
            f"{tx.kind} sender {tx.sender!r} is not an account id: use "
            "account_id(public_key)"
        )
    if tx.kind in PROTOCOL_KINDS and tx.sender != PROTOCOL_ACCOUNT:
        raise MalformedTransactionError(
            f"{tx.kind} sender must be {PROTOCOL_ACCOUNT!r}, got {tx.sender!r}"
        )
    if tx.kind in PROTOCOL_KINDS and tx.signature:
        raise MalformedTransactionError(
            f"{tx.kind} transactions carry no signature, because the block quorum "
            "authorizes them: leave signature empty"
        )
    if tx.kind == TransactionKind.STAKE and tx.recipient != tx.sender:
        raise MalformedTransactionError(
            f"stake recipient {tx.recipient!r} must equal the sender {tx.sender!r}, "
            "because an account bonds its own balance"
        )
    if not is_account_id(tx.recipient):
        raise MalformedTransactionError(
            f"{tx.kind} recipient {tx.recipient!r} is not an account id: use "
            "account_id(public_key)"
        )

    # Evidence belongs to slash transactions only.
    if tx.kind == TransactionKind.SLASH and not isinstance(
        tx.evidence, DoubleSignEvidence
    ):
        raise MalformedTransactionError(
            "slash transaction has no DoubleSignEvidence: attach the two "
            "conflicting attestations"
        )
    if tx.kind != TransactionKind.SLASH and tx.evidence is not None:
        raise MalformedTransactionError(
            f"{tx.kind} transaction carries evidence: only slash transactions may"
        )


def transaction_to_dict(
    tx: Transaction, include_signature: bool = True
) -> dict[str, Any]:
    """Convert a transaction to JSON-ready values, with bytes as lowercase hex."""
    check_transaction_format(tx)
    fields: dict[str, Any] = {
        "kind": str(tx.kind),
        "sender": tx.sender,
        "recipient": tx.recipient,
        "amount": tx.amount,
        "nonce": tx.nonce,
        "evidence": _evidence_to_dict(tx.evidence),
    }
    if include_signature:
        fields["signature"] = tx.signature.hex()
    return fields


def serialize_transaction(tx: Transaction, include_signature: bool = True) -> bytes:
    """Encode a transaction canonically: JSON, sorted keys, no whitespace, UTF-8.

    Integers are JSON numbers, bytes are lowercase hex strings, and a missing
    evidence is null. The output is ASCII because every string field is.
    """
    return _canonical_json(transaction_to_dict(tx, include_signature))


def deserialize_transaction(data: bytes) -> Transaction:
    """Decode a canonical transaction encoding, rejecting any non-canonical input."""
    if not isinstance(data, bytes):
        raise MalformedTransactionError(
            f"encoded transaction must be bytes, got {type(data).__name__}"
        )
    try:
        fields = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedTransactionError(
            f"transaction is not UTF-8 JSON: {error}"
        ) from error
    expected_keys = {
        "kind",
        "sender",
        "recipient",
        "amount",
        "nonce",
        "evidence",
        "signature",
    }
    if not isinstance(fields, dict) or set(fields) != expected_keys:
        raise MalformedTransactionError(
            f"transaction must be a JSON object with keys {sorted(expected_keys)}"
        )

    tx = Transaction(
        kind=fields["kind"],
        sender=fields["sender"],
        recipient=fields["recipient"],
        amount=fields["amount"],
        nonce=fields["nonce"],
        signature=_hex_to_bytes(fields["signature"], "signature"),
        evidence=_evidence_from_dict(fields["evidence"]),
    )
    # Re-encoding catches wrong types, key order, whitespace and uppercase hex.
    if serialize_transaction(tx) != data:
        raise MalformedTransactionError(
            "transaction encoding is not canonical: encode it with "
            "serialize_transaction()"
        )
    return tx


def transaction_signing_message(tx: Transaction) -> bytes:
    """Return the bytes a sender signs: domain tag, then encoding without signature."""
    return TRANSACTION_DOMAIN + serialize_transaction(tx, include_signature=False)


def transaction_hash(tx: Transaction) -> str:
    """Return the transaction id: hex SHA-256 of the encoding with its signature."""
    return hashlib.sha256(serialize_transaction(tx)).hexdigest()


# --- Signatures and evidence ---


def sign_transaction(tx: Transaction, secret_key: int) -> Transaction:
    """Return a copy of a transfer or stake transaction signed with the sender's key."""
    check_transaction_format(dataclasses.replace(tx, signature=b""))
    if tx.kind not in SIGNED_KINDS:
        raise MalformedTransactionError(
            f"{tx.kind} transactions are not signed, because the block quorum "
            "authorizes them"
        )
    signer = account_id(bls.sk_to_pk(secret_key))
    if signer != tx.sender:
        raise MalformedTransactionError(
            f"signing key belongs to account {signer}, not to the sender "
            f"{tx.sender}: sign with the sender's secret key"
        )
    signature = bls.sign(secret_key, transaction_signing_message(tx))
    return dataclasses.replace(tx, signature=signature)


def verify_transaction_signature(tx: Transaction, public_key: bytes) -> bool:
    """Check that the sender's BLS key signed a transfer or stake transaction.

    Return False for reward and slash transactions, which carry no signature, and
    for a public key whose account id is not the sender.
    """
    if tx.kind not in SIGNED_KINDS:
        return False
    if not isinstance(public_key, bytes) or public_key.hex() != tx.sender:
        return False
    try:
        message = transaction_signing_message(tx)
    except MalformedTransactionError:
        return False
    return bls.verify(public_key, message, tx.signature)


def check_double_sign_evidence(evidence: DoubleSignEvidence) -> None:
    """Raise InvalidEvidenceError unless the evidence proves a double sign.

    The evidence proves one when both attestations name the same validator and
    height, name different block hashes, and both BLS signatures verify.
    """
    check_double_sign_rules(evidence)
    for name, attestation in (("first", evidence.first), ("second", evidence.second)):
        if not verify_attestation(attestation):
            raise InvalidEvidenceError(
                f"{name} attestation of validator {attestation.validator} at height "
                f"{attestation.height} has an invalid BLS signature"
            )


def check_double_sign_rules(evidence: DoubleSignEvidence) -> None:
    """Raise InvalidEvidenceError unless the attestations conflict (no BLS checks)."""
    if not isinstance(evidence, DoubleSignEvidence):
        raise InvalidEvidenceError(
            f"evidence must be DoubleSignEvidence, got {type(evidence).__name__}"
        )
    first, second = evidence.first, evidence.second
    for name, attestation in (("first", first), ("second", second)):
        if not isinstance(attestation, Attestation):
            raise InvalidEvidenceError(
                f"{name} attestation must be an Attestation, got "
                f"{type(attestation).__name__}"
            )
        if not is_account_id(attestation.validator):
            raise InvalidEvidenceError(
                f"{name} attestation validator {attestation.validator!r} is not an "
                "account id"
            )
    if first.validator != second.validator:
        raise InvalidEvidenceError(
            f"attestations come from two validators, {first.validator} and "
            f"{second.validator}: double-sign evidence needs one"
        )
    if first.height != second.height:
        raise InvalidEvidenceError(
            f"attestations are for heights {first.height} and {second.height}: "
            "double-sign evidence needs one height"
        )
    if first.block_hash == second.block_hash:
        raise InvalidEvidenceError(
            f"both attestations accept block {first.block_hash.hex()} at height "
            f"{first.height}: signing one block twice is no offence"
        )


# --- State transition ---


def get_slash_amount(stake: int, slash_basis_points: int = SLASH_BASIS_POINTS) -> int:
    """Return the stake burned for one offence: the basis-point share, rounded up."""
    if not _is_uint64(stake):
        raise InvalidAmountError(
            f"stake must be an integer in [0, {MAX_UINT64}] base units, got {stake!r}"
        )
    _check_slash_basis_points(slash_basis_points)
    # Ceiling division, so any positive stake loses at least one base unit.
    return -(-stake * slash_basis_points // BASIS_POINTS)


def get_total_supply(state: AccountState) -> int:
    """Sum every balance and bonded stake in base units."""
    return sum(state.balances.values()) + sum(state.stakes.values())


def supply_invariant_holds(state: AccountState) -> bool:
    """Check that the total supply equals the LinguaCoin minted minus burned."""
    return get_total_supply(state) == state.minted - state.burned


def apply_transaction(
    state: AccountState,
    tx: Transaction,
    slash_basis_points: int = SLASH_BASIS_POINTS,
) -> AccountState:
    """Apply one transaction to the state and return the new state.

    The input state is left unchanged. Signatures and slash evidence signatures are
    not checked here: use process_transaction, or call verify_transaction_signature
    and check_double_sign_evidence first.
    """
    check_transaction_format(tx)
    _check_slash_basis_points(slash_basis_points)

    # The nonce must be the sender's next one: lower is a replay, higher skips one.
    expected_nonce = state.nonces.get(tx.sender, 0) + 1
    if tx.nonce < expected_nonce:
        raise InvalidNonceError(
            f"{tx.kind} from {tx.sender} has nonce {tx.nonce}, but nonces up to "
            f"{expected_nonce - 1} are already used: the transaction is replayed or "
            f"stale, so resend it with nonce {expected_nonce}"
        )
    if tx.nonce > expected_nonce:
        raise InvalidNonceError(
            f"{tx.kind} from {tx.sender} has nonce {tx.nonce}, but the next nonce is "
            f"{expected_nonce}: send the missing transactions first"
        )

    balances = dict(state.balances)
    stakes = dict(state.stakes)
    nonces = dict(state.nonces)
    nonces[tx.sender] = tx.nonce
    minted, burned, slashed = state.minted, state.burned, state.slashed

    if tx.kind == TransactionKind.TRANSFER:
        _debit(balances, tx.sender, tx.amount, tx.kind)
        balances[tx.recipient] = balances.get(tx.recipient, 0) + tx.amount
    elif tx.kind == TransactionKind.STAKE:
        _debit(balances, tx.sender, tx.amount, tx.kind)
        stakes[tx.sender] = stakes.get(tx.sender, 0) + tx.amount
    elif tx.kind == TransactionKind.REWARD:
        balances[tx.recipient] = balances.get(tx.recipient, 0) + tx.amount
        minted += tx.amount
    else:
        assert tx.evidence is not None
        offence = _check_slash(state, tx, slash_basis_points)
        stakes[tx.recipient] -= tx.amount
        burned += tx.amount
        slashed = slashed | {offence}

    logger.debug(
        "applied %s of %d base units from %s to %s (nonce %d)",
        tx.kind,
        tx.amount,
        tx.sender,
        tx.recipient,
        tx.nonce,
    )
    return AccountState(
        balances=balances,
        stakes=stakes,
        nonces=nonces,
        slashed=slashed,
        minted=minted,
        burned=burned,
    )


def process_transaction(
    state: AccountState,
    tx: Transaction,
    slash_basis_points: int = SLASH_BASIS_POINTS,
) -> AccountState:
    """Check a transfer or stake signature, or slash evidence, then apply it.

    Reward transactions are applied without a check, because the block's BLS
    quorum authorizes them.
    """
    check_transaction_format(tx)
    if tx.kind in SIGNED_KINDS:
        if not verify_transaction_signature(tx, bytes.fromhex(tx.sender)):
            raise InvalidSignatureError(
                f"{tx.kind} from {tx.sender} with nonce {tx.nonce} has an invalid "
                "BLS signature: sign it with sign_transaction()"
            )
    elif tx.kind == TransactionKind.SLASH:
        assert tx.evidence is not None
        check_double_sign_evidence(tx.evidence)
    return apply_transaction(state, tx, slash_basis_points)


# --- Helpers ---


def _check_slash(
    state: AccountState, tx: Transaction, slash_basis_points: int
) -> tuple[str, int]:
    """Check a slash against the state and return the (validator, height) offence."""
    assert tx.evidence is not None
    check_double_sign_rules(tx.evidence)
    validator = tx.evidence.first.validator
    height = tx.evidence.first.height
    if tx.recipient != validator:
        raise InvalidEvidenceError(
            f"slash recipient {tx.recipient} is not the validator {validator} named "
            "in the evidence"
        )
    if (validator, height) in state.slashed:
        raise InvalidEvidenceError(
            f"validator {validator} was already slashed for height {height}"
        )
    stake = state.stakes.get(validator, 0)
    if stake <= 0:
        raise InsufficientFundsError(
            f"validator {validator} has no bonded stake to slash"
        )
    expected_amount = get_slash_amount(stake, slash_basis_points)
    if tx.amount != expected_amount:
        raise InvalidAmountError(
            f"slash amount {tx.amount} does not match {slash_basis_points} basis "
            f"points of stake {stake}: use get_slash_amount(), which gives "
            f"{expected_amount}"
        )
    return validator, height


def _debit(balances: dict[str, int], account: str, amount: int, kind: str) -> None:
    balance = balances.get(account, 0)
    if balance < amount:
        raise InsufficientFundsError(
            f"{kind} of {amount} base units exceeds the balance {balance} of "
            f"{account}"
        )
    balances[account] = balance - amount


def _check_slash_basis_points(slash_basis_points: int) -> None:
    if not _is_int(slash_basis_points) or not 0 < slash_basis_points <= BASIS_POINTS:
        raise InvalidAmountError(
            f"slash share must be an integer in [1, {BASIS_POINTS}] basis points, "
            f"got {slash_basis_points!r}"
        )


def _check_height(height: int) -> None:
    if not _is_uint64(height):
        raise MalformedTransactionError(
            f"block height must be an integer in [0, {MAX_UINT64}], got {height!r}"
        )


def _check_block_hash(block_hash: bytes) -> None:
    if not isinstance(block_hash, bytes) or len(block_hash) != BLOCK_HASH_BYTES:
        raise MalformedTransactionError(
            f"block hash must be {BLOCK_HASH_BYTES} bytes, got {block_hash!r}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_uint64(value: object) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_UINT64
    )


def _canonical_json(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("utf-8")


def _attestation_to_dict(attestation: Attestation) -> dict[str, Any]:
    return {
        "validator": attestation.validator,
        "height": attestation.height,
        "block_hash": attestation.block_hash.hex(),
        "signature": attestation.signature.hex(),
    }


def _evidence_to_dict(evidence: DoubleSignEvidence | None) -> dict[str, Any] | None:
    if evidence is None:
        return None
    check_double_sign_rules(evidence)
    for attestation in (evidence.first, evidence.second):
        _check_height(attestation.height)
        _check_block_hash(attestation.block_hash)
        if not isinstance(attestation.signature, bytes):
            raise MalformedTransactionError(
                "attestation signature must be bytes, got "
                f"{type(attestation.signature).__name__}"
            )
    return {
        "first": _attestation_to_dict(evidence.first),
        "second": _attestation_to_dict(evidence.second),
    }


def _evidence_from_dict(fields: object) -> DoubleSignEvidence | None:
    if fields is None:
        return None
    if not isinstance(fields, dict) or set(fields) != {"first", "second"}:
        raise MalformedTransactionError(
            "evidence must be null or a JSON object with keys 'first' and 'second'"
        )
    attestations = []
    for name in ("first", "second"):
        item = fields[name]
        keys = {"validator", "height", "block_hash", "signature"}
        if not isinstance(item, dict) or set(item) != keys:
            raise MalformedTransactionError(
                f"{name} attestation must be a JSON object with keys {sorted(keys)}"
            )
        attestations.append(
            Attestation(
                validator=item["validator"],
                height=item["height"],
                block_hash=_hex_to_bytes(item["block_hash"], f"{name} block_hash"),
                signature=_hex_to_bytes(item["signature"], f"{name} signature"),
            )
        )
    return DoubleSignEvidence(first=attestations[0], second=attestations[1])


def _hex_to_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedTransactionError(f"{name} must be a hex string, got {value!r}")
    try:
        return bytes.fromhex(value)
    except ValueError as error:
        raise MalformedTransactionError(
            f"{name} is not valid hex: {value!r}"
        ) from error
