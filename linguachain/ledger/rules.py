"""Chain rules: one function per rule, applied by `verify` and by every validator.

A block passes `process_block` when, against the state after its parent:

| rule | check |
| --- | --- |
| `height`, `parent-link`, `block-kind`, `block-hash` | contiguous heights, the parent's hash, a known kind, the hash recomputed from the header |
| `payload-json` | the payload is canonical JSON |
| `proposer` | the proposer is the stake-weighted draw seeded by the latest VDF output before the block |
| `vdf` | at heights 1, 1 + `vdf_interval`, ...: a Wesolowski proof over `vdf_challenge(parent hash)` with the genesis iteration count; elsewhere no VDF fields |
| `pow` | SHA-256(header without nonce, nonce) has the genesis difficulty in leading zero bits |
| `attestation` | distinct staked signers, at least two thirds of the stake, FastAggregateVerify over `attestation_message(height, hash)` |
| `genesis`, `version`, `data`, `transaction` | the payload rules of each kind (below), which also check rewards and transactions |

Genesis payload: `consensus` (the parameters) and `validators` (account, proof of
possession, stake, balance). A genesis without `consensus` starts an unattested
chain whose blocks carry no evidence (consensus disabled). Version payload: `round`,
`model_hash`, `parent_model_hash`, `commitments`, `metrics`, `transactions` (the
rewards of `version_rewards`). Data payload: `round`, `status` (`accepted` or
`rejected`), `reason`, `commitments`, `transactions` (`attester_rewards` of the
version block it closes, when accepted), `slashes` (`zero_score_slashes`).
Transaction payload: `transactions` (transfers, stakes, slashes).

Each commitment names a node's account, the SHA-256 of its update, its accepted
token count, its robustness score for the round (in [0, 1], 1.0 where no robust
rule scores) and its differential privacy spent so far (`privacy_spent`: epsilon,
the string "inf" when unbounded, null when differential privacy is off).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from linguachain.ledger import bls
from linguachain.ledger.constants import (
    BASIS_POINTS,
    BLS_SIGNATURE_BYTES,
    POW_DIFFICULTY_BITS,
    SLASH_BASIS_POINTS,
    VDF_DISCRIMINANT_BITS,
    VDF_INTERVAL,
    VDF_ITERATIONS,
    ConsensusError,
)
from linguachain.ledger.hashing import canonical_json, hash_json
from linguachain.ledger.models import Block
from linguachain.ledger.pow import check_pow
from linguachain.ledger.proposer import get_proposer_index, quorum_reached
from linguachain.ledger.transactions import (
    PROTOCOL_ACCOUNT,
    SIGNED_KINDS,
    AccountState,
    Transaction,
    TransactionKind,
    apply_transaction,
    attestation_message,
    deserialize_transaction,
    get_slash_amount,
    is_account_id,
    process_transaction,
    serialize_transaction,
    supply_invariant_holds,
    transaction_signing_message,
)
from linguachain.ledger.vdf import VdfProof, vdf_challenge, vdf_output_seed, vdf_verify

logger = logging.getLogger(__name__)

GENESIS_PARENT_HASH = "0" * 64
BLOCK_KINDS = ("genesis", "data", "version", "transaction")
GENESIS_SEED_DOMAIN = b"linguachain/genesis-seed/v1"
ROUND_STATUSES = ("accepted", "rejected")
COMMITMENT_KEYS = frozenset(
    {"node", "update_hash", "tokens", "robustness_score", "privacy_spent"}
)
# Robustness scores enter reward arithmetic as integers in millionths, so every
# replica computes the same amounts from the same JSON.
SCORE_UNITS = 1_000_000
UNBOUNDED_EPSILON = "inf"


class InvalidBlockError(ValueError):
    """A block breaks a chain rule; names the height and the rule."""

    def __init__(self, height: int, rule: str, detail: str) -> None:
        super().__init__(f"Block {height} breaks rule '{rule}': {detail}")
        self.height = height
        self.rule = rule
        self.detail = detail


@dataclass(frozen=True)
class ConsensusParams:
    """Chain parameters fixed by the genesis block."""

    vdf_iterations: int = VDF_ITERATIONS
    vdf_discriminant_bits: int = VDF_DISCRIMINANT_BITS
    vdf_interval: int = VDF_INTERVAL  # blocks per VDF proof
    pow_difficulty_bits: int = POW_DIFFICULTY_BITS
    contributor_reward: int = 0  # base units split over a round's contributors
    proposer_reward: int = 0  # base units per final version block
    attester_reward: int = 0  # base units per signer of a final version block
    slash_basis_points: int = SLASH_BASIS_POINTS
    # Finality threshold as a fraction of stake; never below two thirds.
    quorum_numerator: int = 2
    quorum_denominator: int = 3
    # A node whose robustness score is 0 in this many consecutive rounds it
    # contributed to loses this share of its stake; 0 in either turns it off.
    zero_score_rounds: int = 0
    zero_score_slash_basis_points: int = 0


@dataclass
class ChainContext:
    """Everything the rules need about the chain after its head block."""

    head: Block | None = None
    params: ConsensusParams | None = None  # None on an unattested chain
    accounts: AccountState = field(default_factory=AccountState)
    model_hash: str | None = None
    last_round: int = 0
    # The last version block, which the data block closing its round follows.
    last_version: dict[str, Any] | None = None
    # Decoded transactions of the head block, so writers need not decode again.
    head_transactions: list[Transaction] = field(default_factory=list)
    # Consecutive closed rounds in which each account's robustness score was 0.
    zero_score_streaks: dict[str, int] = field(default_factory=dict)
    # Seed of the next proposer draw: from the latest VDF output, or the genesis hash.
    proposer_seed: bytes | None = None

    def summary(self) -> dict[str, Any]:
        """Return the chain-wide fields stored in the chain_state row."""
        return {
            "minted": self.accounts.minted,
            "burned": self.accounts.burned,
            "slashed": sorted([list(item) for item in self.accounts.slashed]),
            "model_hash": self.model_hash,
            "last_round": self.last_round,
            "last_version": self.last_version,
            "params": dataclasses.asdict(self.params) if self.params else None,
            "protocol_nonce": self.accounts.nonces.get(PROTOCOL_ACCOUNT, 0),
            "zero_score_streaks": dict(sorted(self.zero_score_streaks.items())),
            "proposer_seed": self.proposer_seed.hex() if self.proposer_seed else None,
        }


@dataclass
class DeferredChecks:
    """VDF proofs and BLS signatures that `process_block` leaves for a later check.

    `Ledger.verify` replays thousands of blocks. It checks these in worker
    processes while the replay goes on, and the signatures as one BLS batch that
    costs one pairing per signer set instead of two per block.
    """

    vdf: list[tuple[int, bytes, VdfProof]] = field(default_factory=list)
    signatures: list[tuple[int, str, tuple[list[bytes], bytes, bytes]]] = field(
        default_factory=list
    )

    def __len__(self) -> int:
        return len(self.vdf) + len(self.signatures)

    def add_signature(
        self, height: int, rule: str, public_keys: list[bytes], message: bytes,
        signature: bytes,
    ) -> None:
        """Defer the check that `public_keys` signed `message` for block `height`."""
        self.signatures.append((height, rule, (public_keys, message, signature)))

    def add_vdf(self, height: int, challenge: bytes, proof: VdfProof) -> None:
        """Defer the check of block `height`'s Wesolowski proof."""
        self.vdf.append((height, challenge, proof))

    def take(self) -> DeferredChecks:
        """Move every check into a new object and leave this one empty."""
        taken = DeferredChecks(self.vdf, self.signatures)
        self.vdf, self.signatures = [], []
        return taken

    def before(self, height: int) -> DeferredChecks:
        """Return the checks of blocks below `height`."""
        return DeferredChecks(
            [entry for entry in self.vdf if entry[0] < height],
            [entry for entry in self.signatures if entry[0] < height],
        )

    def first_invalid(self) -> tuple[int, str, str] | None:
        """Return (height, rule, detail) of the lowest failing check, or None."""
        failures = []
        for height, challenge, proof in self.vdf:
            if not vdf_verify(challenge, proof):
                failures.append((height, "vdf", "the Wesolowski proof does not verify"))
                break
        triples = [triple for _, _, triple in self.signatures]
        if not bls.batch_fast_aggregate_verify(triples):
            # Slow path: check one by one to name the first invalid block.
            for height, rule, (keys, message, signature) in self.signatures:
                if not bls.fast_aggregate_verify(keys, message, signature):
                    failures.append((height, rule, SIGNATURE_FAILURES[rule]))
                    break
        return min(failures, key=failure_order) if failures else None


