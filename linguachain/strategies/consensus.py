"""The consensus step of a round: the aggregate becomes the global model only once final.

`ConsensusGate` wraps a strategy's `aggregate_train`. It returns the aggregated
ArrayRecord, which Flower makes the next global model, only when its version
block is final. Otherwise it returns None and Flower keeps the old model.
`ConsensusDriver` runs each block's consensus over Flower `query` messages:

1. `query.propose` to the drawn proposer, which evaluates the VDF over the
   parent hash and solves the proof of work;
2. `query.validate` to every validator, which appends the final blocks it lacks
   to its own ledger copy, checks the proposal against it (and, for a version
   block, the model hash, that the model is the parent plus the decrypted
   average, and its local held-back loss) and votes;
3. `query.sign` to the validators that voted yes, once they hold two thirds of
   the stake; each signs at most one block per height;
4. the server appends the sealed block to its copy; nodes append it on the next
   message, and `query.append` sends the last blocks after the final round.

Voting before signing means a block that fails the vote leaves no signature
behind, so the data block that records the rejection can take its height
without any validator signing twice there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from linguachain.config import RunConfig, flatten, parse_quorum
from linguachain.ledger.chain import InvalidBlockError, Ledger, new_block
from linguachain.ledger.consensus import (
    block_from_dict,
    blocks_to_json,
    data_payload,
    propose_template,
    prove_block,
    seal_block,
    transaction_payload,
    version_payload,
)
from linguachain.ledger.hashing import hash_weights
from linguachain.ledger.keys import (
    BLS_KEY_FILE,
    VALIDATORS_FILE,
    PublicValidator,
    ValidatorKey,
    load_or_create_key,
    read_validators,
)
from linguachain.ledger.models import Block
from linguachain.ledger.rules import (
    UNBOUNDED_EPSILON,
    ConsensusParams,
    get_block_proposer,
    is_vdf_height,
)
from linguachain.ledger.store import load_weights, save_weights
from linguachain.privacy.codec import add_flat_update
from linguachain.privacy.kits import SERVER_DIR
from linguachain.strategies.exchange import send_and_receive
from linguachain.strategies.recording import NUM_EXAMPLES_KEY
from linguachain.strategies.screening import node_key

logger = logging.getLogger(__name__)

CONSENSUS_RECORD = "consensus"
PARENT_RECORD = "parent"
# The decrypted average update that a version block's model adds to its parent.
AGGREGATE_RECORD = "aggregate"
AGGREGATE_KEY = "average"
NODE_DIR_PREFIX = "node-"


@dataclass
class RoundOutcome:
    """Whether a round's model became final, why not, and what consensus cost."""

    status: str
    reason: str = ""
    blocks: list[int] = field(default_factory=list)
    seconds: float = 0.0  # consensus and ledger writes, VDF included
    vdf_seconds: float = 0.0  # time the proposer reported for VDF and PoW
    # Whether validators checked the model against the decrypted average update.
    aggregate_checked: bool = False


def node_dir(nodes_dir: Path, partition_id: int) -> Path:
    """Return the folder of a node's key and ledger copy in simulation."""
    return nodes_dir / f"{NODE_DIR_PREFIX}{partition_id}"


def consensus_params(config: RunConfig) -> ConsensusParams:
    """Build the genesis consensus parameters from the run config."""
    numerator, denominator = parse_quorum(config.consensus.quorum)
    settings = config.consensus
    return ConsensusParams(
        vdf_iterations=settings.vdf_iterations,
        vdf_interval=settings.vdf_interval,
        pow_difficulty_bits=settings.pow_difficulty_bits,
        contributor_reward=settings.contributor_reward,
        proposer_reward=settings.proposer_reward,
        attester_reward=settings.attester_reward,
        slash_basis_points=settings.slash_basis_points,
        quorum_numerator=numerator,
        quorum_denominator=denominator,
        zero_score_rounds=settings.zero_score_rounds,
        zero_score_slash_basis_points=settings.zero_score_slash_basis_points,
    )


