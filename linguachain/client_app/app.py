"""Flower ClientApp: local training and evaluation on a node's private text.

Each message carries the global weights and the run config as flattened keys,
plus the serialized tokenizer, so a node needs nothing from the server's disk.
The node's partition comes from its node config (`partition-id`,
`num-partitions`); an optional `data-path` there overrides `data.path`. The
node config keys are listed in `linguachain.client_app.node_config`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from linguachain.config import RunConfig, load_config, valid_keys
from linguachain.client_app.attacks import (
    attack_update,
    is_malicious,
    poison_training_blocks,
)
from linguachain.client_app.node_config import read_node_config
from linguachain.client_app.node_data import NodeData, load_node_data
from linguachain.client_app.secure_update import (
    encrypt_train_update,
    handle_decrypt,
    handle_decrypt_scores,
    load_kit,
)
from linguachain.logs import configure_logging
from linguachain.privacy.dp import privatize_update
from linguachain.privacy.updates import add_update, weights_difference
from linguachain.strategies.screening import PARTITION_ID_KEY, SAMPLED_NODES_KEY
from linguachain.task.evaluate import evaluate
from linguachain.task.model import build_model, set_weights
from linguachain.task.tokenizer import wrap_tokenizer
from linguachain.task.train import TrainResult, train_local

logger = logging.getLogger(__name__)

TOKENIZER_RECORD = "tokenizer"
TOKENIZER_KEY = "json"

app = ClientApp()


def config_from_record(record: ConfigRecord) -> RunConfig:
    """Rebuild the run config from the flattened keys of a ConfigRecord."""
    keys = set(valid_keys())
    return load_config({k: v for k, v in record.items() if k in keys})


def arrays_to_weights(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """Return the named arrays of an ArrayRecord in their order."""
    return OrderedDict((name, array.numpy()) for name, array in record.items())


def weights_to_arrays(weights: dict[str, np.ndarray]) -> ArrayRecord:
    """Pack named numpy arrays into an ArrayRecord, keeping names and order."""
    return ArrayRecord(OrderedDict((k, torch.from_numpy(v)) for k, v in weights.items()))


def _node_setup(msg: Message, context: Context) -> tuple[RunConfig, NodeData, int]:
    configure_logging()
    record = msg.content["config"]
    config = config_from_record(record)
    # Secure aggregation reads `kit-path`; consensus reads `kit-path`, `bls-key`
    # and `ledger-url` (linguachain.client_app.validator).
    node = read_node_config(context.node_config)
    if node.data_path:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, path=node.data_path)
        )
    data = load_node_data(
        config.data, _tokenizer_json(msg), node.partition_id, node.num_partitions
    )
    return config, data, node.partition_id


def _tokenizer_json(msg: Message) -> str:
    if TOKENIZER_RECORD not in msg.content:
        raise ValueError(
            "The message carries no tokenizer record; server and node run"
            " different linguachain versions."
        )
    return str(msg.content[TOKENIZER_RECORD][TOKENIZER_KEY])


def _global_model(msg: Message, config: RunConfig):  # type: ignore[no-untyped-def]
    tokenizer = wrap_tokenizer(_tokenizer_json(msg))
    model = build_model(config.model, tokenizer, config.data.block_size)
    set_weights(model, arrays_to_weights(msg.content["arrays"]))
    return model, tokenizer


LAST_GLOBAL_RECORD = "last-global"


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on local blocks and reply with the new weights."""
    config, data, partition_id = _node_setup(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    model, tokenizer = _global_model(msg, config)
    num_partitions = int(context.node_config["num-partitions"])
    malicious = is_malicious(config.attack, partition_id, num_partitions)

    started = time.perf_counter()
    seed = config.train.seed * 1_000_003 + server_round * 1009 + partition_id
    blocks = data.train_blocks
    if malicious:
        blocks = poison_training_blocks(blocks, config.attack, tokenizer, seed)
    if malicious and config.attack.kind == "free_rider":
        result = TrainResult(loss=0.0, steps=0, tokens=0)
    else:
        result = train_local(model, blocks, config.train, seed)
    seconds = time.perf_counter() - started
    num_examples = int(data.train_blocks.numel())
    logger.info(
        "Node %d, round %d: %d steps, loss %.4f, %.1f s",
        partition_id,
        server_round,
        result.steps,
        result.loss,
        seconds,
    )

    metrics = MetricRecord(
        {
            "num-examples": num_examples,
            "train-loss": result.loss,
            "train-tokens": result.tokens,
            "train-seconds": seconds,
            PARTITION_ID_KEY: partition_id,
        }
    )
    weights = OrderedDict(
        (name, p.detach().numpy()) for name, p in model.named_parameters()
    )
    # DP noise and the attack change the weights before either path sends them,
    # so encrypted updates carry them too.
    if malicious or config.privacy.enabled:
        weights = _finish_update(msg, context, config, weights, malicious, seed)
    if config.secure_aggregation.scheme == "none":
        content = RecordDict({"arrays": weights_to_arrays(weights), "metrics": metrics})
        return Message(content=content, reply_to=msg)
    if num_examples == 0:
        # Nothing was trained; the server leaves 0-example replies out.
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    # Secure aggregation: the update leaves the node only as ciphertext.
    records, secure_metrics = encrypt_train_update(
        config,
        load_kit(context, config),
        arrays_to_weights(msg.content["arrays"]),
        weights,
        num_examples,
        partition_id,
    )
    metrics.update(secure_metrics)
    content = RecordDict({**records, "metrics": metrics})
    return Message(content=content, reply_to=msg)


def _finish_update(
    msg: Message,
    context: Context,
    config: RunConfig,
    weights: OrderedDict[str, np.ndarray],
    malicious: bool,
    seed: int,
) -> OrderedDict[str, np.ndarray]:
    """Apply differential privacy, then the attack, to the update (local - global)."""
    global_weights = arrays_to_weights(msg.content["arrays"])
    update = weights_difference(weights, global_weights)
    if config.privacy.enabled:
        round_config = msg.content["config"]
        sampled = int(round_config.get(SAMPLED_NODES_KEY, config.federation.num_nodes))
        # Fresh operating-system entropy, because noise the server could predict
        # protects nothing.
        update, _ = privatize_update(
            update,
            config.privacy.clip_norm,
            config.privacy.noise_multiplier,
            sampled,
            np.random.default_rng(),
        )
    if malicious:
        last_step = None
        if LAST_GLOBAL_RECORD in context.state:
            previous = arrays_to_weights(context.state[LAST_GLOBAL_RECORD])
            last_step = weights_difference(global_weights, previous)
        context.state[LAST_GLOBAL_RECORD] = weights_to_arrays(global_weights)
        attack_seed = config.attack.seed + seed
        update = attack_update(update, config.attack, attack_seed, last_step)
    return add_update(global_weights, update)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the node's local held-back blocks."""
    config, data, _ = _node_setup(msg, context)
    torch.set_num_threads(config.train.num_threads)
    model, tokenizer = _global_model(msg, config)
    result = evaluate(model, data.eval_blocks, tokenizer, config.train.batch_size)
    metrics = {"num-examples": result.tokens}
    if result.tokens:
        metrics.update({"eval-loss": result.loss, "eval-perplexity": result.perplexity})
    content = RecordDict({"metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


# Key holders decrypt summed updates when the server sends "query.decrypt".
app.query("decrypt")(handle_decrypt)
# Key holders decrypt FLTrust's per-node score scalars on "query.decrypt_scores".
app.query("decrypt_scores")(handle_decrypt_scores)


def _local_loss(msg: Message, context: Context, arrays: ArrayRecord) -> float:
    config, data, _ = _node_setup(msg, context)
    torch.set_num_threads(config.train.num_threads)
    tokenizer = wrap_tokenizer(_tokenizer_json(msg))
    model = build_model(config.model, tokenizer, config.data.block_size)
    set_weights(model, arrays_to_weights(arrays))
    # Nodes with no held-back blocks judge the model on their last training blocks.
    blocks = data.eval_blocks if len(data.eval_blocks) else data.train_blocks[-8:]
    if config.consensus.validation_blocks > 0:
        blocks = blocks[: config.consensus.validation_blocks]
    return evaluate(model, blocks, tokenizer, config.train.batch_size).loss


def _consensus(msg: Message, context: Context, action: str) -> Message:
    from linguachain.client_app.validator import handle_query

    configure_logging()
    tolerance = float(msg.content["config"]["consensus.loss_tolerance"])
    return handle_query(msg, context, action, _local_loss, tolerance)


@app.query("propose")
def consensus_propose(msg: Message, context: Context) -> Message:
    """Evaluate the VDF and the proof of work of a block this node proposes."""
    return _consensus(msg, context, "propose")


@app.query("validate")
def consensus_validate(msg: Message, context: Context) -> Message:
    """Check a proposed block against this node's ledger copy and vote."""
    return _consensus(msg, context, "validate")


@app.query("sign")
def consensus_sign(msg: Message, context: Context) -> Message:
    """Sign a block this node voted for, at most one block per height."""
    return _consensus(msg, context, "sign")


@app.query("append")
def consensus_append(msg: Message, context: Context) -> Message:
    """Append the final blocks this node's ledger copy lacks."""
    return _consensus(msg, context, "append")
