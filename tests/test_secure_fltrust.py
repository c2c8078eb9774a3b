"""FLTrust over CKKS in the secure strategy, against plaintext FLTrust.

Nodes are the real node step (encrypt_train_update) and the real "query.decrypt"
and "query.decrypt_scores" handlers. InProcessGrid replaces only Flower's
transport: it calls the handler of each addressed node in this process.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from linguachain.client_app.secure_update import (
    encrypt_train_update,
    handle_decrypt,
    handle_decrypt_scores,
    load_kit,
)
from linguachain.config import RunConfig, flatten, load_config
from linguachain.privacy import kits
from linguachain.privacy.records import (
    CIPHERTEXT_RECORD,
    DECRYPT_RECORD,
    DECRYPT_SCORES_MESSAGE_TYPE,
    chunks_to_record,
    update_from_content,
)
from linguachain.strategies.recording import build_strategy

BLOCK = 128
NODE_IDS = [101, 102, 103, 104]
# Two arrays of 6000 values: one full CKKS chunk of 4096 slots and a short one.
SHAPES = [(40, 100), (2000,)]
TOKENS = {101: 300 * BLOCK, 102: 700 * BLOCK, 103: 1100 * BLOCK, 104: 500 * BLOCK}
FLIPPED = 104


@pytest.fixture(autouse=True, scope="module")
def task_identity():
    """Let tests build Flower messages outside a running ServerApp."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> RunConfig:
    folder: Path = tmp_path_factory.mktemp("kits") / "kits"
    kits.provision(folder, len(NODE_IDS), ckks_parameter_set="scoring", paillier=False)
    return load_config(
        {
            "aggregation.name": "fltrust",
            "secure_aggregation.scheme": "ckks",
            "secure_aggregation.ckks_parameters": "scoring",
            "secure_aggregation.kit_dir": str(folder),
            "federation.num_nodes": len(NODE_IDS),
            "federation.min_nodes": 2,
            "data.block_size": BLOCK,
        }
    )


def node_context(node_id: int) -> Context:
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={
            "partition-id": NODE_IDS.index(node_id),
            "num-partitions": len(NODE_IDS),
        },
        state=RecordDict(),
        run_config={},
    )


class InProcessGrid:
    """Delivers query messages to the real handlers of each node in-process."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []

    def get_node_ids(self) -> list[int]:
        return list(NODE_IDS)

    def push_messages(self, messages) -> list[str]:
        """Run each node's handler now and keep its reply for `pull_messages`."""
        self.replies: dict[str, Message] = {}
        for message in messages:
            # Flower's grids assign message ids on push the same way.
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node_id = message.metadata.dst_node_id
            message_type = message.metadata.message_type
            self.requests.append((message_type, node_id))
            if message_type == DECRYPT_SCORES_MESSAGE_TYPE:
                reply = handle_decrypt_scores(message, node_context(node_id))
            else:
                reply = handle_decrypt(message, node_context(node_id))
            self.replies[message.metadata.message_id] = reply
        return list(self.replies)

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def global_weights() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return OrderedDict(
        (f"layer{i}.weight", rng.normal(0, 0.1, shape))
        for i, shape in enumerate(SHAPES)
    )


def reference_update() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return OrderedDict(
        (name, rng.normal(0, 0.01, value.shape))
        for name, value in global_weights().items()
    )


def node_update(node_id: int) -> OrderedDict[str, np.ndarray]:
    """An honest update near the reference; the flipped node negates it, boosted."""
    rng = np.random.default_rng(node_id)
    reference = reference_update()
    if node_id == FLIPPED:
        return OrderedDict((k, -5 * v) for k, v in reference.items())
    return OrderedDict(
        (k, v + rng.normal(0, 0.01, v.shape)) for k, v in reference.items()
    )


def flat(weights) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in weights.values()])