def failure_order(failure: tuple[int, str, str]) -> tuple[int, int]:
    """Sort key of deferred failures: by height, then in `process_block` order."""
    height, rule, _ = failure
    return height, DEFERRED_RULES.index(rule)


# Deferred rules in the order process_block would have checked them.
DEFERRED_RULES = ("vdf", "attestation", "transaction")
SIGNATURE_FAILURES = {
    "attestation": "the aggregate BLS signature does not verify",
    "transaction": "a transfer or stake has an invalid BLS signature",
}


# --- Header ---


def block_header(block: Block) -> dict[str, Any]:
    """Return the fields a block's hash covers."""
    return {
        "height": block.height,
        "parent_hash": block.parent_hash,
        "kind": block.kind,
        "timestamp": block.timestamp,
        "proposer": block.proposer or "",
        "payload_sha256": hashlib.sha256(block.payload.encode("utf-8")).hexdigest(),
        "vdf_output": (block.vdf_output or b"").hex(),
        "vdf_proof": (block.vdf_proof or b"").hex(),
        "pow_nonce": block.pow_nonce or 0,
    }


def compute_block_hash(block: Block) -> str:
    """Return the SHA-256 hex digest of the block's canonical header."""
    return hash_json(block_header(block))


def pow_header_bytes(block: Block) -> bytes:
    """Return the header bytes the proof of work covers: all but the nonce."""
    header = block_header(block)
    del header["pow_nonce"]
    return canonical_json(header)


