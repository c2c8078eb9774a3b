"""A node's consensus role: its own ledger copy, proposing, voting and signing.

Every query message carries the final blocks the node lacks. The node checks
each one against its own copy (all chain rules, BLS included) before appending
it, so a node never trusts the server's chain.

The node's BLS key is, in order: the node config's `bls-key`; the `bls_key.json`
of its kit (node config `kit-path`, else `<secure_aggregation.kit_dir>/node-<i>`);
else `<run>/nodes/node-<i>/bls_key.json` (simulation without kits). Its ledger
replica is the node config's `ledger-url` (a SQLite path or a database URL),
else `<run>/nodes/node-<i>/ledger.db`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from linguachain.client_app.node_config import read_node_config
from linguachain.client_app.secure_update import (
    decrypted_average_path,
    load_decrypted_average,
)
from linguachain.ledger.chain import ChainConflictError, InvalidBlockError, Ledger
from linguachain.ledger.consensus import (
    block_from_dict,
    block_to_dict,
    blocks_from_json,
    prove_block,
    sign_block,
    validate_proposal,
)
from linguachain.ledger.hashing import hash_weights
from linguachain.ledger.keys import BLS_KEY_FILE, ValidatorKey, read_validator_key
from linguachain.ledger.models import Block
from linguachain.privacy.codec import add_flat_update
from linguachain.strategies.consensus import (
    AGGREGATE_KEY,
    AGGREGATE_RECORD,
    CONSENSUS_RECORD,
    NODE_DIR_PREFIX,
    PARENT_RECORD,
    node_dir,
)

logger = logging.getLogger(__name__)

KIT_DIR_KEY = "secure_aggregation.kit_dir"
# Validation losses by model hash, next to a SQLite ledger replica.
LOSS_CACHE = "validation_losses.json"
MAX_CACHED_LOSSES = 8
# The weights of the last proposal this node voted on, next to the loss cache.
PROPOSAL_WEIGHTS = "proposal_weights.npz"
CKKS_TOLERANCE_KEY = "secure_aggregation.ckks_tolerance"

class ParentMissingError(Exception):
    """The vote needs the parent model's weights, which the message lacks."""


# Computes a model's mean loss on the node's local held-back text, in nats.
LossFn = Callable[[Message, Context, ArrayRecord], float]


def _paths(msg: Message, context: Context) -> tuple[Path, str]:
    """Return this node's BLS key file and the path or URL of its ledger replica."""
    node = read_node_config(context.node_config)
    record = msg.content[CONSENSUS_RECORD]
    folder = node_dir(Path(str(record["nodes-dir"])), node.partition_id)
    ledger_url = node.ledger_url or str(folder / "ledger.db")
    if "://" not in ledger_url:
        ledger_url = str(Path(ledger_url).expanduser())
    if node.bls_key:
        return Path(node.bls_key).expanduser(), ledger_url
    kit = _kit_folder(msg, context)
    if kit is not None and (kit / BLS_KEY_FILE).is_file():
        return kit / BLS_KEY_FILE, ledger_url
    return folder / BLS_KEY_FILE, ledger_url


def _kit_folder(msg: Message, context: Context) -> Path | None:
    """Return this node's kit folder: node config `kit-path`, else under the run's."""
    node = read_node_config(context.node_config)
    if node.kit_path:
        return Path(node.kit_path).expanduser()
    if "config" in msg.content:
        kit_dir = str(msg.content["config"].get(KIT_DIR_KEY, ""))
        if kit_dir:
            return Path(kit_dir) / f"{NODE_DIR_PREFIX}{node.partition_id}"
    return None


def sync_blocks(ledger: Ledger, blocks: list[Block]) -> None:
    """Append the blocks this copy lacks, each checked against the copy first."""
    head = ledger.head()
    for block in blocks:
        if head is not None and block.height <= head.height:
            stored = ledger.block_at(block.height)
            if stored is None or stored.hash != block.hash:
                raise InvalidBlockError(
                    block.height, "fork", "the server's block differs from this copy"
                )
            continue
        ledger.append(block)
        head = block


