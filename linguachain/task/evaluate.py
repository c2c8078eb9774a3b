"""Held-out evaluation: token cross-entropy, perplexity and bits per byte."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from linguachain.task.blocks import make_labels


@dataclass
class EvalResult:
    """Evaluation of a model on blocks of held-out text."""

    loss: float  # mean cross-entropy per predicted token, in nats
    perplexity: float
    bits_per_byte: float
    tokens: int


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    blocks: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 16,
) -> EvalResult:
    """Evaluate `model` on `blocks`; an empty set gives NaN, never a crash.

    Bits per byte divides the summed loss by the UTF-8 bytes of the predicted
    tokens, so runs with different tokenizers compare.
    """
    if len(blocks) == 0:
        return EvalResult(math.nan, math.nan, math.nan, 0)
    model.eval()
    total_nats = 0.0
    predicted = 0
    for start in range(0, len(blocks), batch_size):
        input_ids = blocks[start : start + batch_size]
        attention_mask = torch.ones_like(input_ids)
        labels = make_labels(input_ids, attention_mask)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        # The model predicts every position but the first of each block.
        count = input_ids.numel() - len(input_ids)
        total_nats += loss.item() * count
        predicted += count

    # Bytes of the predicted tokens: each block without its first token.
    predicted_bytes = sum(
        len(tokenizer.decode(block[1:].tolist(), skip_special_tokens=True).encode())
        for block in blocks
    )
    loss = total_nats / predicted
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=total_nats / max(predicted_bytes, 1) / math.log(2),
        tokens=predicted,
    )