def block_signers(block: Block) -> list[str]:
    """Decode the block's signer list (JSON), or raise ValueError."""
    signers = json.loads(block.signers or "[]")
    if not isinstance(signers, list) or not all(isinstance(s, str) for s in signers):
        raise ValueError("signers is not a JSON list of account ids")
    return signers


def has_quorum(params: ConsensusParams | None, signed: int, total: int) -> bool:
    """Check two thirds of the stake and the chain's own quorum, if higher."""
    if not quorum_reached(signed, total):
        return False
    if params is None:
        return True
    return params.quorum_denominator * signed >= params.quorum_numerator * total


# --- Proposer draw ---


def genesis_seed(genesis: Block) -> bytes:
    """Return the draw seed before the first VDF output: a hash of the genesis hash."""
    return hashlib.sha256(GENESIS_SEED_DOMAIN + bytes.fromhex(genesis.hash)).digest()


def next_proposer_seed(context: ChainContext, block: Block) -> bytes:
    """Return the draw seed after `block`: its VDF output if it carries one."""
    if block.vdf_output:
        return vdf_output_seed(bytes(block.vdf_output))
    assert context.proposer_seed is not None
    return context.proposer_seed


def is_vdf_height(params: ConsensusParams, height: int) -> bool:
    """Check whether the block at `height` opens a VDF epoch and carries a proof."""
    return height >= 1 and (height - 1) % params.vdf_interval == 0


def get_block_proposer(context: ChainContext) -> str:
    """Draw the proposer of the next block, weighted by bonded stake."""
    assert context.head is not None and context.proposer_seed is not None
    stakes = sorted((a, s) for a, s in context.accounts.stakes.items() if s > 0)
    return get_proposer_index(stakes, context.proposer_seed, context.head.height + 1)


# --- Rewards ---