class ConsensusDriver:
    """Block consensus between the server's ledger and the nodes' copies."""

    def __init__(self, config: RunConfig, ledger: Ledger, run_path: Path) -> None:
        self.config = config
        self.ledger = ledger
        self.nodes_dir = run_path / "nodes"
        self.store = run_path / "weights"
        # The proposal being signed, kept so that a restarted server offers the
        # same block again instead of asking validators to sign a second one.
        self.pending_path = run_path / "pending_block.json"
        self.node_accounts: dict[int, str] = {}
        self.node_heads: dict[int, int] = {}
        # Model hashes whose validation loss each node reported as cached.
        self.node_losses: dict[int, set[str]] = {}
        # The hash of the model whose weights each node reported as saved.
        self.node_weights: dict[int, str] = {}
        self.outcomes: dict[int, RoundOutcome] = {}
        self.round_offset = 0
        self.extra_records: dict[str, ConfigRecord] = {}
        self.grid: Grid | None = None
        self._vdf_seconds = 0.0
        # Each node's epsilon spent so far, by node key, for rounds whose
        # report carries none for it.
        self._epsilon: dict[str, float] = {}

    # --- Setup and resume ---

    def validator_keys(self) -> list[ValidatorKey] | list[PublicValidator]:
        """Return the genesis validator set.

        With provisioned kits (`secure_aggregation.kit_dir`), it is the server
        kit's validators.json, whose keys the nodes read from their kits. Without
        kits, each node's key is read from the run folder, generated if missing.
        NOTE: the run-folder keys suit simulation only, where server and nodes
        share one file system.
        """
        kit_dir = self.config.secure_aggregation.kit_dir
        if kit_dir:
            validators_path = Path(kit_dir) / SERVER_DIR / VALIDATORS_FILE
            if validators_path.is_file():
                logger.info("Genesis validators from %s", validators_path)
                return read_validators(validators_path)
        return [
            load_or_create_key(node_dir(self.nodes_dir, i) / BLS_KEY_FILE)
            for i in range(self.config.federation.num_nodes)
        ]

    def start(self, grid: Grid, initial: dict, genesis_extra: dict[str, Any]) -> dict:
        """Write genesis or resume from the last final version block; sync nodes.

        Return the weights of the model to start from.
        """
        self.grid = grid
        if self.ledger.head() is None:
            keys = self.validator_keys()
            settings = self.config.consensus
            from linguachain.ledger.consensus import genesis_payload

            save_weights(self.store, initial)
            payload = genesis_payload(
                [(key, settings.initial_stake, settings.initial_balance) for key in keys],
                consensus_params(self.config),
                {**genesis_extra, "model_hash": hash_weights(initial)},
            )
            self.ledger.append(new_block(None, "genesis", payload, ""))
            logger.info("Genesis: %d validators, model %s", len(keys),
                        payload["model_hash"][:12])
        context = self.ledger.context()
        if context.params is None:
            raise ValueError(
                f"The ledger {self.ledger.url} is an unattested chain: start a new run"
                " folder or set consensus.enabled=false."
            )
        assert context.model_hash is not None
        committed = load_weights(self.store, context.model_hash)
        self.sync(grid, committed)
        context = self.ledger.context()
        last = context.last_version
        if last is not None and last["round"] > context.last_round:
            # Killed between a final version block and the data block closing it.
            logger.info("Resume: closing round %d, whose model is final", last["round"])
            version = self.ledger.block_at(last["height"])
            assert version is not None
            commitments = json.loads(version.payload)["commitments"]
            self.run_block("data", data_payload(context, "accepted", "", commitments))
            context = self.ledger.context()
        self.round_offset = context.last_round
        if self.round_offset:
            logger.info(
                "Resume: %d rounds closed, model %s", self.round_offset,
                (context.model_hash or "")[:12],
            )
        return committed

    def sync(self, grid: Grid, committed: dict | None = None) -> None:
        """Send every node the final blocks it lacks and learn its account.

        With `committed`, the weights of the committed model, validators also
        evaluate it now, so the first vote of the run only evaluates the proposal.
        """
        records = {}
        if committed is not None:
            records[PARENT_RECORD] = ArrayRecord(
                {name: Array(weights) for name, weights in committed.items()}
            )
        replies = self._send(grid, "append", list(grid.get_node_ids()), {}, records)
        missing = [n for n, r in replies.items() if r is None]
        if missing:
            logger.warning("Nodes %s did not confirm their ledger copies", missing)

    # --- One round ---

    def decide(
        self,
        server_round: int,
        arrays: ArrayRecord | None,
        metrics: MetricRecord | None,
        replies: list[Message],
        parent: ArrayRecord | None,
        encrypted: dict[int, str] | None = None,
        extra_metrics: dict[str, Any] | None = None,
        aggregate: np.ndarray | None = None,
    ) -> ArrayRecord | None:
        """Run the round's consensus; return `arrays` only if its block is final.

        `encrypted` maps node ids to the commitments of their encrypted updates,
        when secure aggregation summed only those. `aggregate` is the decrypted
        average update, which validators check the model against.
        """
        started = time.perf_counter()
        outcome = RoundOutcome(status="rejected")
        self._vdf_seconds = 0.0
        self._include_mempool()
        commitments = self._commitments(replies, encrypted, extra_metrics or {})
        context = self.ledger.context()
        chain_round = context.last_round + 1
        if arrays is None:
            outcome.reason = "no usable update"
        else:
            weights = {name: a.numpy() for name, a in arrays.items()}
            model_hash = hash_weights(weights)
            proposer = get_block_proposer(context)
            summary = {"nodes": len(commitments)}
            if metrics is not None and "train-loss" in metrics:
                summary["train_loss"] = float(metrics["train-loss"])
            # Robustness scores and privacy spent, where the strategy reports them.
            # Non-finite floats have no canonical JSON form, so they become null.
            for key, value in (extra_metrics or {}).items():
                summary[key] = canonical_metric(value)
            payload = version_payload(context, model_hash, commitments, summary, proposer)
            records = {"arrays": arrays}
            if parent is not None:
                records[PARENT_RECORD] = parent
                if aggregate is not None:
                    records.update(aggregate_record(parent, aggregate, model_hash))
                    outcome.aggregate_checked = AGGREGATE_RECORD in records
            path = save_weights(self.store, weights)
            block, reason = self.run_block("version", payload, records, str(path))
            if block is not None:
                outcome.status = "accepted"
                outcome.blocks.append(block.height)
            else:
                outcome.reason = reason
        context = self.ledger.context()
        block, reason = self.run_block(
            "data", data_payload(context, outcome.status, outcome.reason, commitments)
        )
        if block is None:
            logger.error("Round %d: the data block closing it failed: %s", chain_round, reason)
        else:
            outcome.blocks.append(block.height)
        outcome.seconds = time.perf_counter() - started
        outcome.vdf_seconds = self._vdf_seconds
        self.outcomes[server_round] = outcome
        if outcome.status == "accepted":
            logger.info("Round %d: model final in block %d", chain_round, outcome.blocks[0])
            return arrays
        logger.warning(
            "Round %d rejected (%s): the global model stays", chain_round, outcome.reason
        )
        return None

    def finish(self) -> None:
        """Send the nodes the blocks of the last round."""
        if self.grid is not None:
            self.sync(self.grid)

    def _commitments(
        self,
        replies: list[Message],
        encrypted: dict[int, str] | None,
        report: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Build the round's update commitments with scores and privacy spent.

        `report` is the strategy's round report (`RoundReport.as_metrics`). A node
        it gives no robustness score gets 1.0. With differential privacy on, a
        node it gives no epsilon keeps the last one recorded (0.0 at first).
        """
        scores = report.get("robustness_scores") or {}
        epsilons = report.get("epsilon") or {}
        self._epsilon.update(
            {key: math.inf if value is None else float(value)
             for key, value in epsilons.items()}
        )
        commitments = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error() or (encrypted is not None and node_id not in encrypted):
                continue
            account = self.node_accounts.get(node_id)
            metrics = next(iter(reply.content.metric_records.values()), None)
            tokens = int(metrics.get(NUM_EXAMPLES_KEY, 0)) if metrics else 0
            if account is None or tokens <= 0:
                continue
            if encrypted is not None:
                update_hash = encrypted[node_id]
                if not re.fullmatch("[0-9a-f]{64}", update_hash):
                    update_hash = hashlib.sha256(update_hash.encode()).hexdigest()
            elif reply.content.array_records:
                arrays = next(iter(reply.content.array_records.values()))
                update_hash = hash_weights({n: a.numpy() for n, a in arrays.items()})
            else:
                continue
            key = node_key(reply)
            commitments.append(
                {
                    "node": account,
                    "update_hash": update_hash,
                    "tokens": tokens,
                    "robustness_score": commitment_score(scores.get(key)),
                    "privacy_spent": self._privacy_spent(key),
                }
            )
        return sorted(commitments, key=lambda c: c["node"])

    def _privacy_spent(self, key: str) -> float | str | None:
        """Return a node's epsilon so far for its commitment (None without DP)."""
        if not self.config.privacy.enabled:
            return None
        epsilon = self._epsilon.get(key, 0.0)
        return epsilon if math.isfinite(epsilon) else UNBOUNDED_EPSILON

    def _include_mempool(self) -> None:
        entries = self.ledger.mempool()
        if not entries:
            return
        context = self.ledger.context()
        payload, rejected = transaction_payload(
            context, [(e.kind, e.encoded) for e in entries]
        )
        for entry in entries:
            if (entry.kind, entry.encoded) in rejected:
                self.ledger.drop_from_mempool(entry.entry_hash)
        if payload is not None:
            block, reason = self.run_block("transaction", payload)
            if block is None:
                logger.warning("Transaction block rejected: %s", reason)

    # --- One block ---

    def run_block(
        self,
        kind: str,
        payload: dict[str, Any],
        records: dict[str, Any] | None = None,
        weights_path: str = "",
    ) -> tuple[Block | None, str]:
        """Propose, vote on, sign and append one block; return it or why it failed."""
        assert self.grid is not None
        grid = self.grid
        context = self.ledger.context()
        template = propose_template(context, kind, payload)
        proved = self._pending(template) or self._propose(grid, template, context)
        self.pending_path.write_text(blocks_to_json([proved]))

        # Vote: every validator checks the block against its own copy. Only a
        # version block can fail on a validator's judgement (its local loss), so
        # for the other kinds the signature comes with the vote in one exchange.
        nodes = [n for n, a in self.node_accounts.items()
                 if context.accounts.stakes.get(a, 0) > 0]
        proposal = blocks_to_json([proved])
        sign_with_vote = kind != "version"
        fields = {"proposal": proposal, "sign": "yes" if sign_with_vote else "no"}
        logger.info(
            "Block %d (%s): proposed by %s, sent to %d validators",
            proved.height, kind, proved.proposer[:16], len(nodes),
        )
        votes = self._vote(grid, context.model_hash, nodes, fields, records or {})
        stakes = context.accounts.stakes
        total = sum(stakes.values())
        yes = [n for n, r in votes.items() if r is not None and r.get("accept")]
        reasons = sorted(
            {str(r.get("reason")) for r in votes.values() if r and not r.get("accept")}
        )
        yes_stake = sum(stakes.get(self.node_accounts[n], 0) for n in yes)
        from linguachain.ledger.rules import has_quorum

        if not has_quorum(context.params, yes_stake, total):
            if not sign_with_vote:
                # No validator signed, so the height is free for another block.
                # After signatures came with the votes, the same block is offered
                # again.
                self.pending_path.unlink(missing_ok=True)
            reason = "; ".join(reasons) or "validators did not reply"
            logger.warning(
                "Block %d (%s): %d of %d staked units voted yes: %s",
                proved.height, kind, yes_stake, total, reason,
            )
            return None, reason

        # Sign: only validators that voted yes, only this block at this height.
        if sign_with_vote:
            signed = {n: votes[n] for n in yes}
        else:
            signed = self._send(grid, "sign", yes, {"proposal": proposal})
        signatures = {
            self.node_accounts[n]: bytes.fromhex(r["signature"])
            for n, r in signed.items()
            if r is not None and r.get("signature")
        }
        sealed = seal_block(context, proved, signatures)
        if sealed is None:
            # NOTE: validators that signed keep refusing other blocks at this
            # height, so the next proposal here may stall below quorum.
            return None, "signatures below quorum"
        try:
            self.ledger.append(sealed, signatures=signatures, weights_path=weights_path)
        except InvalidBlockError as error:
            logger.error("Sealed block rejected by the server's copy: %s", error)
            return None, str(error)
        self.pending_path.unlink(missing_ok=True)
        return sealed, ""

    def _pending(self, template: Block) -> Block | None:
        """Return the saved proposal if it is this template, proved."""
        if not self.pending_path.is_file():
            return None
        pending = block_from_dict(json.loads(self.pending_path.read_text())[0])
        same = all(
            getattr(pending, name) == getattr(template, name)
            for name in ("height", "parent_hash", "kind", "payload", "proposer")
        )
        if same:
            logger.info("Offering the saved proposal for block %d again", pending.height)
        return pending if same else None

    def _propose(self, grid: Grid, template: Block, context) -> Block:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        if not is_vdf_height(context.params, template.height):
            # Between VDF epochs proving is only the proof of work (milliseconds),
            # cheaper than a round trip to the proposer, which still gets the reward.
            proved = prove_block(template, context)
            self._vdf_seconds += time.perf_counter() - started
            return proved
        proposer_nodes = [n for n, a in self.node_accounts.items() if a == template.proposer]
        replies = self._send(
            grid, "propose", proposer_nodes[:1], {"proposal": blocks_to_json([template])}
        )
        proved = None
        for reply in replies.values():
            if reply is not None and reply.get("block"):
                proved = block_from_dict(json.loads(reply["block"]))
        if proved is None or proved.payload != template.payload:
            # NOTE: the server proves on behalf of a drawn proposer that did not
            # reply. Validators still check the VDF and the PoW, but then the
            # sequential work is the server's, not the proposer's.
            logger.warning("Proposer %s did not reply; the server proves block %d",
                           template.proposer[:16], template.height)
            proved = prove_block(template, context)
        self._vdf_seconds += time.perf_counter() - started
        return proved

    def _vote(
        self,
        grid: Grid,
        committed_hash: str | None,
        nodes: list[int],
        fields: dict[str, str],
        records: dict[str, Any],
    ) -> dict[int, dict[str, Any] | None]:
        """Send `query.validate`, with the parent weights only where they are needed.

        A validator needs the parent model to evaluate it, unless it reported the
        parent's loss as cached, and to check the aggregate, unless it reported
        the parent's weights as saved. One that lost its cache replies
        `need-parent` and gets the proposal again with the parent.
        """
        if PARENT_RECORD not in records:
            return self._send(grid, "validate", nodes, fields, records)
        without_parent = {k: v for k, v in records.items() if k != PARENT_RECORD}
        # With an aggregate to check, a node also needs the parent's weights.
        needs_weights = AGGREGATE_RECORD in records
        node_records = {
            node: without_parent
            for node in nodes
            if committed_hash in self.node_losses.get(node, set())
            and (not needs_weights or self.node_weights.get(node) == committed_hash)
        }
        votes = self._send(grid, "validate", nodes, fields, records, node_records)
        retry = [n for n, vote in votes.items() if vote and vote.get("need-parent")]
        if retry:
            logger.info("Sending the parent weights again to nodes %s", retry)
            votes.update(self._send(grid, "validate", retry, fields, records))
        return votes

    def _send(
        self,
        grid: Grid,
        action: str,
        node_ids: list[int],
        fields: dict[str, str],
        records: dict[str, Any] | None = None,
        node_records: dict[int, dict[str, Any]] | None = None,
    ) -> dict[int, dict[str, Any] | None]:
        """Send one query to each node and return its consensus reply fields.

        `node_records` replaces `records` for the nodes it names.
        """
        if not node_ids:
            return {}
        messages = []
        for node_id in node_ids:
            since = self.node_heads.get(node_id, -1) + 1
            blocks = list(self.ledger.blocks(since=since))
            content = RecordDict(
                {
                    CONSENSUS_RECORD: ConfigRecord(
                        {"blocks": blocks_to_json(blocks),
                         "nodes-dir": str(self.nodes_dir), **fields}
                    ),
                    "config": ConfigRecord(flatten(self.config)),
                    **self.extra_records,
                    **(node_records or {}).get(node_id, records or {}),
                }
            )
            messages.append(
                Message(content=content, dst_node_id=node_id, message_type=f"query.{action}")
            )
        replies: dict[int, dict[str, Any] | None] = {n: None for n in node_ids}
        started = time.perf_counter()
        received = send_and_receive(grid, messages, self.config.consensus.timeout)
        logger.info(
            "query.%s: %d of %d nodes replied in %.2f s",
            action, len(received), len(node_ids), time.perf_counter() - started,
        )
        for reply in received:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                logger.warning("Node %d failed query.%s: %s", node_id, action,
                               reply.error.reason)
                continue
            values = dict(reply.content[CONSENSUS_RECORD])
            self.node_accounts[node_id] = str(values["account"])
            self.node_heads[node_id] = int(values["head"])
            self.node_losses[node_id] = set(json.loads(str(values.get("losses", "[]"))))
            self.node_weights[node_id] = str(values.get("weights", ""))
            replies[node_id] = values
        return replies


class ConsensusGate:
    """Strategy mixin: the aggregate becomes the global model only once final."""

    consensus: ConsensusDriver | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model the round starts from, then sample nodes."""
        self._parent_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate, then keep the result only if its version block is final."""
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if self.consensus is None:
            return arrays, metrics
        # Secure aggregation records a commitment per summed encrypted update,
        # and the hash of each rejected one, which the round report scores 0.
        encrypted = getattr(self, "commitments", {}).get(server_round)
        if encrypted is not None:
            rejected = getattr(self, "rejected_updates", {}).get(server_round, {})
            encrypted = {**rejected, **encrypted}
        report = getattr(self, "round_reports", {}).get(server_round)
        decided = self.consensus.decide(
            server_round,
            arrays,
            metrics,
            replies,
            getattr(self, "_parent_arrays", None),
            encrypted,
            report.as_metrics() if report is not None else None,
            getattr(self, "decrypted_averages", {}).get(server_round),
        )
        return decided, metrics


def aggregate_record(
    parent: ArrayRecord, aggregate: np.ndarray, model_hash: str
) -> dict[str, ArrayRecord]:
    """Return the aggregate record for validators, if the model is parent + aggregate.

    Rules that add a server step of their own (FedAvgM's momentum) build another
    model, and then validators get no aggregate to check.
    """
    weights = {name: array.numpy() for name, array in parent.items()}
    if hash_weights(add_flat_update(weights, aggregate)) != model_hash:
        logger.info(
            "The model is not the parent plus the decrypted average (a server step"
            " such as momentum), so validators do not check it against the average"
        )
        return {}
    return {AGGREGATE_RECORD: ArrayRecord({AGGREGATE_KEY: Array(aggregate)})}


def commitment_score(score: float | None) -> float:
    """Return a node's robustness score as committed: 1.0 if unscored, 6 decimals."""
    if score is None or not math.isfinite(score):
        return 1.0 if score is None else 0.0
    return round(min(max(float(score), 0.0), 1.0), 6)


def canonical_metric(value: Any) -> Any:
    """Return `value` with non-finite floats replaced by None, for canonical JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): canonical_metric(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical_metric(item) for item in value]
    return value


def gate_strategy(strategy: Any, driver: ConsensusDriver) -> Any:
    """Put ConsensusGate in front of a built strategy's class, whatever it is."""
    base = type(strategy)
    strategy.__class__ = type(f"Gated{base.__name__}", (ConsensusGate, base), {})
    strategy.consensus = driver
    return strategy
