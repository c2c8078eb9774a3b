"""Local training of a causal language model on a node's blocks."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from linguachain.config import TrainConfig
from linguachain.task.blocks import make_labels

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


@dataclass
class TrainResult:
    """Outcome of one node's local training."""

    loss: float
    steps: int
    tokens: int


def train_local(
    model: torch.nn.Module, blocks: torch.Tensor, config: TrainConfig, seed: int
) -> TrainResult:
    """Run `config.local_steps` AdamW steps on random batches of `blocks`.

    Raises NonFiniteError on the first NaN or infinite loss or gradient, so the
    node replies with an error instead of sending broken weights.
    """
    if len(blocks) == 0:
        return TrainResult(loss=0.0, steps=0, tokens=0)
    torch.set_num_threads(config.num_threads)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    model.train()
    total_loss = 0.0
    tokens = 0
    for step in range(config.local_steps):
        batch_index = torch.randint(len(blocks), (config.batch_size,), generator=generator)
        input_ids = blocks[batch_index]
        attention_mask = torch.ones_like(input_ids)
        labels = make_labels(input_ids, attention_mask)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        if not torch.isfinite(loss):
            raise NonFiniteError(f"Non-finite training loss {loss.item()} at step {step}.")

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if not math.isfinite(float(grad_norm)):
            raise NonFiniteError(f"Non-finite gradient norm {grad_norm} at step {step}.")
        optimizer.step()

        total_loss += loss.item()
        tokens += input_ids.numel()
    return TrainResult(loss=total_loss / config.local_steps, steps=config.local_steps, tokens=tokens)