def encrypted_reply(config: RunConfig, node_id: int) -> Message:
    """Run the node step and wrap its records in a reply from node_id."""
    kit = load_kit(node_context(node_id), config)
    base = global_weights()
    local = OrderedDict((k, base[k] + v) for k, v in node_update(node_id).items())
    records, metrics = encrypt_train_update(
        config, kit, base, local, TOKENS[node_id], NODE_IDS.index(node_id)
    )
    content = RecordDict(
        {
            **records,
            "metrics": MetricRecord(
                {
                    "num-examples": TOKENS[node_id],
                    "partition-id": NODE_IDS.index(node_id),
                    **metrics,
                }
            ),
        }
    )
    train = Message(
        RecordDict({"c": ConfigRecord({})}), dst_node_id=node_id, message_type="train"
    )
    return Message(content, reply_to=train)


def plaintext_fltrust(updates: list[np.ndarray], reference: np.ndarray):
    norm = np.linalg.norm(reference)
    trust = [max(0.0, u @ reference / (np.linalg.norm(u) * norm)) for u in updates]
    aggregate = sum(
        t * norm / np.linalg.norm(u) * u for t, u in zip(trust, updates)
    ) / sum(trust)
    return trust, aggregate


def run_round(config: RunConfig, node_ids: list[int]):
    grid = InProcessGrid()
    strategy = build_strategy(config)
    strategy.reference_fn = lambda base: reference_update()
    arrays = ArrayRecord(
        OrderedDict((k, Array(v)) for k, v in global_weights().items())
    )
    list(strategy.configure_train(1, arrays, ConfigRecord(flatten(config)), grid))
    replies = [encrypted_reply(config, i) for i in node_ids]
    return strategy, grid, strategy.aggregate_train(1, replies)


def test_flipped_update_gets_zero_trust(config):
    strategy, grid, (arrays, _) = run_round(config, NODE_IDS)
    report = strategy.round_reports[1]
    assert report.scores["partition-3"] == 0.0
    for partition in range(3):
        assert report.scores[f"partition-{partition}"] > 0.5
    decryptors = NODE_IDS[: config.secure_aggregation.ckks_decryptors]
    assert grid.requests == [
        *((DECRYPT_SCORES_MESSAGE_TYPE, i) for i in decryptors),
        *(("query.decrypt", i) for i in decryptors),
    ]
    assert arrays is not None


def test_aggregate_matches_plaintext_fltrust(config):
    strategy, _, (arrays, _) = run_round(config, NODE_IDS)
    updates = [flat(node_update(i)) for i in NODE_IDS]
    reference = flat(reference_update())
    trust, expected = plaintext_fltrust(updates, reference)
    got = flat(OrderedDict((k, v.numpy()) for k, v in arrays.items())) - flat(
        global_weights()
    )
    scores = strategy.round_reports[1].scores
    assert [scores[f"partition-{i}"] for i in range(4)] == pytest.approx(
        trust, abs=1e-4
    )
    assert np.max(np.abs(got - expected)) < 1e-5 * np.max(np.abs(expected))
    # Norms are those of the updates, without the block weight of the ciphertext.
    norms = strategy.round_reports[1].norms
    assert norms["partition-0"] == pytest.approx(np.linalg.norm(updates[0]), rel=1e-4)


def test_all_zero_trust_rejects_round(config):
    secure = dataclasses.replace(config.secure_aggregation, min_replies=1)
    single = dataclasses.replace(config, secure_aggregation=secure)
    strategy, _, (arrays, metrics) = run_round(single, [FLIPPED])
    assert arrays is None
    assert metrics is None
    assert strategy.round_reports[1].scores == {"partition-3": 0.0}
    assert "trust score is 0" in strategy.round_stats[1].extra["rejected"]