def handle_query(
    msg: Message, context: Context, action: str, model_loss: LossFn, tolerance: float
) -> Message:
    """Run one consensus action on this node and reply with its result."""
    key_path, ledger_url = _paths(msg, context)
    key = read_validator_key(key_path)
    if "://" not in ledger_url:
        Path(ledger_url).parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(ledger_url)
    try:
        record = msg.content[CONSENSUS_RECORD]
        sync_blocks(ledger, blocks_from_json(str(record["blocks"])))
        result: dict[str, object] = {}
        if action == "propose":
            result = _propose(ledger, key, record)
        elif action == "validate":
            result = _vote(
                ledger, key, ledger_url, msg, context, record, model_loss, tolerance
            )
        elif action == "sign":
            result = _sign(ledger, key, record)
        elif action == "append" and PARENT_RECORD in msg.content:
            _cache_committed_loss(ledger, key, ledger_url, msg, context, model_loss)
        head = ledger.head()
        result.update({
            "account": key.account,
            "head": head.height if head else -1,
            "losses": json.dumps(_cached_models(msg, ledger_url)),
            "weights": _kept_weights_hash(ledger_url),
        })
    finally:
        ledger.close()
    return Message(RecordDict({CONSENSUS_RECORD: ConfigRecord(result)}), reply_to=msg)


def _proposal(record: ConfigRecord) -> Block:
    return block_from_dict(json.loads(str(record["proposal"]))[0])


def _propose(ledger: Ledger, key: ValidatorKey, record: ConfigRecord) -> dict[str, object]:
    template = _proposal(record)
    if template.proposer != key.account:
        raise ValueError("this node is not the drawn proposer of the block")
    started = time.perf_counter()
    proved = prove_block(template, ledger.context())
    logger.info("Proved block %d in %.2f s", proved.height, time.perf_counter() - started)
    return {"block": json.dumps(block_to_dict(proved))}


def _vote(
    ledger: Ledger,
    key: ValidatorKey,
    ledger_url: str,
    msg: Message,
    context: Context,
    record: ConfigRecord,
    model_loss: LossFn,
    tolerance: float,
) -> dict[str, object]:
    block = _proposal(record)
    chain = ledger.context()
    try:
        validate_proposal(chain, block)
        if block.kind == "version":
            cache = None if "://" in ledger_url else Path(ledger_url).with_name(LOSS_CACHE)
            kit = _kit_folder(msg, context)
            decrypted = None if kit is None else decrypted_average_path(kit, context.run_id)
            _check_model(
                msg, context, block, chain.model_hash, model_loss, tolerance, cache,
                decrypted,
            )
    except ParentMissingError as error:
        logger.info("Block %d: %s", block.height, error)
        return {"accept": False, "reason": str(error), "need-parent": True}
    except (InvalidBlockError, ValueError) as error:
        logger.warning("Rejected block %d: %s", block.height, error)
        return {"accept": False, "reason": str(error)}
    ledger.record_approval(block.height, block.hash)
    if record.get("sign") == "yes":
        # The server requests the signature with the vote for blocks that need
        # no judgement by validators (every kind but version blocks).
        try:
            signature = _sign_approved(ledger, key, block)
        except ValueError as error:
            logger.warning("Signing block %d failed: %s", block.height, error)
            return {"accept": False, "reason": str(error)}
        return {"accept": True, "reason": "", **signature}
    return {"accept": True, "reason": ""}


