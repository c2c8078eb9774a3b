"""Tokenize text and group it into fixed-length blocks for causal LM training.

Token ids of consecutive paragraphs are concatenated, with an end-of-text token
where one article ends and the next begins, and cut into blocks of
`block_size` tokens. The remainder shorter than a block is dropped, as Hugging
Face's `run_clm` example does, so every block is full and needs no padding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def tokenize_articles(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    article_ids: Sequence[int] | None = None,
) -> list[int]:
    """Concatenate the token ids of `texts`, separating articles by end-of-text."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for index, paragraph in enumerate(encoded):
        new_article = article_ids is not None and index > 0
        if new_article and article_ids[index] != article_ids[index - 1]:
            ids.append(tokenizer.eos_token_id)
        ids.extend(paragraph)
    return ids


def group_blocks(token_ids: Sequence[int], block_size: int) -> torch.Tensor:
    """Cut token ids into a (num_blocks, block_size) tensor, dropping the tail."""
    num_blocks = len(token_ids) // block_size
    if num_blocks == 0:
        return torch.empty((0, block_size), dtype=torch.long)
    used = torch.tensor(token_ids[: num_blocks * block_size], dtype=torch.long)
    return used.view(num_blocks, block_size)


def make_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Copy input ids to labels with padded positions set to -100.

    Labels come from the attention mask, not from the pad id, so a real
    end-of-text token keeps its label even where it equals another special id.
    """
    return input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)


def articles_to_blocks(
    tokenizer: PreTrainedTokenizerBase, articles: list[list[str]], block_size: int
) -> torch.Tensor:
    """Tokenize whole articles and group them into blocks."""
    texts = [line for article in articles for line in article]
    ids = [i for i, article in enumerate(articles) for _ in article]
    return group_blocks(tokenize_articles(tokenizer, texts, ids), block_size)
