"""Building, proving, signing and sealing blocks: the proposer's and validators' steps.

One block goes through: `propose_template` (the drawn proposer, the payload),
`prove_block` (VDF over the parent hash, then hashcash over the header),
`validate_proposal` and `sign_block` on each validator, and `seal_block`, which
aggregates the signatures once their stake reaches two thirds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from linguachain.ledger import bls
from linguachain.ledger.chain import Ledger, evidence_to_json, new_block
from linguachain.ledger.constants import ConsensusError
from linguachain.ledger.keys import PublicValidator, ValidatorKey
from linguachain.ledger.models import Block
from linguachain.ledger.pow import solve_pow
from linguachain.ledger.rules import (
    ChainContext,
    ConsensusParams,
    InvalidBlockError,
    attester_rewards,
    compute_block_hash,
    encode_transactions,
    get_block_proposer,
    has_quorum,
    is_vdf_height,
    pow_header_bytes,
    process_block,
    version_rewards,
)
from linguachain.ledger.transactions import (
    PROTOCOL_ACCOUNT,
    DoubleSignEvidence,
    Transaction,
    TransactionKind,
    attestation_message,
    check_double_sign_evidence,
    deserialize_transaction,
    get_slash_amount,
    process_transaction,
)
from linguachain.ledger.vdf import vdf_challenge, vdf_prove

logger = logging.getLogger(__name__)

_BYTES_FIELDS = ("vdf_output", "vdf_proof", "attestation")
_FIELDS = (
    "height", "hash", "parent_hash", "kind", "timestamp", "proposer", "payload",
    "vdf_output", "vdf_proof", "pow_nonce", "attestation", "signers",
)


def block_to_dict(block: Block) -> dict[str, Any]:
    """Convert a block to JSON-ready values, bytes as hex, for messages."""
    data = {name: getattr(block, name) for name in _FIELDS}
    for name in _BYTES_FIELDS:
        data[name] = bytes(data[name] or b"").hex()
    return data


def block_from_dict(data: dict[str, Any]) -> Block:
    """Rebuild an unsaved block from `block_to_dict` output."""
    values = {name: data[name] for name in _FIELDS}
    for name in _BYTES_FIELDS:
        values[name] = bytes.fromhex(values[name])
    return Block(**values)


def blocks_to_json(blocks: list[Block]) -> str:
    """Encode blocks as one JSON string for a ConfigRecord."""
    return json.dumps([block_to_dict(block) for block in blocks])


def blocks_from_json(text: str) -> list[Block]:
    """Decode `blocks_to_json` output."""
    return [block_from_dict(item) for item in json.loads(text)]


# --- Payloads ---


def version_payload(
    context: ChainContext,
    model_hash: str,
    commitments: list[dict[str, Any]],
    metrics: dict[str, Any],
    proposer: str,
) -> dict[str, Any]:
    """Build the payload of the next round's version block, rewards included."""
    return {
        "round": context.last_round + 1,
        "model_hash": model_hash,
        "parent_model_hash": context.model_hash,
        "commitments": commitments,
        "metrics": metrics,
        "transactions": encode_transactions(
            version_rewards(context, commitments, proposer)
        ),
    }


def data_payload(
    context: ChainContext, status: str, reason: str, commitments: list[dict[str, Any]]
) -> dict[str, Any]:
    """Build the data block that closes the open round as accepted or rejected."""
    transactions: list[Transaction] = []
    if status == "accepted":
        assert context.last_version is not None
        transactions = attester_rewards(context, context.last_version["signers"])
    return {
        "round": context.last_round + 1,
        "status": status,
        "reason": reason,
        "commitments": commitments,
        "transactions": encode_transactions(transactions),
    }


def transaction_payload(
    context: ChainContext, entries: list[tuple[str, str]]
) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """Select queued (kind, encoded) entries that apply in order.

    Return the payload (None when nothing applies) and the rejected entries.
    Double-sign evidence becomes a slash transaction with the protocol's next
    nonce and the slash amount of the offender's current stake.
    """
    assert context.params is not None
    state = context.accounts
    included: list[Transaction] = []
    rejected: list[tuple[str, str]] = []
    for kind, encoded in entries:
        try:
            if kind == "evidence":
                evidence = evidence_from_json(encoded)
                check_double_sign_evidence(evidence)
                offender = evidence.first.validator
                tx = Transaction(
                    TransactionKind.SLASH,
                    PROTOCOL_ACCOUNT,
                    offender,
                    get_slash_amount(
                        state.stakes.get(offender, 0), context.params.slash_basis_points
                    ),
                    state.nonces.get(PROTOCOL_ACCOUNT, 0) + 1,
                    evidence=evidence,
                )
            else:
                tx = deserialize_transaction(encoded.encode("ascii"))
                if tx.kind == TransactionKind.STAKE and tx.sender not in context.accounts.stakes:
                    raise ConsensusError(f"{tx.sender[:16]} is not a validator")
            state = process_transaction(state, tx, context.params.slash_basis_points)
            included.append(tx)
        except (ConsensusError, ValueError, KeyError) as error:
            logger.warning("Rejected queued %s: %s", kind, error)
            rejected.append((kind, encoded))
    if not included:
        return None, rejected
    return {"transactions": encode_transactions(included)}, rejected