def _check_model(
    msg: Message,
    context: Context,
    block: Block,
    committed_hash: str | None,
    model_loss: LossFn,
    tolerance: float,
    cache: Path | None = None,
    decrypted: Path | None = None,
) -> None:
    """Check a proposed version block's model; raise ValueError naming what fails.

    `cache` is the loss cache file, next to which the last proposal's weights are
    kept. `decrypted` is where this node keeps the average it decrypted, if it
    is a CKKS decryptor.
    """
    payload = json.loads(block.payload)
    proposed: ArrayRecord = msg.content["arrays"]
    proposed_weights = {n: a.numpy() for n, a in proposed.items()}
    if hash_weights(proposed_weights) != payload["model_hash"]:
        raise ValueError("the proposed weights do not hash to the block's model hash")
    # A model proposed in one round is the parent in the next, so the loss this
    # node computed for it then is read back instead of evaluated again, and the
    # server sends the parent's weights only to nodes that lack its loss.
    started = time.perf_counter()
    losses = _read_losses(cache)
    parent_loss = losses.get(_loss_key(msg, str(committed_hash)))
    parent_weights = None
    if parent_loss is None or AGGREGATE_RECORD in msg.content:
        parent_weights = _parent_weights(msg, cache, str(committed_hash))
    if AGGREGATE_RECORD in msg.content:
        assert parent_weights is not None
        average = msg.content[AGGREGATE_RECORD][AGGREGATE_KEY].numpy()
        _check_aggregate(msg, parent_weights, average, payload["model_hash"], decrypted,
                         str(committed_hash))
    if parent_loss is None:
        assert parent_weights is not None
        parent_loss = model_loss(msg, context, _to_record(parent_weights))
    new_loss = model_loss(msg, context, proposed)
    _write_losses(cache, losses, {
        _loss_key(msg, str(committed_hash)): parent_loss,
        _loss_key(msg, payload["model_hash"]): new_loss,
    })
    if cache is not None:
        _save_weights(
            cache.with_name(PROPOSAL_WEIGHTS), proposed_weights, payload["model_hash"]
        )
    if not math.isfinite(new_loss) or new_loss > parent_loss + tolerance:
        raise ValueError(
            f"local held-back loss {new_loss:.4f} exceeds the parent's {parent_loss:.4f}"
            f" by more than the tolerance {tolerance}"
        )
    logger.info(
        "Block %d: local loss %.4f -> %.4f (%.2f s)",
        block.height, parent_loss, new_loss, time.perf_counter() - started,
    )


def _parent_weights(
    msg: Message, cache: Path | None, committed_hash: str
) -> dict[str, np.ndarray]:
    """Return the committed model's weights, sent or kept from the last vote."""
    if PARENT_RECORD in msg.content:
        parent: ArrayRecord = msg.content[PARENT_RECORD]
        weights = {n: a.numpy() for n, a in parent.items()}
        if hash_weights(weights) != committed_hash:
            raise ValueError("the parent weights are not the committed model")
        return weights
    kept = None if cache is None else _load_weights(cache.with_name(PROPOSAL_WEIGHTS))
    if kept is not None and hash_weights(kept) == committed_hash:
        return kept
    raise ParentMissingError("the parent model's weights are needed and were not sent")


def _check_aggregate(
    msg: Message,
    parent: dict[str, np.ndarray],
    average: np.ndarray,
    model_hash: str,
    decrypted: Path | None,
    committed_hash: str,
) -> None:
    """Check that the proposal is the parent plus the decrypted average update.

    A node that decrypted this round's sum itself also checks that the average
    is what it decrypted, within `secure_aggregation.ckks_tolerance`.
    """
    if hash_weights(add_flat_update(parent, average)) != model_hash:
        raise ValueError(
            "the proposed model is not the parent plus the decrypted aggregate"
        )
    # NOTE: only CKKS decryptors keep their result. On the Paillier path the
    # server combines the partial decryptions, so no validator has the average.
    own = None if decrypted is None else load_decrypted_average(decrypted)
    if own is None or own[0] != committed_hash:
        return
    if own[1].shape != average.shape:
        raise ValueError(
            f"the aggregate has {average.size} values, but this node decrypted"
            f" {own[1].size}"
        )
    tolerance = float(msg.content["config"].get(CKKS_TOLERANCE_KEY, 1e-6))
    gaps = np.abs(average - own[1]) / np.maximum(1.0, np.abs(own[1]))
    difference = float(np.max(gaps, initial=0.0))
    if difference > tolerance:
        raise ValueError(
            f"the aggregate differs from this node's own decryption by up to"
            f" {difference:.3g}, above {CKKS_TOLERANCE_KEY}={tolerance:g}"
        )


def _to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(array) for name, array in weights.items()})


def _save_weights(path: Path, weights: dict[str, np.ndarray], model_hash: str) -> None:
    """Keep a model's weights, in order, for the vote where it is the parent."""
    partial = path.with_name(path.name + ".partial")
    arrays = {f"{i:04d}": array for i, array in enumerate(weights.values())}
    with partial.open("wb") as file:
        np.savez(
            file, model_hash=np.array(model_hash), names=np.array(list(weights)), **arrays
        )
    partial.replace(path)