def test_score_request_for_update_rejected(config):
    """A key holder decrypts nothing longer than one scalar on a score request."""
    reply = encrypted_reply(config, NODE_IDS[0])
    chunks = update_from_content(reply.content).chunks
    kit = load_kit(node_context(NODE_IDS[0]), config)
    request = ConfigRecord(
        {
            "scheme": "ckks",
            "server-round": 1,
            "key-fingerprint": kit.ckks_fingerprint,
            "num-scores": 1,
        }
    )
    message = Message(
        RecordDict(
            {
                DECRYPT_RECORD: request,
                CIPHERTEXT_RECORD: chunks_to_record(chunks[:2], "ckks"),
                "config": ConfigRecord(flatten(config)),
            }
        ),
        dst_node_id=NODE_IDS[0],
        message_type=DECRYPT_SCORES_MESSAGE_TYPE,
    )
    with pytest.raises(ValueError, match="expected one scalar each"):
        handle_decrypt_scores(message, node_context(NODE_IDS[0]))


# Norm bounding over CKKS, with the same kits, nodes and handlers.


def norm_bound_config(config: RunConfig, **aggregation) -> RunConfig:
    changed = dataclasses.replace(
        config.aggregation, name="norm_bound", **aggregation
    )
    return dataclasses.replace(config, aggregation=changed)


def plaintext_norm_bound(node_ids: list[int], bound: float) -> np.ndarray:
    """FedAvg of the updates clipped to `bound`, weighted by training blocks."""
    weights = [TOKENS[i] // BLOCK for i in node_ids]
    clipped = []
    for node_id in node_ids:
        update = flat(node_update(node_id))
        clipped.append(update * min(1.0, bound / np.linalg.norm(update)))
    return sum(w * u for w, u in zip(weights, clipped)) / sum(weights)


def encrypted_update(arrays) -> np.ndarray:
    return flat(OrderedDict((k, v.numpy()) for k, v in arrays.items())) - flat(
        global_weights()
    )


def test_norm_bound_matches_plaintext_clip(config):
    norms = [float(np.linalg.norm(flat(node_update(i)))) for i in NODE_IDS]
    # Between the honest norms and the boosted flipped one, so only it is clipped.
    bound = 2.0 * max(norms[:3])
    assert norms[3] > bound
    strategy, grid, (arrays, _) = run_round(
        norm_bound_config(config, norm_bound=bound), NODE_IDS
    )
    assert arrays is not None
    got = encrypted_update(arrays)
    expected = plaintext_norm_bound(NODE_IDS, bound)
    assert np.max(np.abs(got - expected)) < 1e-5 * np.max(np.abs(expected))

    report = strategy.round_reports[1]
    assert report.norm_bound == bound
    for partition, norm in enumerate(norms):
        assert report.norms[f"partition-{partition}"] == pytest.approx(norm, rel=1e-4)
    assert report.scores == {}
    decryptors = NODE_IDS[: config.secure_aggregation.ckks_decryptors]
    assert grid.requests == [
        *((DECRYPT_SCORES_MESSAGE_TYPE, i) for i in decryptors),
        *(("query.decrypt", i) for i in decryptors),
    ]


def test_norm_bound_zero_uses_median(config):
    strategy, _, (arrays, _) = run_round(norm_bound_config(config), NODE_IDS)
    norms = [float(np.linalg.norm(flat(node_update(i)))) for i in NODE_IDS]
    median = float(np.median(norms))
    report = strategy.round_reports[1]
    assert report.norm_bound == pytest.approx(median, rel=1e-4)
    expected = plaintext_norm_bound(NODE_IDS, median)
    got = encrypted_update(arrays)
    assert np.max(np.abs(got - expected)) < 1e-5 * np.max(np.abs(expected))


def test_norm_bound_leaves_out_oversized(config):
    norms = [float(np.linalg.norm(flat(node_update(i)))) for i in NODE_IDS]
    limit = 2.0 * max(norms[:3])
    bounded = norm_bound_config(config, norm_bound=limit, max_update_norm=limit)
    strategy, _, (arrays, _) = run_round(bounded, NODE_IDS)
    report = strategy.round_reports[1]
    assert report.scores == {"partition-3": 0.0}
    assert "max_update_norm" in report.rejected["partition-3"]
    expected = plaintext_norm_bound(NODE_IDS[:3], limit)
    got = encrypted_update(arrays)
    assert np.max(np.abs(got - expected)) < 1e-5 * np.max(np.abs(expected))
