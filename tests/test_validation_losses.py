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

from linguachain.client_app.validator import LOSS_CACHE, _check_model
from linguachain.ledger.chain import new_block
from linguachain.ledger.hashing import hash_weights
from linguachain.strategies.consensus import PARENT_RECORD


def _weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((3,), value, dtype=np.float32)}


def _message(proposed: dict, parent: dict) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in proposed.items()}),
            PARENT_RECORD: ArrayRecord({k: Array(v) for k, v in parent.items()}),
            "config": ConfigRecord({"consensus.validation_blocks": 16}),
        }
    )
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
        _check_model(
            _message(proposed, parent), context, block, hash_weights(parent), loss,
            0.05, cache,
        )
    # Round 1 evaluates both models; round 2 only the new one.
    assert evaluated == [1.0, 0.0, 2.0]
    assert len(json.loads(cache.read_text())) == 3

    # A proposal worse than the cached parent is still rejected.
    worse = _weights(-1.0)
    block = new_block(None, "version", {"model_hash": hash_weights(worse)}, "")
    with pytest.raises(ValueError, match="exceeds the parent"):
        _check_model(
            _message(worse, models[2]), context, block, hash_weights(models[2]), loss,
            0.05, cache,
        )
    assert evaluated[-1] == -1.0
