"""Secure aggregation strategy with real kits, encryption and decryption handlers.

Nodes are the real node step (encrypt_train_update) and the real "query.decrypt"
handler. InProcessGrid replaces only Flower's transport: it calls the handler of
each addressed node in this process. It can also make a node fail or tamper with
its decryption reply, faults that a healthy simulation does not produce.
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from linguachain.cli import app as cli
from linguachain.client_app.secure_update import (
    PayloadTooLargeError,
    encrypt_train_update,
    handle_decrypt,
    load_kit,
)
from linguachain.config import RunConfig, flatten, load_config
from linguachain.privacy import ckks, kits, paillier
from linguachain.privacy.dp import PrivacyAccounting
from linguachain.privacy.records import (
    CIPHERTEXT_RECORD,
    PARTIAL_RECORD,
    PLAINTEXT_RECORD,
    SECURE_RECORD,
    EncryptedUpdate,
    chunks_to_record,
    compute_commitment,
    update_from_content,
    update_to_records,
)
from linguachain.strategies.recording import build_strategy
from linguachain.strategies.screening import content_node_key

BLOCK = 128
NODE_IDS = [101, 102, 103]
# Three arrays of 5000 values: two full CKKS chunks of 2048 slots and a short one.
SHAPES = [(40, 50), (2900,), (10, 10)]
TOKENS = {101: 300 * BLOCK, 102: 700 * BLOCK, 103: 1100 * BLOCK}


@pytest.fixture(autouse=True, scope="module")
def task_identity():
    """Let tests build Flower messages outside a running ServerApp."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="module")
def kit_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kits") / "kits"
    kits.provision(folder, 3, paillier_modulus_bits=1024, threshold=2)
    return folder


@pytest.fixture(scope="module")
def other_kit_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("other") / "kits"
    kits.provision(folder, 1, paillier_modulus_bits=1024, threshold=1)
    return folder


def make_config(kit_dir: Path, scheme: str, **secure) -> RunConfig:
    values = {
        "secure_aggregation.scheme": scheme,
        "secure_aggregation.kit_dir": str(kit_dir),
        "secure_aggregation.paillier_modulus_bits": 1024,
        "federation.min_nodes": 2,
        "data.block_size": BLOCK,
    }
    values.update({f"secure_aggregation.{k}": v for k, v in secure.items()})
    return load_config(values)


def node_context(node_id: int) -> Context:
    partition = NODE_IDS.index(node_id) if node_id in NODE_IDS else 0
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={"partition-id": partition, "num-partitions": len(NODE_IDS)},
        state=RecordDict(),
        run_config={},
    )


class InProcessGrid:
    """Delivers messages to the real decrypt handler of each node in-process."""

    def __init__(self, failing: Iterable[int] = (), tampering: Iterable[int] = ()):
        self.failing = set(failing)
        self.tampering = set(tampering)
        self.requests: list[int] = []

    def get_node_ids(self) -> list[int]:
        return list(NODE_IDS)

    def push_messages(self, messages) -> list[str]:
        """Run each node's handler now and keep its reply for `pull_messages`."""
        self.replies: dict[str, Message] = {}
        for message in messages:
            # Flower's grids assign message ids on push the same way.
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node_id = message.metadata.dst_node_id
            self.requests.append(node_id)
            if node_id in self.failing:
                reply = Message(Error(code=1, reason="node offline"), reply_to=message)
            else:
                reply = handle_decrypt(message, node_context(node_id))
                if node_id in self.tampering:
                    tamper(reply)
            self.replies[message.metadata.message_id] = reply
        return list(self.replies)

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def tamper(reply: Message) -> None:
    """Change one value of a decryption reply, keeping its format valid."""
    content = reply.content
    if PLAINTEXT_RECORD in content:
        average = content[PLAINTEXT_RECORD]["average"].numpy().copy()
        average[0] += 1e-3
        content[PLAINTEXT_RECORD] = ArrayRecord({"average": Array(average)})
        return
    # Swap the first two partial values: both stay in Z*_(n^2), but the batch
    # proof binds each value to its position. 256 bytes per value for 1024-bit n.
    blob = content[PARTIAL_RECORD]["chunk-000000"].data
    width = 256
    values = blob[width : 2 * width] + blob[:width] + blob[2 * width :]
    content[PARTIAL_RECORD] = chunks_to_record([values], "paillier")


def global_weights() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return OrderedDict(
        (f"layer{i}.weight", rng.normal(0, 0.1, shape))
        for i, shape in enumerate(SHAPES)
    )