def evidence_from_json(text: str) -> DoubleSignEvidence:
    """Decode `evidence_to_json` output."""
    from linguachain.ledger.transactions import Attestation

    data = json.loads(text)
    first, second = (
        Attestation(
            validator=data[name]["validator"],
            height=int(data[name]["height"]),
            block_hash=bytes.fromhex(data[name]["block_hash"]),
            signature=bytes.fromhex(data[name]["signature"]),
        )
        for name in ("first", "second")
    )
    return DoubleSignEvidence(first, second)


# --- Proposer ---


def propose_template(context: ChainContext, kind: str, payload: dict[str, Any]) -> Block:
    """Build the next block for the drawn proposer, without VDF, PoW or signatures."""
    return new_block(context.head, kind, payload, get_block_proposer(context))


def prove_block(block: Block, context: ChainContext) -> Block:
    """Evaluate the VDF over the parent hash where one is due, and solve the PoW."""
    assert context.params is not None
    proved = _copy(block)
    if is_vdf_height(context.params, block.height):
        proof = vdf_prove(
            vdf_challenge(block.parent_hash),
            context.params.vdf_iterations,
            context.params.vdf_discriminant_bits,
        )
        proved.vdf_output = proof.output
        proved.vdf_proof = proof.proof
    proved.pow_nonce = solve_pow(pow_header_bytes(proved), context.params.pow_difficulty_bits)
    proved.hash = compute_block_hash(proved)
    return proved


# --- Validators ---


def validate_proposal(context: ChainContext, block: Block) -> None:
    """Check every rule but the attestation; raise InvalidBlockError if one fails."""
    if not context.accounts.stakes:
        raise InvalidBlockError(block.height, "genesis", "no validator set")
    # The attestation does not exist yet, so check the rest against a stand-in
    # signer set holding all stake, with the BLS check off.
    staked = sorted(a for a, s in context.accounts.stakes.items() if s > 0)
    stand_in = _copy(block)
    stand_in.signers = json.dumps(staked)
    process_block(context, stand_in, check_signatures=False)
    if block.kind == "transaction":
        # Transaction signatures are only checked with check_signatures on.
        for text in json.loads(block.payload)["transactions"]:
            tx = deserialize_transaction(text.encode("ascii"))
            if tx.kind in (TransactionKind.TRANSFER, TransactionKind.STAKE):
                from linguachain.ledger.transactions import verify_transaction_signature

                if not verify_transaction_signature(tx, bytes.fromhex(tx.sender)):
                    raise InvalidBlockError(block.height, "transaction", "bad signature")
            elif tx.kind == TransactionKind.SLASH and tx.evidence is not None:
                check_double_sign_evidence(tx.evidence)


def sign_block(key: ValidatorKey, block: Block) -> bytes:
    """Sign the attestation message of a block with the validator's key."""
    return bls.sign(key.secret_key, attestation_message(block.height, bytes.fromhex(block.hash)))


def seal_block(
    context: ChainContext, block: Block, signatures: dict[str, bytes]
) -> Block | None:
    """Aggregate signatures into the block, or return None below two thirds of stake."""
    stakes = context.accounts.stakes
    signers = sorted(s for s in signatures if stakes.get(s, 0) > 0)
    signed = sum(stakes[s] for s in signers)
    if not signers or not has_quorum(context.params, signed, sum(stakes.values())):
        return None
    sealed = _copy(block)
    sealed.signers = json.dumps(signers)
    sealed.attestation = bls.aggregate([signatures[s] for s in signers])
    return sealed


def seal_locally(
    ledger: Ledger, kind: str, payload: dict[str, Any], keys: list[ValidatorKey]
) -> Block:
    """Run one block's consensus in this process with `keys` as the validators."""
    context = ledger.context()
    block = prove_block(propose_template(context, kind, payload), context)
    validate_proposal(context, block)
    signatures = {key.account: sign_block(key, block) for key in keys}
    sealed = seal_block(context, block, signatures)
    if sealed is None:
        raise ConsensusError(f"block {block.height}: signers below two thirds of stake")
    return sealed


def _copy(block: Block) -> Block:
    return block_from_dict(block_to_dict(block))




# --- Genesis ---


def genesis_payload(
    validators: list[tuple[ValidatorKey | PublicValidator, int, int]],
    params: ConsensusParams,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a genesis payload from (key, stake, balance) triples and parameters."""
    return {
        **(extra or {}),
        "consensus": dataclasses.asdict(params),
        "validators": [
            {"account": key.account, "pop": key.pop.hex(), "stake": stake, "balance": balance}
            for key, stake, balance in sorted(validators, key=lambda v: v[0].account)
        ],
    }