def _load_weights(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            names = [str(name) for name in stored["names"]]
            return {name: stored[f"{i:04d}"] for i, name in enumerate(names)}
    except (OSError, KeyError, ValueError) as error:
        logger.warning("Ignoring unreadable weights file %s: %s", path, error)
        return None


def _cache_committed_loss(
    ledger: Ledger,
    key: ValidatorKey,
    ledger_url: str,
    msg: Message,
    context: Context,
    model_loss: LossFn,
) -> None:
    """Evaluate and keep the committed model at start-up for round 1's vote."""
    chain = ledger.context()
    if "://" in ledger_url or chain.accounts.stakes.get(key.account, 0) <= 0:
        return
    committed: ArrayRecord = msg.content[PARENT_RECORD]
    if hash_weights({n: a.numpy() for n, a in committed.items()}) != chain.model_hash:
        logger.warning("Not caching a loss: the weights sent are not the committed model")
        return
    cache = Path(ledger_url).with_name(LOSS_CACHE)
    losses = _read_losses(cache)
    if _loss_key(msg, chain.model_hash) not in losses:
        loss = model_loss(msg, context, committed)
        _write_losses(cache, losses, {_loss_key(msg, chain.model_hash): loss})
    if _kept_weights_hash(ledger_url) != chain.model_hash:
        _save_weights(
            cache.with_name(PROPOSAL_WEIGHTS),
            {n: a.numpy() for n, a in committed.items()},
            chain.model_hash,
        )


def _cached_models(msg: Message, ledger_url: str) -> list[str]:
    """Return the hashes of the models whose loss this node cached for this run."""
    if "://" in ledger_url or "config" not in msg.content:
        return []
    suffix = _loss_key(msg, "")
    losses = _read_losses(Path(ledger_url).with_name(LOSS_CACHE))
    return [key.removesuffix(suffix) for key in losses if key.endswith(suffix)]


def _kept_weights_hash(ledger_url: str) -> str:
    """Return the hash of the proposal weights this node kept, or ""."""
    path = None if "://" in ledger_url else Path(ledger_url).with_name(PROPOSAL_WEIGHTS)
    if path is None or not path.is_file():
        return ""
    try:
        with np.load(path) as stored:
            return str(stored["model_hash"])
    except (OSError, KeyError, ValueError) as error:
        logger.warning("Ignoring unreadable weights file %s: %s", path, error)
        return ""


def _loss_key(msg: Message, model_hash: str) -> str:
    """Return the cache key of a model's loss on this run's validation blocks."""
    blocks = str(msg.content["config"].get("consensus.validation_blocks", ""))
    return f"{model_hash}/{blocks}"


def _read_losses(cache: Path | None) -> dict[str, float]:
    if cache is None or not cache.is_file():
        return {}
    try:
        losses = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("Ignoring unreadable validation loss cache %s: %s", cache, error)
        return {}
    return {k: float(v) for k, v in losses.items() if isinstance(v, (int, float))}


def _write_losses(
    cache: Path | None, losses: dict[str, float], new: dict[str, float]
) -> None:
    if cache is None:
        return
    losses.update(new)
    # Only the latest models come back as parents.
    kept = dict(list(losses.items())[-MAX_CACHED_LOSSES:])
    cache.write_text(json.dumps(kept))


def _sign(ledger: Ledger, key: ValidatorKey, record: ConfigRecord) -> dict[str, object]:
    block = _proposal(record)
    validate_proposal(ledger.context(), block)
    return _sign_approved(ledger, key, block)


def _sign_approved(ledger: Ledger, key: ValidatorKey, block: Block) -> dict[str, object]:
    """Sign a block this node voted for, unless it signed another at that height."""
    if not ledger.is_approved(block.hash):
        raise ValueError(f"block {block.height} was not approved by this node's vote")
    if not ledger.record_signature(block.height, block.hash):
        raise ValueError(
            f"already signed another block at height {block.height}; refusing to"
            " double sign"
        )
    return {"signature": sign_block(key, block).hex()}


__all__ = ["ChainConflictError", "handle_query", "sync_blocks"]