def version_rewards(
    context: ChainContext, commitments: list[dict[str, Any]], proposer: str
) -> list[Transaction]:
    """Build the reward transactions of a version block.

    Contributors share `contributor_reward` in proportion to accepted tokens
    times robustness score (rounded down; the remainder is not minted), then the
    proposer receives `proposer_reward`. Zero amounts are left out.
    """
    assert context.params is not None
    amounts: list[tuple[str, int]] = []
    weights = [
        (c["node"], int(c["tokens"]) * score_units(c["robustness_score"]))
        for c in commitments
    ]
    total_weight = sum(weight for _, weight in weights)
    if total_weight > 0:
        for node, weight in weights:
            share = context.params.contributor_reward * weight
            amounts.append((node, share // total_weight))
    amounts.append((proposer, context.params.proposer_reward))
    return _protocol_rewards(context, amounts)


def score_units(score: float) -> int:
    """Return a robustness score in [0, 1] as an integer number of millionths."""
    return int(round(score * SCORE_UNITS))


def zero_score_slashes(
    context: ChainContext, commitments: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Build the slashes of a data block and the zero-score streaks after it.

    A node's streak grows by one for each closed round whose commitments give it
    a robustness score of 0 and restarts at 0 after any positive score. A node
    absent from a round keeps its streak. When the streak reaches
    `zero_score_rounds`, `zero_score_slash_basis_points` of the node's stake
    (rounded up, as for a double sign) is burned and the streak restarts, so one
    run of zero scores is slashed once.
    """
    assert context.params is not None
    rounds = context.params.zero_score_rounds
    basis_points = context.params.zero_score_slash_basis_points
    streaks = dict(context.zero_score_streaks)
    slashes: list[dict[str, Any]] = []
    if rounds <= 0 or basis_points <= 0:
        return slashes, streaks
    for commitment in commitments:
        node = commitment["node"]
        if score_units(commitment["robustness_score"]) > 0:
            streaks.pop(node, None)
            continue
        streaks[node] = streaks.get(node, 0) + 1
        if streaks[node] < rounds:
            continue
        del streaks[node]
        stake = context.accounts.stakes.get(node, 0)
        if stake > 0:
            amount = get_slash_amount(stake, basis_points)
            slashes.append({"node": node, "amount": amount, "zero_rounds": rounds})
    return slashes, streaks


def apply_zero_score_slashes(
    state: AccountState, slashes: list[dict[str, Any]]
) -> AccountState:
    """Burn the slashed amounts from the nodes' bonded stakes."""
    stakes = dict(state.stakes)
    burned = state.burned
    for slash in slashes:
        stakes[slash["node"]] -= slash["amount"]
        burned += slash["amount"]
    return dataclasses.replace(state, stakes=stakes, burned=burned)


def attester_rewards(context: ChainContext, signers: list[str]) -> list[Transaction]:
    """Build the reward transactions for the signers of the last version block."""
    assert context.params is not None
    return _protocol_rewards(
        context, [(signer, context.params.attester_reward) for signer in signers]
    )


def _protocol_rewards(
    context: ChainContext, amounts: list[tuple[str, int]]
) -> list[Transaction]:
    nonce = context.accounts.nonces.get(PROTOCOL_ACCOUNT, 0)
    rewards = []
    for recipient, amount in amounts:
        if amount <= 0:
            continue
        nonce += 1
        rewards.append(
            Transaction(TransactionKind.REWARD, PROTOCOL_ACCOUNT, recipient, amount, nonce)
        )
    return rewards


def encode_transactions(transactions: list[Transaction]) -> list[str]:
    """Encode transactions for a payload, each as its canonical JSON string."""
    return [serialize_transaction(tx).decode("ascii") for tx in transactions]


# --- Block processing ---


def process_block(
    context: ChainContext,
    block: Block,
    check_signatures: bool = True,
    deferred: DeferredChecks | None = None,
) -> ChainContext:
    """Check `block` against the chain after its parent and return the new context.

    Raise InvalidBlockError naming the first rule broken. With
    `check_signatures=False` the BLS checks (attestation aggregate, transaction
    signatures, slash evidence, proofs of possession) are skipped. With
    `deferred`, the VDF proof and the attestation and transfer signatures are
    added to it instead of checked, and the caller must check it before trusting
    the result.
    """
    height = block.height
    check_header(context, block)
    try:
        payload = json.loads(block.payload)
    except json.JSONDecodeError as error:
        raise InvalidBlockError(height, "payload-json", str(error)) from error
    if not isinstance(payload, dict) or canonical_json(payload).decode() != block.payload:
        raise InvalidBlockError(height, "payload-json", "payload is not canonical JSON")

    if block.kind == "genesis":
        return process_genesis(block, payload, check_signatures)
    if context.params is None:
        # Unattested chain: no evidence, version blocks only track the model.
        return process_unattested(context, block, payload)

    check_proposer(context, block)
    check_vdf(context, block, deferred)
    check_block_pow(context, block)
    signers = check_attestation(context, block, check_signatures, deferred)
    new_context = dataclasses.replace(
        context,
        head=block,
        head_transactions=[],
        proposer_seed=next_proposer_seed(context, block),
    )
    if block.kind == "version":
        return process_version(new_context, block, payload, signers)
    if block.kind == "data":
        return process_data(new_context, block, payload)
    return process_transactions_block(
        new_context, block, payload, check_signatures, deferred
    )


def check_header(context: ChainContext, block: Block) -> None:
    """Check height, parent link, kind and hash of a block."""
    previous = context.head
    height = block.height
    expected_height = 0 if previous is None else previous.height + 1
    if height != expected_height:
        raise InvalidBlockError(height, "height", f"expected height {expected_height}")
    expected_parent = GENESIS_PARENT_HASH if previous is None else previous.hash
    if block.parent_hash != expected_parent:
        raise InvalidBlockError(
            height, "parent-link", f"parent {block.parent_hash} != {expected_parent}"
        )
    if block.kind not in BLOCK_KINDS or (block.kind == "genesis") != (previous is None):
        raise InvalidBlockError(height, "block-kind", f"kind {block.kind!r} here")
    recomputed = compute_block_hash(block)
    if block.hash != recomputed:
        raise InvalidBlockError(
            height, "block-hash", f"stored {block.hash}, recomputed {recomputed}"
        )


def check_proposer(context: ChainContext, block: Block) -> None:
    """Check that the block names the drawn proposer."""
    expected = get_block_proposer(context)
    if block.proposer != expected:
        raise InvalidBlockError(
            block.height,
            "proposer",
            f"proposer {block.proposer[:16]} is not the drawn validator {expected[:16]}",
        )


def check_vdf(
    context: ChainContext, block: Block, deferred: DeferredChecks | None = None
) -> None:
    """Check the block's Wesolowski proof, or that a block between VDFs has none."""
    assert context.params is not None and context.head is not None
    if not is_vdf_height(context.params, block.height):
        if block.vdf_output or block.vdf_proof:
            raise InvalidBlockError(
                block.height,
                "vdf",
                f"a VDF proof is due only every {context.params.vdf_interval} blocks"
                " (heights 1, 1 + interval, ...), but this block carries one",
            )
        return
    proof = VdfProof(
        output=bytes(block.vdf_output or b""),
        proof=bytes(block.vdf_proof or b""),
        iterations=context.params.vdf_iterations,
        discriminant_bits=context.params.vdf_discriminant_bits,
    )
    challenge = vdf_challenge(context.head.hash)
    if deferred is not None:
        deferred.add_vdf(block.height, challenge, proof)
    elif not vdf_verify(challenge, proof):
        raise InvalidBlockError(
            block.height, "vdf", "the Wesolowski proof does not verify"
        )


def check_block_pow(context: ChainContext, block: Block) -> None:
    """Check the block's hashcash nonce at the genesis difficulty."""
    assert context.params is not None
    if not check_pow(
        pow_header_bytes(block), block.pow_nonce, context.params.pow_difficulty_bits
    ):
        raise InvalidBlockError(
            block.height,
            "pow",
            f"nonce {block.pow_nonce} misses {context.params.pow_difficulty_bits}"
            " leading zero bits",
        )


def check_attestation(
    context: ChainContext,
    block: Block,
    check_signatures: bool,
    deferred: DeferredChecks | None = None,
) -> list[str]:
    """Check signers hold two thirds of the stake and their aggregate verifies."""
    signers = check_signer_quorum(context, block)
    if check_signatures:
        check_attestation_signature(block, signers, deferred)
    return signers


def check_signer_quorum(context: ChainContext, block: Block) -> list[str]:
    """Check the signer list is sorted, distinct and staked, and reaches the quorum."""
    height = block.height
    try:
        signers = block_signers(block)
    except ValueError as error:
        raise InvalidBlockError(height, "attestation", str(error)) from error
    stakes = context.accounts.stakes
    if len(set(signers)) != len(signers) or signers != sorted(signers):
        raise InvalidBlockError(
            height, "attestation", "signers are not sorted and distinct"
        )
    unstaked = [s for s in signers if stakes.get(s, 0) <= 0]
    if unstaked:
        raise InvalidBlockError(
            height, "attestation", f"signer {unstaked[0][:16]} holds no stake"
        )
    total = sum(stakes.values())
    signed = sum(stakes[s] for s in signers)
    if not signers or not has_quorum(context.params, signed, total):
        raise InvalidBlockError(
            height,
            "attestation",
            f"signers hold {signed} of {total} staked base units, below two thirds",
        )
    return signers


def check_attestation_signature(
    block: Block, signers: list[str], deferred: DeferredChecks | None = None
) -> None:
    """Check the signers' aggregate BLS signature on the block, or defer it."""
    height = block.height
    message = attestation_message(height, bytes.fromhex(block.hash))
    public_keys = [bytes.fromhex(s) for s in signers]
    aggregate = bytes(block.attestation or b"")
    if len(aggregate) == BLS_SIGNATURE_BYTES and deferred is not None:
        deferred.add_signature(height, "attestation", public_keys, message, aggregate)
    elif len(aggregate) != BLS_SIGNATURE_BYTES or not bls.fast_aggregate_verify(
        public_keys, message, aggregate
    ):
        raise InvalidBlockError(
            height, "attestation", SIGNATURE_FAILURES["attestation"]
        )


def process_genesis(
    block: Block, payload: dict[str, Any], check_signatures: bool
) -> ChainContext:
    """Build the initial context from the genesis payload."""
    height = block.height
    if block.proposer or block.vdf_output or block.vdf_proof or block.pow_nonce:
        raise InvalidBlockError(height, "genesis", "genesis carries consensus evidence")
    context = ChainContext(
        head=block, model_hash=payload.get("model_hash"), proposer_seed=genesis_seed(block)
    )
    if "consensus" not in payload:
        return context
    try:
        # A genesis written before VDF epochs existed proves every block.
        params = ConsensusParams(**{"vdf_interval": 1, **payload["consensus"]})
        if not isinstance(params.vdf_interval, int) or params.vdf_interval < 1:
            raise InvalidBlockError(
                height, "genesis", f"vdf_interval {params.vdf_interval!r} is not >= 1"
            )
        validators = payload["validators"]
        balances: dict[str, int] = {}
        stakes: dict[str, int] = {}
        for validator in validators:
            account = validator["account"]
            if not is_account_id(account) or account in stakes:
                raise InvalidBlockError(height, "genesis", f"bad validator {account!r}")
            for key in ("stake", "balance"):
                if not isinstance(validator[key], int) or validator[key] < 0:
                    raise InvalidBlockError(height, "genesis", f"bad {key} of {account}")
            # Aggregates are only safe over keys with a checked proof of possession.
            if check_signatures and not bls.pop_verify(
                bytes.fromhex(account), bytes.fromhex(validator["pop"])
            ):
                raise InvalidBlockError(
                    height, "genesis", f"proof of possession of {account[:16]} fails"
                )
            stakes[account] = validator["stake"]
            balances[account] = validator["balance"]
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, InvalidBlockError):
            raise
        raise InvalidBlockError(height, "genesis", f"malformed: {error}") from error
    if sum(stakes.values()) <= 0:
        raise InvalidBlockError(height, "genesis", "no validator bonds stake")
    if not (
        _is_int(params.zero_score_rounds)
        and params.zero_score_rounds >= 0
        and _is_int(params.zero_score_slash_basis_points)
        and 0 <= params.zero_score_slash_basis_points <= BASIS_POINTS
    ):
        raise InvalidBlockError(
            height,
            "genesis",
            f"zero-score slash of {params.zero_score_slash_basis_points!r} basis points"
            f" after {params.zero_score_rounds!r} rounds is out of range",
        )
    minted = sum(stakes.values()) + sum(balances.values())
    context.params = params
    context.accounts = AccountState(balances=balances, stakes=stakes, minted=minted)
    return context


def process_unattested(
    context: ChainContext, block: Block, payload: dict[str, Any]
) -> ChainContext:
    """Track the model hash on a chain without consensus evidence."""
    if block.vdf_output or block.vdf_proof or block.pow_nonce or block.attestation:
        raise InvalidBlockError(
            block.height, "block-kind", "evidence on an unattested chain"
        )
    new_context = dataclasses.replace(context, head=block, head_transactions=[])
    if block.kind != "version":
        return new_context
    if payload.get("parent_model_hash") != context.model_hash:
        raise InvalidBlockError(
            block.height,
            "model-parent",
            f"parent model {payload.get('parent_model_hash')} != committed"
            f" {context.model_hash}",
        )
    new_context.model_hash = payload.get("model_hash")
    new_context.last_round = payload.get("round", context.last_round)
    return new_context


def check_commitments(height: int, commitments: Any) -> list[dict[str, Any]]:
    """Check the update commitments list of a version or data block."""
    if not isinstance(commitments, list):
        raise InvalidBlockError(height, "commitments", "commitments is not a list")
    nodes = set()
    for item in commitments:
        if (
            not isinstance(item, dict)
            or set(item) != COMMITMENT_KEYS
            or not is_account_id(item["node"])
            or not isinstance(item["update_hash"], str)
            or len(item["update_hash"]) != 64
            or not _is_int(item["tokens"])
            or item["tokens"] <= 0
            or item["node"] in nodes
        ):
            raise InvalidBlockError(height, "commitments", f"malformed entry {item!r}")
        score = item["robustness_score"]
        if not _is_number(score) or not 0.0 <= score <= 1.0:
            raise InvalidBlockError(
                height,
                "commitments",
                f"robustness score {score!r} of {item['node'][:16]} is not in [0, 1]",
            )
        spent = item["privacy_spent"]
        if spent is not None and spent != UNBOUNDED_EPSILON and (
            not _is_number(spent) or spent < 0
        ):
            raise InvalidBlockError(
                height,
                "commitments",
                f"privacy_spent {spent!r} of {item['node'][:16]} is not a"
                f" non-negative epsilon, {UNBOUNDED_EPSILON!r} or null",
            )
        nodes.add(item["node"])
    return commitments


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def process_version(
    context: ChainContext, block: Block, payload: dict[str, Any], signers: list[str]
) -> ChainContext:
    """Apply a version block: a new model and its rewards."""
    height = block.height
    keys = {"round", "model_hash", "parent_model_hash", "commitments", "metrics",
            "transactions"}
    if set(payload) != keys:
        raise InvalidBlockError(height, "version", f"payload keys must be {sorted(keys)}")
    if context.last_version is not None and context.last_version["round"] > context.last_round:
        raise InvalidBlockError(height, "version", "the previous round is not closed")
    if payload["round"] != context.last_round + 1:
        raise InvalidBlockError(
            height, "version", f"round {payload['round']} != {context.last_round + 1}"
        )
    if payload["parent_model_hash"] != context.model_hash:
        raise InvalidBlockError(
            height,
            "model-parent",
            f"parent model {payload['parent_model_hash']} != committed"
            f" {context.model_hash}",
        )
    commitments = check_commitments(height, payload["commitments"])
    rewards = version_rewards(context, commitments, block.proposer)
    expected = encode_transactions(rewards)
    if payload["transactions"] != expected:
        raise InvalidBlockError(height, "rewards", "reward transactions differ")
    new_context = apply_block_transactions(context, block, expected, False, rewards)
    new_context.model_hash = payload["model_hash"]
    new_context.last_version = {
        "round": payload["round"],
        "height": height,
        "hash": block.hash,
        "signers": signers,
    }
    return new_context


def process_data(
    context: ChainContext, block: Block, payload: dict[str, Any]
) -> ChainContext:
    """Apply a data block: it closes a round as accepted or rejected."""
    height = block.height
    keys = {"round", "status", "reason", "commitments", "transactions", "slashes"}
    if set(payload) != keys or payload["status"] not in ROUND_STATUSES:
        raise InvalidBlockError(height, "data", f"payload keys must be {sorted(keys)}")
    commitments = check_commitments(height, payload["commitments"])
    last = context.last_version
    open_version = last is not None and last["round"] > context.last_round
    if payload["round"] != context.last_round + 1:
        raise InvalidBlockError(
            height, "data", f"round {payload['round']} != {context.last_round + 1}"
        )
    if payload["status"] == "accepted":
        if not open_version or last is None or last["height"] != height - 1:
            raise InvalidBlockError(
                height, "data", "an accepted round must follow its version block"
            )
        rewards = attester_rewards(context, last["signers"])
        expected = encode_transactions(rewards)
    else:
        if open_version:
            raise InvalidBlockError(
                height, "data", "a rejected round follows a final version block"
            )
        rewards, expected = [], []
    if payload["transactions"] != expected:
        raise InvalidBlockError(height, "rewards", "attester reward transactions differ")
    slashes, streaks = zero_score_slashes(context, commitments)
    if payload["slashes"] != slashes:
        raise InvalidBlockError(
            height,
            "zero-score-slash",
            f"slashes {payload['slashes']!r} differ from the expected {slashes!r}",
        )
    new_context = apply_block_transactions(context, block, expected, False, rewards)
    new_context.accounts = apply_zero_score_slashes(new_context.accounts, slashes)
    if not supply_invariant_holds(new_context.accounts):
        raise InvalidBlockError(height, "supply", "total supply != minted - burned")
    new_context.zero_score_streaks = streaks
    new_context.last_round = payload["round"]
    return new_context


def process_transactions_block(
    context: ChainContext,
    block: Block,
    payload: dict[str, Any],
    check_signatures: bool,
    deferred: DeferredChecks | None = None,
) -> ChainContext:
    """Apply a transaction block: transfers, stakes and slashes."""
    if set(payload) != {"transactions"} or not payload["transactions"]:
        raise InvalidBlockError(
            block.height, "transaction", "payload must hold a non-empty transactions list"
        )
    return apply_block_transactions(
        context, block, payload["transactions"], check_signatures, deferred
    )


def apply_block_transactions(
    context: ChainContext,
    block: Block,
    encoded: list[str],
    check_signatures: bool,
    deferred: DeferredChecks | None = None,
    known: list[Transaction] | None = None,
) -> ChainContext:
    """Apply encoded transactions in order and check the supply invariant.

    `known` are the transactions that `encoded` was built from and compared
    equal to (the rewards the rules compute), which need no decoding.
    """
    height = block.height
    state = context.accounts
    genesis_validators = set(context.accounts.stakes)
    decoded = []
    for index, text in enumerate(encoded):
        try:
            tx = known[index] if known is not None else deserialize_transaction(
                text.encode("ascii")
            )
            decoded.append(tx)
            if block.kind == "transaction" and tx.kind == TransactionKind.REWARD:
                raise ConsensusError("rewards are minted by version and data blocks")
            if tx.kind == TransactionKind.STAKE and tx.sender not in genesis_validators:
                # Only keys with a proof of possession may sign attestations.
                raise ConsensusError(f"{tx.sender[:16]} is not a validator")
            slash_bp = context.params.slash_basis_points if context.params else 500
            if check_signatures and deferred is not None and tx.kind in SIGNED_KINDS:
                state = apply_transaction(state, tx, slash_bp)
                deferred.add_signature(
                    height,
                    "transaction",
                    [bytes.fromhex(tx.sender)],
                    transaction_signing_message(tx),
                    tx.signature,
                )
            elif check_signatures:
                state = process_transaction(state, tx, slash_bp)
            else:
                state = apply_transaction(state, tx, slash_bp)
        except (ConsensusError, UnicodeEncodeError, AttributeError) as error:
            raise InvalidBlockError(
                height, "transaction", f"transaction {index}: {error}"
            ) from error
    if not supply_invariant_holds(state):
        raise InvalidBlockError(height, "supply", "total supply != minted - burned")
    return dataclasses.replace(
        context, head=block, accounts=state, head_transactions=decoded
    )
