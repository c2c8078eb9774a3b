"""A node's private text as token blocks, cached per process across rounds."""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass

import torch

from linguachain.config import DataConfig
from linguachain.task.blocks import tokenize_articles, group_blocks
from linguachain.task.data import load_text_pools
from linguachain.task.partition import load_partition
from linguachain.task.tokenizer import wrap_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeData:
    """Training and local evaluation blocks of one partition."""

    train_blocks: torch.Tensor
    eval_blocks: torch.Tensor


def _freeze(config: DataConfig) -> tuple:
    return tuple(sorted(dataclasses.asdict(config).items()))


@functools.lru_cache(maxsize=4)
def _load(
    frozen_config: tuple, tokenizer_json: str, partition_id: int, num_partitions: int
) -> NodeData:
    config = DataConfig(**dict(frozen_config))
    tokenizer = wrap_tokenizer(tokenizer_json)
    pools = load_text_pools(config)
    partition = load_partition(pools.train, config, partition_id, num_partitions)
    ids = tokenize_articles(tokenizer, partition["text"], partition["article"])
    blocks = group_blocks(ids, config.block_size)
    num_eval = int(len(blocks) * config.local_eval_fraction)
    data = NodeData(blocks[: len(blocks) - num_eval], blocks[len(blocks) - num_eval :])
    if len(data.train_blocks) == 0:
        logger.warning(
            "Partition %d has %d tokens, fewer than one %d-token block: this node"
            " reports 0 examples",
            partition_id,
            len(ids),
            config.block_size,
        )
    logger.info(
        "Partition %d: %d training blocks, %d local evaluation blocks",
        partition_id,
        len(data.train_blocks),
        len(data.eval_blocks),
    )
    return data


def load_node_data(
    config: DataConfig, tokenizer_json: str, partition_id: int, num_partitions: int
) -> NodeData:
    """Return the node's blocks, loading and tokenizing them on first use."""
    return _load(_freeze(config), tokenizer_json, partition_id, num_partitions)