def local_weights(node_id: int) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(node_id)
    return OrderedDict(
        (name, value + rng.normal(0, 0.01, value.shape))
        for name, value in global_weights().items()
    )


def flat(weights) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in weights.values()])


def expected_average(node_ids: list[int]) -> np.ndarray:
    """Plaintext FedAvg of the updates, weighted by token counts."""
    updates = [flat(local_weights(i)) - flat(global_weights()) for i in node_ids]
    return np.average(updates, axis=0, weights=[TOKENS[i] for i in node_ids])


def train_message(node_id: int) -> Message:
    return Message(
        RecordDict({"c": ConfigRecord({})}), dst_node_id=node_id, message_type="train"
    )


def encrypted_reply(config: RunConfig, node_id: int, update=None) -> Message:
    """Run the node step and wrap its records in a reply from node_id."""
    kit = load_kit(node_context(node_id), config)
    records, metrics = encrypt_train_update(
        config, kit, global_weights(), local_weights(node_id), TOKENS[node_id], 0
    )
    if update is not None:
        records = update(records)
    content = RecordDict(
        {
            **records,
            "metrics": MetricRecord({"num-examples": TOKENS[node_id], **metrics}),
        }
    )
    return Message(content, reply_to=train_message(node_id))


def rebuild(records, **changes):
    """Change fields of an encrypted update and recommit, as a node could."""
    update = update_from_content(RecordDict(records))
    update = dataclasses.replace(update, **changes)
    commitment = compute_commitment(
        update.scheme, update.key_fingerprint, update.chunks
    )
    return update_to_records(dataclasses.replace(update, commitment=commitment))


def run_round(config: RunConfig, replies: list[Message], grid: InProcessGrid):
    strategy = build_strategy(config)
    arrays = ArrayRecord(
        OrderedDict((k, Array(v)) for k, v in global_weights().items())
    )
    list(strategy.configure_train(1, arrays, ConfigRecord(flatten(config)), grid))
    result = strategy.aggregate_train(1, replies)
    return strategy, result


def new_update(result) -> np.ndarray:
    arrays, _ = result
    assert arrays is not None
    return flat(OrderedDict((k, v.numpy()) for k, v in arrays.items())) - flat(
        global_weights()
    )


# Exactness against plaintext FedAvg.


def test_ckks_matches_plaintext_fedavg(kit_dir):
    config = make_config(kit_dir, "ckks")
    grid = InProcessGrid()
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    strategy, result = run_round(config, replies, grid)
    got = new_update(result)
    expected = expected_average(NODE_IDS)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert grid.requests == NODE_IDS[:2]
    stats = strategy.round_stats[1]
    parts = {"train.encrypt", "aggregate.sum", "aggregate.decrypt"}
    assert set(stats.phase_seconds) >= parts
    # Three ciphertexts of about 65.7 KB for 5000 values.
    assert 32 <= stats.extra["bytes_per_param"] <= 40
    assert len(strategy.commitments[1]) == 3


def test_paillier_matches_quantized_fedavg(kit_dir):
    config = make_config(kit_dir, "paillier")
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    strategy, result = run_round(config, replies, InProcessGrid())
    got = new_update(result)

    # Exactly the weighted average of the quantized updates.
    scale = 2.0**16
    offset = int(0.25 * scale)
    weights = [TOKENS[i] // BLOCK for i in NODE_IDS]
    quantized = [
        np.clip(
            np.rint((flat(local_weights(i)) - flat(global_weights())) * scale),
            -offset,
            offset,
        )
        for i in NODE_IDS
    ]
    expected = sum(w * q for w, q in zip(weights, quantized)) / scale / sum(weights)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got, expected_average(NODE_IDS), rtol=0, atol=2**-17)
    assert strategy.round_stats[1].extra["bytes_per_param"] < 8.5


# Differential privacy accounting over encrypted updates.


