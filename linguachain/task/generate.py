"""Text generation from a trained model: greedy and top-k sampling."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def generate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int = 40,
    top_k: int = 0,
    seed: int = 0,
) -> str:
    """Continue `prompt`; `top_k=0` decodes greedily, otherwise samples top-k."""
    model.eval()
    encoded = tokenizer(prompt, return_tensors="pt")
    torch.manual_seed(seed)
    # Keep the prompt plus continuation within the model's context window.
    context = model.config.n_positions
    max_new_tokens = max(1, min(max_new_tokens, context - encoded["input_ids"].shape[1]))
    output = model.generate(
        **encoded,
        max_new_tokens=max_new_tokens,
        do_sample=top_k > 0,
        top_k=top_k if top_k > 0 else None,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0], skip_special_tokens=True)
