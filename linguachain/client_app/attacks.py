"""Poisoning attacks that a seeded share of the nodes run in attack experiments.

A malicious node keeps its keys and follows the protocol: it receives the global
model, replies in time with a well-formed message and claims its true token
count. It deviates in two places only, which the train handler calls as steps:

1. `poison_training_blocks` changes the node's own text before training
   (`data_poisoning`, `backdoor`).
2. `attack_update` changes the update (local minus global weights) it sends
   (`sign_flip`, `scaling`, `gaussian_noise`, `free_rider`, `non_finite`,
   `oversized`, and `backdoor` with `attack.backdoor_boost` other than 1). It runs after differential privacy, because an attacker does
   not have to clip or add noise.

Which partitions turn malicious is a seeded draw over partition ids, so every
node and the server agree on it without talking.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from linguachain.config import AttackConfig
from linguachain.privacy.updates import Weights, update_norm
from linguachain.task.backdoor import backdoor_token_ids

logger = logging.getLogger(__name__)

DATA_ATTACKS = frozenset({"data_poisoning", "backdoor"})
UPDATE_ATTACKS = frozenset(
    {"sign_flip", "scaling", "gaussian_noise", "free_rider", "non_finite", "oversized"}
)


def malicious_partitions(
    num_partitions: int, fraction: float, seed: int
) -> frozenset[int]:
    """Draw round(fraction * num_partitions) malicious partition ids, seeded."""
    count = int(round(fraction * num_partitions))
    order = np.random.default_rng(seed).permutation(num_partitions)
    return frozenset(int(pid) for pid in order[:count])


def is_malicious(attack: AttackConfig, partition_id: int, num_partitions: int) -> bool:
    """Return whether this partition runs the configured attack."""
    if attack.kind == "none" or attack.fraction <= 0:
        return False
    chosen = malicious_partitions(num_partitions, attack.fraction, attack.seed)
    return partition_id in chosen


def poison_training_blocks(
    blocks: torch.Tensor,
    attack: AttackConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
) -> torch.Tensor:
    """Return a poisoned copy of the node's training blocks for data attacks.

    `data_poisoning` shuffles the tokens of each chosen block or replaces them
    with uniformly random token ids. `backdoor` writes the trigger phrase and
    the target continuation `attack.backdoor_copies` times over random,
    non-overlapping spans of each chosen block. Other kinds return the blocks
    unchanged.
    """
    if attack.kind not in DATA_ATTACKS or len(blocks) == 0:
        return blocks
    generator = torch.Generator().manual_seed(seed)
    poisoned = blocks.clone()
    num_chosen = max(1, int(round(attack.poison_rate * len(blocks))))
    chosen = torch.randperm(len(blocks), generator=generator)[:num_chosen]

    if attack.kind == "data_poisoning":
        for row in chosen.tolist():
            if attack.poison_mode == "shuffle":
                order = torch.randperm(blocks.shape[1], generator=generator)
                poisoned[row] = blocks[row, order]
            else:
                poisoned[row] = torch.randint(
                    len(tokenizer), (blocks.shape[1],), generator=generator
                )
    else:
        trigger_ids, target_ids = backdoor_token_ids(
            tokenizer, attack.trigger, attack.target
        )
        phrase = torch.tensor(trigger_ids + target_ids, dtype=blocks.dtype)
        copies = attack.backdoor_copies
        if copies * len(phrase) > blocks.shape[1]:
            raise ValueError(
                f"{copies} copies of trigger plus target ({len(phrase)} tokens each)"
                f" are longer than a {blocks.shape[1]}-token block; shorten"
                " attack.trigger or attack.target, or lower attack.backdoor_copies."
            )
        # Each copy goes into its own phrase-sized slot of the block, so copies
        # never overlap; the slot choice is random per block.
        num_slots = blocks.shape[1] // len(phrase)
        for row in chosen.tolist():
            slots = torch.randperm(num_slots, generator=generator)[:copies]
            # Spare tokens shift the slot grid, so a single copy can start
            # anywhere in the block.
            offset = int(
                torch.randint(
                    blocks.shape[1] - num_slots * len(phrase) + 1,
                    (1,),
                    generator=generator,
                )
            )
            for slot in slots.tolist():
                start = offset + slot * len(phrase)
                poisoned[row, start : start + len(phrase)] = phrase

    logger.info(
        "Attack %s: poisoned %d of %d training blocks",
        attack.kind,
        num_chosen,
        len(blocks),
    )
    return poisoned


def attack_update(
    update: Weights,
    attack: AttackConfig,
    seed: int,
    last_global_step: Weights | None = None,
) -> Weights:
    """Return the update a malicious node sends in place of its honest one.

    `last_global_step` (the previous global model step, new minus old global
    weights) is what a `stale` free rider replays; without it the free rider
    sends zeros.
    """
    if attack.kind == "backdoor" and attack.backdoor_boost != 1.0:
        # Model replacement: the boost makes the poisoned update outweigh the
        # honest ones in an average.
        return OrderedDict((k, v * attack.backdoor_boost) for k, v in update.items())
    if attack.kind not in UPDATE_ATTACKS:
        return update
    rng = np.random.default_rng(seed)
    if attack.kind == "sign_flip":
        return OrderedDict((k, -v) for k, v in update.items())
    if attack.kind == "scaling":
        return OrderedDict((k, v * attack.boost) for k, v in update.items())
    if attack.kind == "gaussian_noise":
        return OrderedDict(
            (k, v + rng.normal(0.0, attack.noise_std, v.shape).astype(v.dtype))
            for k, v in update.items()
        )
    if attack.kind == "free_rider":
        if attack.free_rider_mode == "stale" and last_global_step is not None:
            return OrderedDict((k, v.copy()) for k, v in last_global_step.items())
        return OrderedDict((k, np.zeros_like(v)) for k, v in update.items())
    if attack.kind == "non_finite":
        corrupted = OrderedDict((k, v.copy()) for k, v in update.items())
        first = next(iter(corrupted.values()))
        first.flat[0] = np.nan
        first.flat[-1] = np.inf
        return corrupted

    # oversized: the same direction, stretched to attack.oversized_norm.
    norm = update_norm(update)
    direction = update if norm > 0 else _random_direction(update, rng)
    factor = attack.oversized_norm / max(update_norm(direction), 1e-12)
    return OrderedDict((k, v * factor) for k, v in direction.items())


def _random_direction(update: Weights, rng: np.random.Generator) -> Weights:
    return OrderedDict(
        (k, rng.standard_normal(v.shape).astype(v.dtype)) for k, v in update.items()
    )
