"""A validator's judgement of a proposed model: losses, parent weights, aggregate.

Next to a SQLite ledger replica a validator caches the validation loss of each
model it evaluated and saves the weights of the last proposal it voted on. A
model proposed in one round is the parent in the next, so neither the parent's
loss nor its weights travel or get computed twice.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from linguachain.client_app.secure_update import load_decrypted_average
from linguachain.ledger.chain import Ledger
from linguachain.ledger.hashing import hash_weights
from linguachain.ledger.keys import ValidatorKey
from linguachain.ledger.models import Block
from linguachain.privacy.codec import add_flat_update
from linguachain.strategies.consensus import (
    AGGREGATE_KEY,
    AGGREGATE_RECORD,
    PARENT_RECORD,
)

logger = logging.getLogger(__name__)

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


def check_model(
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
    saved. `decrypted` is the file of the average this node decrypted, if it is
    a CKKS decryptor.
    """
    payload = json.loads(block.payload)
    proposed: ArrayRecord = msg.content["arrays"]
    proposed_weights = {n: a.numpy() for n, a in proposed.items()}
    if hash_weights(proposed_weights) != payload["model_hash"]:
        raise ValueError("the proposed weights do not hash to the block's model hash")
    # A model proposed in one round is the parent in the next, so its loss is
    # read back instead of evaluated again. The server sends the parent's
    # weights only to nodes that lack its loss or its saved weights.
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
    """Return the committed model's weights, sent or saved at the last vote."""
    if PARENT_RECORD in msg.content:
        parent: ArrayRecord = msg.content[PARENT_RECORD]
        weights = {n: a.numpy() for n, a in parent.items()}
        if hash_weights(weights) != committed_hash:
            raise ValueError("the parent weights are not the committed model")
        return weights
    saved = None if cache is None else _load_weights(cache.with_name(PROPOSAL_WEIGHTS))
    if saved is not None and hash_weights(saved) == committed_hash:
        return saved
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
    """Save a model's weights, in order, for the vote where it is the parent."""
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


def cache_committed_loss(
    ledger: Ledger,
    key: ValidatorKey,
    ledger_url: str,
    msg: Message,
    context: Context,
    model_loss: LossFn,
) -> None:
    """Evaluate and save the committed model at start-up for round 1's vote."""
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
    if proposal_weights_hash(ledger_url) != chain.model_hash:
        _save_weights(
            cache.with_name(PROPOSAL_WEIGHTS),
            {n: a.numpy() for n, a in committed.items()},
            chain.model_hash,
        )


def cached_models(msg: Message, ledger_url: str) -> list[str]:
    """Return the hashes of the models whose loss this node cached for this run."""
    if "://" in ledger_url or "config" not in msg.content:
        return []
    suffix = _loss_key(msg, "")
    losses = _read_losses(Path(ledger_url).with_name(LOSS_CACHE))
    return [key.removesuffix(suffix) for key in losses if key.endswith(suffix)]


def proposal_weights_hash(ledger_url: str) -> str:
    """Return the hash of the proposal weights this node saved, or ""."""
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