@pytest.mark.parametrize("scheme", ["ckks", "paillier"])
def test_epsilon_reported_per_node(kit_dir, scheme):
    config = load_config(
        {
            **flatten(make_config(kit_dir, scheme)),
            "privacy.enabled": True,
            "privacy.noise_multiplier": 0.8,
            "privacy.clip_norm": 1.0,
            "federation.num_nodes": len(NODE_IDS),
        }
    )
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    for partition, reply in enumerate(replies):
        reply.content["metrics"]["partition-id"] = partition
    strategy = build_strategy(config)
    arrays = ArrayRecord(
        OrderedDict((k, Array(v)) for k, v in global_weights().items())
    )
    messages = list(
        strategy.configure_train(
            1, arrays, ConfigRecord(flatten(config)), InProcessGrid()
        )
    )
    assert [m.content["config"]["sampled-nodes"] for m in messages] == [3, 3, 3]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None

    # A fresh accountant fed the same release gives the same epsilons: sigma,
    # 3 noisy nodes and each node's weight (training blocks) in the sum.
    expected = PrivacyAccounting(0.8, config.privacy.delta, 3, linear=True)
    expected_round = expected.record_round(
        3,
        {f"partition-{p}": TOKENS[i] // BLOCK for p, i in enumerate(NODE_IDS)},
    )
    privacy = strategy.round_reports[1].privacy
    assert privacy is not None
    assert privacy["noisy_nodes"] == 3
    assert sorted(privacy["per_node"]) == ["partition-0", "partition-1", "partition-2"]
    for key, budget in expected_round["per_node"].items():
        assert privacy["per_node"][key]["epsilon"] == pytest.approx(budget["epsilon"])
        assert privacy["per_node"][key]["rounds"] == 1
        assert 0 < budget["epsilon"] < float("inf")
    metrics = strategy.round_reports[1].as_metrics()
    assert metrics["epsilon"] == {
        key: budget["epsilon"] for key, budget in privacy["per_node"].items()
    }


def test_no_privacy_report_without_dp(kit_dir):
    config = make_config(kit_dir, "ckks")
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    strategy, result = run_round(config, replies, InProcessGrid())
    assert result[0] is not None
    assert 1 not in strategy.round_reports


# Malformed replies: each is dropped with its node named, and the round goes on.


def ckks_malformations(other_kit_dir):
    other = make_config(other_kit_dir, "ckks")

    def other_context(records):
        kit = kits.load_node_kit(other_kit_dir / "node-0")
        return encrypt_train_update(
            other, kit, global_weights(), local_weights(104), TOKENS[101], 0
        )[0]

    def truncated(records):
        update = update_from_content(RecordDict(records))
        chunks = [update.chunks[0][: len(update.chunks[0]) // 2], *update.chunks[1:]]
        return rebuild(records, chunks=chunks)

    def garbage(records):
        update = update_from_content(RecordDict(records))
        chunks = [os.urandom(len(update.chunks[0])), *update.chunks[1:]]
        return rebuild(records, chunks=chunks)

    def wrong_chunk_count(records):
        update = update_from_content(RecordDict(records))
        return rebuild(records, chunks=update.chunks[:-1])

    def missing_token_count(records):
        return rebuild(records, token_count=None)

    def broken_commitment(records):
        update = update_from_content(RecordDict(records))
        records[CIPHERTEXT_RECORD] = chunks_to_record(update.chunks[:-1], "ckks")
        return records

    return {
        "other context": (other_context, "not this federation's"),
        "truncated bytes": (truncated, "chunk 0"),
        "garbage bytes": (garbage, "chunk 0"),
        "wrong chunk count": (wrong_chunk_count, "chunks"),
        "missing token count": (missing_token_count, "no token count"),
        "chunks lost after commitment": (broken_commitment, "announces"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "other context",
        "truncated bytes",
        "garbage bytes",
        "wrong chunk count",
        "missing token count",
        "chunks lost after commitment",
    ],
)
def test_ckks_malformed_reply_dropped(kit_dir, other_kit_dir, case):
    config = make_config(kit_dir, "ckks")
    change, reason = ckks_malformations(other_kit_dir)[case]
    bad = encrypted_reply(config, 101, change)
    replies = [bad] + [encrypted_reply(config, i) for i in NODE_IDS[1:]]
    strategy, result = run_round(config, replies, InProcessGrid())

    stats = strategy.round_stats[1]
    assert stats.extra["rejected_replies"] == 1
    assert len(stats.error_reasons) == 1
    assert stats.error_reasons[0].startswith("node 101:")
    assert reason in stats.error_reasons[0]
    np.testing.assert_allclose(
        new_update(result), expected_average(NODE_IDS[1:]), rtol=1e-6, atol=1e-9
    )
    # The rejected update scores 0 and is committed by the hash of its bytes.
    report = strategy.round_reports[1]
    key = content_node_key(bad.content, 101)
    assert report.scores == {key: 0.0}
    assert reason in report.rejected[key]
    assert re.fullmatch("[0-9a-f]{64}", strategy.rejected_updates[1][101])
    assert set(strategy.commitments[1]) == set(NODE_IDS[1:])


def test_token_count_must_match_metrics(kit_dir):
    config = make_config(kit_dir, "ckks")
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    replies[2].content["metrics"]["num-examples"] = 5 * BLOCK
    strategy, result = run_round(config, replies, InProcessGrid())
    assert "node 103:" in strategy.round_stats[1].error_reasons[0]
    assert result[0] is not None


def test_too_few_valid_replies_rejects_round(kit_dir):
    config = make_config(kit_dir, "ckks")
    bad = lambda records: rebuild(records, token_count=None)  # noqa: E731
    replies = [encrypted_reply(config, 101, bad), encrypted_reply(config, 102, bad)]
    replies.append(encrypted_reply(config, 103))
    grid = InProcessGrid()
    strategy, result = run_round(config, replies, grid)
    assert result == (None, None)
    assert "min_replies=2" in strategy.round_stats[1].extra["rejected"]
    assert grid.requests == []


@pytest.mark.parametrize(
    "case", ["other key", "truncated bytes", "garbage bytes", "wrong chunk count"]
)
def test_paillier_malformed_reply_dropped(kit_dir, other_kit_dir, case):
    config = make_config(kit_dir, "paillier")

    def change(records):
        update = update_from_content(RecordDict(records))
        if case == "other key":
            other = make_config(other_kit_dir, "paillier")
            kit = kits.load_node_kit(other_kit_dir / "node-0")
            return encrypt_train_update(
                other, kit, global_weights(), local_weights(104), TOKENS[101], 0
            )[0]
        if case == "truncated bytes":
            return rebuild(records, chunks=[update.chunks[0][:-7]])
        if case == "garbage bytes":
            return rebuild(records, chunks=[b"\xff" * len(update.chunks[0])])
        return rebuild(records, chunks=update.chunks * 2)

    replies = [encrypted_reply(config, 101, change)]
    replies += [encrypted_reply(config, i) for i in NODE_IDS[1:]]
    strategy, result = run_round(config, replies, InProcessGrid())
    stats = strategy.round_stats[1]
    assert stats.error_reasons[0].startswith("node 101:")
    assert result[0] is not None
    np.testing.assert_allclose(
        new_update(result), expected_average(NODE_IDS[1:]), atol=2**-17
    )


# Decryption by key holders.


def test_ckks_decryptors_disagree_rejects_round(kit_dir):
    config = make_config(kit_dir, "ckks")
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    strategy, result = run_round(config, replies, InProcessGrid(tampering=[102]))
    assert result == (None, None)
    reason = strategy.round_stats[1].extra["rejected"]
    assert "nodes 101 and 102 differ" in reason


def test_ckks_missing_decryptor_rejects_round(kit_dir):
    config = make_config(kit_dir, "ckks")
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    strategy, result = run_round(config, replies, InProcessGrid(failing=[101]))
    assert result == (None, None)
    assert (
        "only 1 of the 2 CKKS decryptors" in strategy.round_stats[1].extra["rejected"]
    )


def test_paillier_exactly_threshold_shares(kit_dir):
    config = make_config(kit_dir, "paillier")
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    grid = InProcessGrid(failing=[103])
    _, result = run_round(config, replies, grid)
    assert grid.requests == NODE_IDS
    np.testing.assert_allclose(
        new_update(result), expected_average(NODE_IDS), atol=2**-17
    )


def test_paillier_threshold_minus_one_rejects_round(kit_dir):
    config = make_config(kit_dir, "paillier")
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    strategy, result = run_round(config, replies, InProcessGrid(failing=[102, 103]))
    assert result == (None, None)
    reason = strategy.round_stats[1].extra["rejected"]
    assert "1 valid Paillier partial decryptions" in reason
    assert "threshold is 2" in reason


def test_paillier_tampered_share_names_node(kit_dir):
    config = make_config(kit_dir, "paillier")
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    strategy, result = run_round(config, replies, InProcessGrid(tampering=[101]))
    reasons = strategy.round_stats[1].error_reasons
    assert len(reasons) == 1
    assert reasons[0].startswith("node 101:")
    assert "party 1" in reasons[0]
    np.testing.assert_allclose(
        new_update(result), expected_average(NODE_IDS), atol=2**-17
    )


def test_paillier_tampered_share_below_threshold_rejects(kit_dir):
    config = make_config(kit_dir, "paillier")
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    grid = InProcessGrid(failing=[103], tampering=[101])
    strategy, result = run_round(config, replies, grid)
    assert result == (None, None)
    assert "threshold is 2" in strategy.round_stats[1].extra["rejected"]


# Node-side checks before sending.


def test_payload_over_limit_fails_before_sending(kit_dir):
    config = make_config(kit_dir, "ckks", max_payload_mb=0.01)
    kit = load_kit(node_context(101), config)
    with pytest.raises(PayloadTooLargeError) as error:
        encrypt_train_update(
            config, kit, global_weights(), local_weights(101), TOKENS[101], 0
        )
    message = str(error.value)
    assert "MiB" in message
    assert "limit of 0.01 MiB" in message
    assert "secure_aggregation.max_payload_mb" in message


def test_non_finite_update_refused_before_encryption(kit_dir):
    config = make_config(kit_dir, "ckks")
    kit = load_kit(node_context(101), config)
    local = local_weights(101)
    local["layer1.weight"][3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        encrypt_train_update(config, kit, global_weights(), local, TOKENS[101], 0)


def test_node_kit_from_node_config(kit_dir):
    config = load_config({"secure_aggregation.scheme": "ckks"})
    context = node_context(101)
    context.node_config["kit-path"] = str(kit_dir / "node-2")
    assert load_kit(context, config).node_index == 2
    with pytest.raises(ValueError, match="kit-path"):
        load_kit(node_context(101), config)


def test_server_context_cannot_decrypt(kit_dir):
    server = kits.load_server_kit(kit_dir / "server")
    node = kits.load_node_kit(kit_dir / "node-0")
    assert not server.ckks_context.is_private()
    reply = ckks.encrypt_update(node.ckks_context, np.ones(10), 1)
    with pytest.raises(ValueError, match="no secret key"):
        ckks.decrypt_average(server.ckks_context, reply.chunks, 1, 10)
    with pytest.raises(ValueError):
        ts.ckks_vector_from(server.ckks_context, reply.chunks[0]).decrypt()


def test_records_round_trip_and_commitment():
    update = EncryptedUpdate("ckks", [b"abc", b"de"], 7, "f" * 64, 5, "")
    update = dataclasses.replace(
        update, commitment=compute_commitment("ckks", "f" * 64, update.chunks)
    )
    loaded = update_from_content(RecordDict(update_to_records(update)))
    assert loaded == update
    records = update_to_records(update)
    records[SECURE_RECORD]["key-fingerprint"] = "e" * 64
    with pytest.raises(ValueError, match="commitment"):
        update_from_content(RecordDict(records))


def test_paillier_unpacked_weight_headroom(kit_dir):
    config = make_config(kit_dir, "paillier", max_total_blocks=900)
    replies = [encrypted_reply(config, i) for i in NODE_IDS[:2]]
    strategy, result = run_round(config, replies, InProcessGrid())
    assert result == (None, None)
    assert "max_total_blocks=900" in strategy.round_stats[1].extra["rejected"]
    with pytest.raises(ValueError, match="secure_aggregation.max_total_blocks"):
        encrypted_reply(config, 103)


def test_cli_provision_writes_private_kits(tmp_path):
    out = tmp_path / "kits"
    result = CliRunner().invoke(
        cli, ["provision", "--nodes", "2", "--out", str(out), "--no-paillier"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "server" / "kit.json").is_file()
    assert oct(os.stat(out / "node-1").st_mode & 0o777) == "0o700"
    assert kits.load_node_kit(out / "node-1").paillier_key_share is None
    again = CliRunner().invoke(cli, ["provision", "--nodes", "2", "--out", str(out)])
    assert again.exit_code == 2
    assert "already exists" in again.output


def test_ckks_with_fedavgm_server_momentum(kit_dir):
    config = make_config(kit_dir, "ckks")
    config = dataclasses.replace(
        config, aggregation=dataclasses.replace(config.aggregation, name="fedavgm")
    )
    replies = [encrypted_reply(config, i) for i in NODE_IDS]
    strategy, result = run_round(config, replies, InProcessGrid())
    assert type(strategy).__name__ == "LinguaChainSecureFedAvgM"
    # In round 1 the momentum buffer is the first pseudo-gradient, so with
    # server_lr 1 the step equals the plain average.
    np.testing.assert_allclose(
        new_update(result), expected_average(NODE_IDS), rtol=1e-5, atol=1e-8
    )
