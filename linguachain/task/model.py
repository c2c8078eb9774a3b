"""GPT-2 models from named presets, and their weights as ordered numpy arrays."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from linguachain.config import ModelConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """Width and depth of a GPT-2 preset."""

    n_layer: int
    n_embd: int
    n_head: int


# Parameter counts assume the default 4096-token BPE tokenizer and 128-token
# blocks; the embedding table grows with the vocabulary.
PRESETS: dict[str, Preset] = {
    "micro": Preset(n_layer=1, n_embd=48, n_head=4),  # about 0.23M parameters
    "tiny": Preset(n_layer=3, n_embd=128, n_head=4),  # about 1.1M
    "small": Preset(n_layer=8, n_embd=320, n_head=8),  # about 11M
    "gpt2": Preset(n_layer=12, n_embd=768, n_head=12),  # GPT-2 base, 124M with its tokenizer
}


def build_model(
    config: ModelConfig, tokenizer: PreTrainedTokenizerBase, block_size: int
) -> GPT2LMHeadModel:
    """Build a freshly initialised GPT2LMHeadModel for `tokenizer`'s vocabulary."""
    preset = PRESETS[config.preset]
    gpt2_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=block_size,
        n_embd=preset.n_embd,
        n_layer=preset.n_layer,
        n_head=preset.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(gpt2_config)


def count_parameters(model: torch.nn.Module) -> int:
    """Count trainable parameters once each (tied weights count once)."""
    return sum(p.numel() for p in model.parameters())


def get_weights(model: torch.nn.Module) -> OrderedDict[str, np.ndarray]:
    """Return parameters in the model's canonical order, tied weights once.

    `named_parameters` yields a tied tensor once, under its first name
    (`transformer.wte.weight` for GPT-2's embedding and output layer).
    """
    return OrderedDict(
        (name, p.detach().cpu().numpy().copy()) for name, p in model.named_parameters()
    )


def set_weights(model: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Copy `weights` into the model, requiring exactly its names and shapes."""
    parameters = dict(model.named_parameters())
    missing = sorted(set(parameters) - set(weights))
    unexpected = sorted(set(weights) - set(parameters))
    if missing or unexpected:
        raise ValueError(
            f"Weights do not match the model: missing {missing[:3]}, unexpected"
            f" {unexpected[:3]}. Check that server and nodes use the same preset."
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            value = np.asarray(weights[name])
            if value.shape != tuple(parameter.shape):
                raise ValueError(
                    f"Weight {name} has shape {value.shape}, the model expects"
                    f" {tuple(parameter.shape)}."
                )
            parameter.copy_(torch.from_numpy(value).to(parameter.dtype))
