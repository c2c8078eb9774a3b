"""A validator evaluates a model once: its loss comes back when it is the parent."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    RecordDict,
)

from linguachain.client_app.secure_update import save_decrypted_average
from linguachain.client_app.model_check import (
    LOSS_CACHE,
    PROPOSAL_WEIGHTS,
    ParentMissingError,
    cache_committed_loss,
    check_model,
    proposal_weights_hash,
)
from linguachain.ledger.chain import Ledger, new_block
from linguachain.ledger.consensus import genesis_payload
from linguachain.ledger.hashing import hash_weights
from linguachain.strategies.consensus import AGGREGATE_KEY, AGGREGATE_RECORD, PARENT_RECORD
from ledger.chain_helpers import PARAMS, validator_keys


def _weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((3,), value, dtype=np.float32)}


def _message(proposed: dict, parent: dict | None) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in proposed.items()}),
            "config": ConfigRecord({"consensus.validation_blocks": 16}),
        }
    )
    if parent is not None:
        content[PARENT_RECORD] = ArrayRecord({k: Array(v) for k, v in parent.items()})
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="query.validate",
    )
    return Message(content=content, metadata=metadata)


def test_parent_loss_read_from_cache(tmp_path):
    evaluated = []

    def loss(msg, context, arrays) -> float:
        value = float(arrays["w"].numpy()[0])
        evaluated.append(value)
        return 5.0 - value

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    cache = tmp_path / LOSS_CACHE
    models = [_weights(0.0), _weights(1.0), _weights(2.0)]
    for parent, proposed in zip(models, models[1:]):
        block = new_block(None, "version", {"model_hash": hash_weights(proposed)}, "")
        check_model(
            _message(proposed, parent), context, block, hash_weights(parent), loss,
            0.05, cache,
        )
    # Round 1 evaluates both models; round 2 only the new one.
    assert evaluated == [0.0, 1.0, 2.0]
    assert len(json.loads(cache.read_text())) == 3

    # A proposal worse than the cached parent is still rejected.
    worse = _weights(-1.0)
    block = new_block(None, "version", {"model_hash": hash_weights(worse)}, "")
    with pytest.raises(ValueError, match="exceeds the parent"):
        check_model(
            _message(worse, models[2]), context, block, hash_weights(models[2]), loss,
            0.05, cache,
        )
    assert evaluated[-1] == -1.0


def test_committed_loss_cached_at_start(tmp_path):
    evaluated = []

    def loss(msg, context, arrays) -> float:
        evaluated.append(float(arrays["w"].numpy()[0]))
        return 4.0

    genesis_model, proposed = _weights(0.0), _weights(1.0)
    staked, unstaked = validator_keys(2)
    ledger_path = tmp_path / "ledger.db"
    ledger = Ledger.open(ledger_path)
    payload = genesis_payload(
        [(staked, 1_000, 0), (unstaked, 0, 10)], PARAMS,
        {"model_hash": hash_weights(genesis_model)},
    )
    ledger.append(new_block(None, "genesis", payload, ""), check_signatures=False)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    start = _message(genesis_model, genesis_model)

    # A node without stake votes on nothing, so it evaluates nothing.
    cache_committed_loss(ledger, unstaked, str(ledger_path), start, context, loss)
    assert evaluated == []
    # Weights that are not the committed model are not cached.
    wrong = _message(proposed, proposed)
    cache_committed_loss(ledger, staked, str(ledger_path), wrong, context, loss)
    assert evaluated == []
    assert not (tmp_path / LOSS_CACHE).exists()

    cache_committed_loss(ledger, staked, str(ledger_path), start, context, loss)
    assert evaluated == [0.0]
    # The first vote then evaluates only the proposed model.
    block = new_block(None, "version", {"model_hash": hash_weights(proposed)}, "")
    check_model(
        _message(proposed, genesis_model), context, block, hash_weights(genesis_model),
        loss, 0.05, tmp_path / LOSS_CACHE,
    )
    assert evaluated == [0.0, 1.0]
    ledger.close()


def test_parent_weights_needed_only_uncached(tmp_path):
    def loss(msg, context, arrays) -> float:
        return 5.0 - float(arrays["w"].numpy()[0])

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    cache = tmp_path / LOSS_CACHE
    parent, proposed, later = _weights(0.0), _weights(1.0), _weights(2.0)
    block = new_block(None, "version", {"model_hash": hash_weights(proposed)}, "")
    with pytest.raises(ParentMissingError):
        check_model(
            _message(proposed, None), context, block, hash_weights(parent), loss, 0.05,
            cache,
        )
    check_model(
        _message(proposed, parent), context, block, hash_weights(parent), loss, 0.05,
        cache,
    )
    # The proposal's loss is now cached, so it needs no weights as the next parent.
    block = new_block(None, "version", {"model_hash": hash_weights(later)}, "")
    check_model(
        _message(later, None), context, block, hash_weights(proposed), loss, 0.05, cache
    )


def _with_aggregate(msg: Message, average: np.ndarray) -> Message:
    msg.content[AGGREGATE_RECORD] = ArrayRecord({AGGREGATE_KEY: Array(average)})
    return msg


def test_model_checked_against_aggregate(tmp_path):
    def loss(msg, context, arrays) -> float:
        return 1.0

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    parent = _weights(0.5)
    average = np.array([0.25, -0.5, 1.0])
    proposed = {"w": (parent["w"] + average).astype(np.float32)}
    block = new_block(None, "version", {"model_hash": hash_weights(proposed)}, "")
    committed = hash_weights(parent)

    # The proposal is the parent plus the average: accepted.
    check_model(
        _with_aggregate(_message(proposed, parent), average), context, block, committed,
        loss, 0.05, tmp_path / LOSS_CACHE,
    )
    # A server that reports another average than the one it added is caught.
    with pytest.raises(ValueError, match="not the parent plus the decrypted aggregate"):
        check_model(
            _with_aggregate(_message(proposed, parent), average * 2), context, block,
            committed, loss, 0.05, tmp_path / LOSS_CACHE,
        )


def test_aggregate_checked_against_own_decryption(tmp_path):
    def loss(msg, context, arrays) -> float:
        return 1.0

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    parent = _weights(0.5)
    committed = hash_weights(parent)
    decrypted = tmp_path / "decrypted.npz"
    forged = np.array([0.25, -0.5, 1.0])
    proposed = {"w": (parent["w"] + forged).astype(np.float32)}
    block = new_block(None, "version", {"model_hash": hash_weights(proposed)}, "")

    # This node decrypted another average for the same parent model.
    save_decrypted_average(decrypted, committed, np.array([0.0, 0.0, 0.001]))
    with pytest.raises(ValueError, match="differs from this node's own decryption"):
        check_model(
            _with_aggregate(_message(proposed, parent), forged), context, block,
            committed, loss, 0.05, tmp_path / LOSS_CACHE, decrypted,
        )
    # What it decrypted for an older parent does not apply to this block.
    save_decrypted_average(decrypted, "0" * 64, np.array([0.0, 0.0, 0.001]))
    check_model(
        _with_aggregate(_message(proposed, parent), forged), context, block, committed,
        loss, 0.05, tmp_path / LOSS_CACHE, decrypted,
    )
    # Its own result, up to CKKS noise, is accepted.
    save_decrypted_average(decrypted, committed, forged + 1e-9)
    check_model(
        _with_aggregate(_message(proposed, parent), forged), context, block, committed,
        loss, 0.05, tmp_path / LOSS_CACHE, decrypted,
    )


def test_aggregate_check_uses_saved_parent(tmp_path):
    def loss(msg, context, arrays) -> float:
        return 5.0 - float(arrays["w"].numpy()[0])

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    cache = tmp_path / LOSS_CACHE
    first, second = _weights(0.0), _weights(1.0)
    average = np.full(3, 1.0)
    third = {"w": (second["w"] + average).astype(np.float32)}

    block = new_block(None, "version", {"model_hash": hash_weights(second)}, "")
    check_model(_message(second, first), context, block, hash_weights(first), loss,
                 0.05, cache)
    # The node saved the weights it voted on and reports their hash, so the
    # parent need not be sent.
    assert proposal_weights_hash(str(tmp_path / "ledger.db")) == hash_weights(second)
    block = new_block(None, "version", {"model_hash": hash_weights(third)}, "")
    check_model(
        _with_aggregate(_message(third, None), average), context, block,
        hash_weights(second), loss, 0.05, cache,
    )
    # Without saved weights, the aggregate check requests the parent.
    (tmp_path / PROPOSAL_WEIGHTS).unlink()
    with pytest.raises(ParentMissingError):
        check_model(
            _with_aggregate(_message(third, None), average), context, block,
            hash_weights(second), loss, 0.05, cache,
        )
