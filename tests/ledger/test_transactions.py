"""Tests for LinguaCoin transactions, with real BLS signatures (py_ecc)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from linguachain.ledger import bls
from linguachain.ledger.constants import (
    SLASH_BASIS_POINTS,
    InsufficientFundsError,
    InvalidAmountError,
    InvalidEvidenceError,
    InvalidNonceError,
    InvalidSignatureError,
    MalformedTransactionError,
    TransactionError,
    UnknownTransactionKindError,
)
from linguachain.ledger.transactions import (
    PROTOCOL_ACCOUNT,
    AccountState,
    DoubleSignEvidence,
    Transaction,
    TransactionKind,
    account_id,
    apply_transaction,
    check_double_sign_evidence,
    deserialize_transaction,
    get_slash_amount,
    get_total_supply,
    process_transaction,
    serialize_transaction,
    sign_attestation,
    sign_transaction,
    supply_invariant_holds,
    transaction_hash,
    transaction_signing_message,
    verify_transaction_signature,
)

HEIGHT = 12
BLOCK_A = hashlib.sha256(b"block a").digest()
BLOCK_B = hashlib.sha256(b"block b").digest()


@dataclasses.dataclass(frozen=True)
class Account:
    secret_key: int
    public_key: bytes
    id: str


def make_account(name: bytes) -> Account:
    secret_key = bls.keygen(hashlib.sha256(name).digest())
    public_key = bls.sk_to_pk(secret_key)
    return Account(secret_key, public_key, account_id(public_key))


@pytest.fixture(scope="module")
def alice() -> Account:
    return make_account(b"alice")


@pytest.fixture(scope="module")
def bob() -> Account:
    return make_account(b"bob")


@pytest.fixture(scope="module")
def validator() -> Account:
    return make_account(b"validator")


def reward(recipient: str, amount: int, nonce: int) -> Transaction:
    return Transaction(
        TransactionKind.REWARD, PROTOCOL_ACCOUNT, recipient, amount, nonce
    )


@pytest.fixture(scope="module")
def funded(alice: Account, validator: Account) -> AccountState:
    """State after rewarding alice 1000 and the validator 5000, of which 4000 bonded."""
    state = AccountState()
    state = apply_transaction(state, reward(alice.id, 1_000, 1))
    state = apply_transaction(state, reward(validator.id, 5_000, 2))
    bond = Transaction(TransactionKind.STAKE, validator.id, validator.id, 4_000, 1)
    return apply_transaction(state, bond)


@pytest.fixture(scope="module")
def signed_transfer(alice: Account, bob: Account) -> Transaction:
    transfer = Transaction(TransactionKind.TRANSFER, alice.id, bob.id, 300, 1)
    return sign_transaction(transfer, alice.secret_key)


@pytest.fixture(scope="module")
def evidence(validator: Account) -> DoubleSignEvidence:
    return DoubleSignEvidence(
        first=sign_attestation(validator.secret_key, HEIGHT, BLOCK_A),
        second=sign_attestation(validator.secret_key, HEIGHT, BLOCK_B),
    )


def slash_for(evidence: DoubleSignEvidence, state: AccountState) -> Transaction:
    validator_id = evidence.first.validator
    amount = get_slash_amount(state.stakes[validator_id])
    nonce = state.nonces.get(PROTOCOL_ACCOUNT, 0) + 1
    return Transaction(
        TransactionKind.SLASH,
        PROTOCOL_ACCOUNT,
        validator_id,
        amount,
        nonce,
        evidence=evidence,
    )


# --- Encoding ---


def test_serialization_is_canonical_json(alice: Account, bob: Account) -> None:
    transfer = Transaction(TransactionKind.TRANSFER, alice.id, bob.id, 5, 1, b"\xab")

    expected = (
        '{"amount":5,"evidence":null,"kind":"transfer","nonce":1,'
        f'"recipient":"{bob.id}","sender":"{alice.id}","signature":"ab"}}'
    ).encode()
    assert serialize_transaction(transfer) == expected
    assert b"signature" not in serialize_transaction(transfer, include_signature=False)


def test_serialization_round_trip(
    signed_transfer: Transaction, funded: AccountState, evidence: DoubleSignEvidence
) -> None:
    slash = slash_for(evidence, funded)

    for tx in (signed_transfer, slash):
        assert deserialize_transaction(serialize_transaction(tx)) == tx


def test_deserialize_rejects_non_canonical(signed_transfer: Transaction) -> None:
    encoded = serialize_transaction(signed_transfer)

    with pytest.raises(MalformedTransactionError, match="not canonical"):
        deserialize_transaction(encoded.replace(b",", b", ", 1))
    with pytest.raises(MalformedTransactionError):
        deserialize_transaction(encoded[:-1])
    with pytest.raises(InvalidAmountError):
        deserialize_transaction(encoded.replace(b'"amount":300', b'"amount":300.0'))


def test_transaction_hash_covers_signature(signed_transfer: Transaction) -> None:
    unsigned = dataclasses.replace(signed_transfer, signature=b"")

    assert len(transaction_hash(signed_transfer)) == 64
    assert transaction_hash(signed_transfer) != transaction_hash(unsigned)


# --- Signatures ---


def test_signature_verifies(signed_transfer: Transaction, alice: Account) -> None:
    assert verify_transaction_signature(signed_transfer, alice.public_key)


def test_tampered_amount_rejected(signed_transfer: Transaction, alice: Account) -> None:
    tampered = dataclasses.replace(signed_transfer, amount=301)

    assert verify_transaction_signature(tampered, alice.public_key) is False


def test_forged_signature_rejected(
    funded: AccountState, alice: Account, bob: Account
) -> None:
    # Bob signs a transfer out of alice's account with his own key.
    transfer = Transaction(TransactionKind.TRANSFER, alice.id, bob.id, 300, 1)
    message_signature = bls.sign(bob.secret_key, transaction_signing_message(transfer))
    forged = dataclasses.replace(transfer, signature=message_signature)

    assert verify_transaction_signature(forged, alice.public_key) is False
    assert verify_transaction_signature(forged, bob.public_key) is False
    with pytest.raises(InvalidSignatureError):
        process_transaction(funded, forged)


def test_sign_rejects_other_key(alice: Account, bob: Account) -> None:
    transfer = Transaction(TransactionKind.TRANSFER, alice.id, bob.id, 300, 1)

    with pytest.raises(MalformedTransactionError, match="sign with the sender"):
        sign_transaction(transfer, bob.secret_key)


def test_sign_rejects_protocol_kind(alice: Account) -> None:
    with pytest.raises(MalformedTransactionError, match="not signed"):
        sign_transaction(reward(alice.id, 5, 1), alice.secret_key)


def test_protocol_kind_never_verifies(alice: Account) -> None:
    assert (
        verify_transaction_signature(reward(alice.id, 5, 1), alice.public_key) is False
    )


def test_process_applies_signed_transfer(
    funded: AccountState, signed_transfer: Transaction, alice: Account, bob: Account
) -> None:
    state = process_transaction(funded, signed_transfer)

    assert state.balances[alice.id] == 700
    assert state.balances[bob.id] == 300
    assert state.nonces[alice.id] == 1


# --- State transition ---


def test_reward_mints(alice: Account) -> None:
    state = apply_transaction(AccountState(), reward(alice.id, 250, 1))

    assert state.balances == {alice.id: 250}
    assert state.minted == 250
    assert state.nonces == {PROTOCOL_ACCOUNT: 1}
    assert supply_invariant_holds(state)


def test_stake_bonds_balance(funded: AccountState, validator: Account) -> None:
    assert funded.balances[validator.id] == 1_000
    assert funded.stakes[validator.id] == 4_000
    assert get_total_supply(funded) == 6_000
    assert supply_invariant_holds(funded)


def test_apply_leaves_input_unchanged(
    funded: AccountState, signed_transfer: Transaction
) -> None:
    balances_before = dict(funded.balances)
    nonces_before = dict(funded.nonces)

    apply_transaction(funded, signed_transfer)

    assert funded.balances == balances_before
    assert funded.nonces == nonces_before


def test_replay_rejected(funded: AccountState, signed_transfer: Transaction) -> None:
    state = apply_transaction(funded, signed_transfer)

    with pytest.raises(InvalidNonceError, match="replayed or stale"):
        apply_transaction(state, signed_transfer)


def test_reward_replay_rejected(funded: AccountState, alice: Account) -> None:
    with pytest.raises(InvalidNonceError, match="replayed or stale"):
        apply_transaction(funded, reward(alice.id, 1_000, 1))


def test_stale_nonce_rejected(
    funded: AccountState, alice: Account, bob: Account
) -> None:
    state = funded
    for nonce in (1, 2, 3):
        transfer = Transaction(TransactionKind.TRANSFER, alice.id, bob.id, 10, nonce)
        state = apply_transaction(state, transfer)

    stale = Transaction(TransactionKind.TRANSFER, alice.id, bob.id, 10, 2)
    with pytest.raises(InvalidNonceError, match="replayed or stale"):
        apply_transaction(state, stale)


def test_skipped_nonce_rejected(
    funded: AccountState, alice: Account, bob: Account
) -> None:
    skipping = Transaction(TransactionKind.TRANSFER, alice.id, bob.id, 10, 2)

    with pytest.raises(InvalidNonceError, match="next nonce is 1"):
        apply_transaction(funded, skipping)


def test_insufficient_funds_rejected(
    funded: AccountState, alice: Account, bob: Account, validator: Account
) -> None:
    overdraft = Transaction(TransactionKind.TRANSFER, alice.id, bob.id, 1_001, 1)
    overbond = Transaction(TransactionKind.STAKE, validator.id, validator.id, 1_001, 2)
    from_empty = Transaction(TransactionKind.TRANSFER, bob.id, alice.id, 1, 1)

    with pytest.raises(InsufficientFundsError, match="exceeds the balance 1000"):
        apply_transaction(funded, overdraft)
    with pytest.raises(InsufficientFundsError):
        apply_transaction(funded, overbond)
    with pytest.raises(InsufficientFundsError, match="exceeds the balance 0"):
        apply_transaction(funded, from_empty)


@pytest.mark.parametrize("amount", [0, -5, True, 2.5, 2**64])
def test_bad_amount_rejected(
    funded: AccountState, alice: Account, bob: Account, amount: Any
) -> None:
    transfer = Transaction(TransactionKind.TRANSFER, alice.id, bob.id, amount, 1)

    with pytest.raises(InvalidAmountError):
        apply_transaction(funded, transfer)


@pytest.mark.parametrize("kind", ["mint", "Transfer", "", None])
def test_unknown_kind_rejected(
    funded: AccountState, alice: Account, bob: Account, kind: Any
) -> None:
    tx = Transaction(kind, alice.id, bob.id, 5, 1)

    with pytest.raises(UnknownTransactionKindError):
        apply_transaction(funded, tx)


@pytest.mark.parametrize(
    "changes",
    [
        {"sender": "not an account"},
        {"recipient": PROTOCOL_ACCOUNT},
        {"sender": PROTOCOL_ACCOUNT},
        {"nonce": 0},
        {"signature": "ab"},
    ],
)
def test_malformed_transfer_rejected(
    funded: AccountState,
    signed_transfer: Transaction,
    changes: dict[str, Any],
) -> None:
    tx = dataclasses.replace(signed_transfer, **changes)

    with pytest.raises(TransactionError):
        apply_transaction(funded, tx)


def test_reward_with_signature_rejected(funded: AccountState, alice: Account) -> None:
    signed_reward = dataclasses.replace(reward(alice.id, 5, 3), signature=b"\x01")

    with pytest.raises(MalformedTransactionError, match="carry no signature"):
        apply_transaction(funded, signed_reward)


def test_stake_for_other_account_rejected(
    funded: AccountState, alice: Account, bob: Account
) -> None:
    bond = Transaction(TransactionKind.STAKE, alice.id, bob.id, 5, 1)

    with pytest.raises(MalformedTransactionError, match="bonds its own balance"):
        apply_transaction(funded, bond)


def test_supply_invariant_over_sequence(
    funded: AccountState,
    evidence: DoubleSignEvidence,
    alice: Account,
    bob: Account,
    validator: Account,
) -> None:
    transactions = [
        Transaction(TransactionKind.TRANSFER, alice.id, bob.id, 400, 1),
        reward(bob.id, 77, 3),
        Transaction(TransactionKind.STAKE, bob.id, bob.id, 477, 1),
        Transaction(TransactionKind.TRANSFER, validator.id, alice.id, 999, 2),
    ]
    state = funded
    for tx in transactions:
        state = apply_transaction(state, tx)
        assert supply_invariant_holds(state)
    state = apply_transaction(state, slash_for(evidence, state))

    assert supply_invariant_holds(state)
    assert state.minted == 6_077
    assert state.burned == get_slash_amount(4_000)
    assert get_total_supply(state) == 6_077 - get_slash_amount(4_000)


# --- Double-sign evidence and slashing ---


def test_double_sign_evidence_verified(evidence: DoubleSignEvidence) -> None:
    check_double_sign_evidence(evidence)


def test_slash_burns_share_of_stake(
    funded: AccountState, evidence: DoubleSignEvidence, validator: Account
) -> None:
    slash = slash_for(evidence, funded)

    state = process_transaction(funded, slash)

    expected_burn = 4_000 * SLASH_BASIS_POINTS // 10_000
    assert slash.amount == expected_burn
    assert state.stakes[validator.id] == 4_000 - expected_burn
    assert state.balances[validator.id] == funded.balances[validator.id]
    assert state.burned == expected_burn
    assert (validator.id, HEIGHT) in state.slashed
    assert supply_invariant_holds(state)


def test_slash_twice_rejected(
    funded: AccountState, evidence: DoubleSignEvidence
) -> None:
    state = apply_transaction(funded, slash_for(evidence, funded))

    with pytest.raises(InvalidEvidenceError, match="already slashed"):
        apply_transaction(state, slash_for(evidence, state))


def test_slash_wrong_amount_rejected(
    funded: AccountState, evidence: DoubleSignEvidence
) -> None:
    slash = slash_for(evidence, funded)
    too_much = dataclasses.replace(slash, amount=slash.amount + 1)

    with pytest.raises(InvalidAmountError, match="get_slash_amount"):
        apply_transaction(funded, too_much)


def test_slash_other_recipient_rejected(
    funded: AccountState, evidence: DoubleSignEvidence, alice: Account
) -> None:
    slash = dataclasses.replace(slash_for(evidence, funded), recipient=alice.id)

    with pytest.raises(InvalidEvidenceError, match="not the validator"):
        apply_transaction(funded, slash)


def test_slash_without_stake_rejected(
    evidence: DoubleSignEvidence, validator: Account
) -> None:
    slash = Transaction(
        TransactionKind.SLASH, PROTOCOL_ACCOUNT, validator.id, 1, 1, evidence=evidence
    )

    with pytest.raises(InsufficientFundsError, match="no bonded stake"):
        apply_transaction(AccountState(), slash)


def test_slash_without_evidence_rejected(
    funded: AccountState, validator: Account
) -> None:
    slash = Transaction(TransactionKind.SLASH, PROTOCOL_ACCOUNT, validator.id, 200, 3)

    with pytest.raises(MalformedTransactionError, match="no DoubleSignEvidence"):
        apply_transaction(funded, slash)


def test_same_block_is_no_evidence(evidence: DoubleSignEvidence) -> None:
    same_block = DoubleSignEvidence(evidence.first, evidence.first)

    with pytest.raises(InvalidEvidenceError, match="no offence"):
        check_double_sign_evidence(same_block)


def test_different_heights_is_no_evidence(evidence: DoubleSignEvidence) -> None:
    later = dataclasses.replace(evidence.second, height=HEIGHT + 1)

    with pytest.raises(InvalidEvidenceError, match="needs one height"):
        check_double_sign_evidence(DoubleSignEvidence(evidence.first, later))


def test_two_validators_is_no_evidence(
    evidence: DoubleSignEvidence, alice: Account
) -> None:
    other_signer = dataclasses.replace(evidence.second, validator=alice.id)

    with pytest.raises(InvalidEvidenceError, match="two validators"):
        check_double_sign_evidence(DoubleSignEvidence(evidence.first, other_signer))


def test_forged_attestation_rejected(
    funded: AccountState, evidence: DoubleSignEvidence
) -> None:
    # The first attestation carries the signature made for the second block.
    forged_first = dataclasses.replace(
        evidence.first, signature=evidence.second.signature
    )
    forged = DoubleSignEvidence(forged_first, evidence.second)

    with pytest.raises(InvalidEvidenceError, match="invalid BLS signature"):
        check_double_sign_evidence(forged)
    with pytest.raises(InvalidEvidenceError):
        process_transaction(funded, slash_for(forged, funded))


@pytest.mark.parametrize(
    ("stake", "basis_points", "amount"),
    [(4_000, 500, 200), (1, 500, 1), (19, 500, 1), (21, 500, 2), (10, 10_000, 10)],
)
def test_slash_amount_rounds_up(stake: int, basis_points: int, amount: int) -> None:
    assert get_slash_amount(stake, basis_points) == amount


@pytest.mark.parametrize("basis_points", [0, -1, 10_001, 2.5])
def test_slash_share_out_of_range(basis_points: Any) -> None:
    with pytest.raises(InvalidAmountError):
        get_slash_amount(100, basis_points)


@pytest.mark.parametrize("stake", [-1, 2.5, True, 2**64])
def test_slash_amount_rejects_bad_stake(stake: Any) -> None:
    with pytest.raises(InvalidAmountError):
        get_slash_amount(stake)
