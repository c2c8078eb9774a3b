"""Backdoor phrases as token ids, and the attack success rate on held-out prompts.

A backdoor attack teaches the model to continue a trigger phrase with a chosen
target. The success rate is measured on prompts cut from held-out text that the
attackers never trained on. Each prompt is followed by the trigger, and the
attack succeeds on a prompt when greedy decoding would produce exactly the
target tokens next.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

# Held-out tokens placed before the trigger in each prompt.
PROMPT_TOKENS = 24


@dataclass(frozen=True)
class BackdoorResult:
    """Attack success on held-out prompts."""

    # Share of prompts whose greedy continuation is exactly the target.
    success_rate: float
    # Share of target tokens predicted as the argmax, given the target prefix.
    token_accuracy: float
    num_prompts: int


def backdoor_token_ids(
    tokenizer: PreTrainedTokenizerBase, trigger: str, target: str
) -> tuple[list[int], list[int]]:
    """Tokenize the trigger and the target continuation separately."""
    trigger_ids = tokenizer.encode(trigger, add_special_tokens=False)
    target_ids = tokenizer.encode(target, add_special_tokens=False)
    if not trigger_ids or not target_ids:
        raise ValueError(
            f"Trigger {trigger!r} or target {target!r} tokenizes to no tokens;"
            " set attack.trigger and attack.target to non-empty text."
        )
    return trigger_ids, target_ids


def backdoor_prompts(
    blocks: torch.Tensor,
    trigger_ids: list[int],
    num_prompts: int,
    prompt_tokens: int = PROMPT_TOKENS,
) -> torch.Tensor:
    """Cut prompts from evenly spaced held-out blocks and append the trigger."""
    if len(blocks) == 0:
        raise ValueError("No held-out blocks to cut backdoor prompts from.")
    prompt_tokens = min(prompt_tokens, blocks.shape[1])
    index = torch.linspace(0, len(blocks) - 1, min(num_prompts, len(blocks))).long()
    heads = blocks[index, :prompt_tokens]
    trigger = torch.tensor(trigger_ids, dtype=blocks.dtype).expand(len(heads), -1)
    return torch.cat([heads, trigger], dim=1)


@torch.no_grad()
def measure_backdoor(
    model: torch.nn.Module, prompts: torch.Tensor, target_ids: list[int]
) -> BackdoorResult:
    """Measure how often the model continues the triggered prompts with the target.

    One teacher-forced pass scores every target position: greedy decoding emits
    exactly the target when the argmax is right at every position given the
    correct prefix, so no sampling loop is needed.
    """
    model.eval()
    target = torch.tensor(target_ids, dtype=prompts.dtype)
    inputs = torch.cat([prompts, target[:-1].expand(len(prompts), -1)], dim=1)
    context = model.config.n_positions
    if inputs.shape[1] > context:
        raise ValueError(
            f"Prompt plus target is {inputs.shape[1]} tokens, longer than the"
            f" model's {context}-token context; shorten attack.target."
        )
    logits = model(input_ids=inputs).logits
    # Logits at position p predict token p + 1, so the target's predictions
    # start at the last prompt position.
    start = prompts.shape[1] - 1
    predicted = logits[:, start : start + len(target_ids)].argmax(dim=-1)
    correct = predicted == target
    return BackdoorResult(
        success_rate=float(correct.all(dim=1).float().mean()),
        token_accuracy=float(correct.float().mean()),
        num_prompts=len(prompts),
    )
