"""Tests of text loading, blocking, partitioning, tokenizer and local training."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from linguachain.config import DataConfig, TrainConfig, load_config
from linguachain.task.blocks import (
    IGNORE_INDEX,
    articles_to_blocks,
    group_blocks,
    make_labels,
    tokenize_articles,
)
from linguachain.task.data import load_text_pools, split_articles, split_held_out
from linguachain.task.evaluate import evaluate
from linguachain.task.model import build_model, count_parameters, get_weights, set_weights
from linguachain.task.partition import load_partition
from linguachain.task.tokenizer import EOS_TOKEN, train_bpe_tokenizer
from linguachain.task.train import NonFiniteError, train_local
from linguachain.config import ModelConfig


@pytest.fixture(scope="module")
def pools(wikitext):
    return load_text_pools(
        DataConfig(path=str(wikitext), train_file="valid.txt", test_file="test.txt")
    )


@pytest.fixture(scope="module")
def tokenizer(pools):
    public, _ = split_held_out(pools.test, 0.15)
    return train_bpe_tokenizer([line for a in public for line in a], 1024)


def test_split_articles_drops_blank_lines():
    lines = ["", " = A = ", " ", " text a ", "", " = = Section = = ", " more a ", " = B = ", " b "]
    articles = split_articles(lines)
    assert len(articles) == 2
    assert articles[0] == [" = A = \n", " text a \n", " = = Section = = \n", " more a \n"]
    assert all(line.strip() for article in articles for line in article)


def test_pools_hold_wikitext_articles(pools):
    assert len(pools.train) == 60
    assert len(pools.test) == 62
    assert "local files" in pools.source


def test_missing_local_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.txt"):
        load_text_pools(DataConfig(path=str(tmp_path)))


def test_held_out_split_keeps_public_and_eval_apart(pools):
    public, evaluation = split_held_out(pools.test, 0.15)
    assert len(public) == 9
    assert len(public) + len(evaluation) == len(pools.test)
    assert not {tuple(a) for a in public} & {tuple(a) for a in evaluation}


def test_group_blocks_drops_remainder():
    blocks = group_blocks(list(range(25)), 8)
    assert blocks.shape == (3, 8)
    assert blocks[-1, -1].item() == 23


def test_group_blocks_short_input_gives_zero_blocks():
    assert group_blocks(list(range(7)), 8).shape == (0, 8)


def test_make_labels_masks_padding_not_eos(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    input_ids = torch.tensor([[5, 6, eos, pad, pad]])
    attention_mask = torch.tensor([[1, 1, 1, 0, 0]])
    labels = make_labels(input_ids, attention_mask)
    assert labels.tolist() == [[5, 6, eos, IGNORE_INDEX, IGNORE_INDEX]]


def test_tokenizer_has_distinct_special_tokens(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    text = " The game was released in 1990 . \n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_articles_separated_by_eos(tokenizer):
    ids = tokenize_articles(tokenizer, ["a b\n", "c\n", "d\n"], [0, 0, 1])
    assert ids.count(tokenizer.eos_token_id) == 1


def test_partitions_reproducible_and_disjoint(pools):
    config = DataConfig(partitioner="iid", seed=7)
    first = [load_partition(pools.train, config, i, 3)["text"] for i in range(3)]
    again = load_partition(pools.train, config, 1, 3)["text"]
    assert first[1] == again
    assert sum(len(p) for p in first) == sum(len(a) for a in pools.train)


def test_dirichlet_small_alpha_skews_topics(pools):
    config = DataConfig(partitioner="dirichlet", alpha=0.1, num_topics=4, seed=3)
    partitions = [load_partition(pools.train, config, i, 4) for i in range(4)]
    assert sum(len(p) for p in partitions) == sum(len(a) for a in pools.train)
    # With alpha 0.1 at least one node's text is dominated by a single topic.
    shares = [
        max(np.bincount(p["topic"])) / len(p) for p in partitions if len(p) > 0
    ]
    assert max(shares) > 0.6


def test_invalid_partition_id_rejected(pools):
    with pytest.raises(ValueError, match="partition-id 4"):
        load_partition(pools.train, DataConfig(), 4, 4)


def test_micro_preset_size(tokenizer):
    model = build_model(ModelConfig(preset="micro"), tokenizer, 128)
    # 1024-token vocabulary here; about 0.23M with the default 4096.
    assert 50_000 < count_parameters(model) < 300_000


def test_weights_round_trip(tokenizer):
    model = build_model(ModelConfig(preset="micro"), tokenizer, 32)
    weights = get_weights(model)
    assert "lm_head.weight" not in weights  # tied to transformer.wte.weight
    other = build_model(ModelConfig(preset="micro"), tokenizer, 32)
    set_weights(other, weights)
    assert all(np.array_equal(weights[k], v) for k, v in get_weights(other).items())


def test_set_weights_rejects_wrong_shape(tokenizer):
    model = build_model(ModelConfig(preset="micro"), tokenizer, 32)
    weights = get_weights(model)
    weights["transformer.wpe.weight"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="transformer.wpe.weight"):
        set_weights(model, weights)


def test_training_lowers_loss(pools, tokenizer):
    blocks = articles_to_blocks(tokenizer, pools.train[:10], 32)
    model = build_model(ModelConfig(preset="micro"), tokenizer, 32)
    before = evaluate(model, blocks[:32], tokenizer)
    train_local(model, blocks, TrainConfig(local_steps=20, batch_size=8), seed=0)
    after = evaluate(model, blocks[:32], tokenizer)
    assert after.loss < before.loss
    assert math.isfinite(after.bits_per_byte)


def test_non_finite_loss_raises(pools, tokenizer):
    blocks = articles_to_blocks(tokenizer, pools.train[:2], 32)
    model = build_model(ModelConfig(preset="micro"), tokenizer, 32)
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="Non-finite"):
        train_local(model, blocks, TrainConfig(local_steps=2, batch_size=len(blocks)), 0)


def test_empty_partition_trains_nothing(tokenizer):
    model = build_model(ModelConfig(preset="micro"), tokenizer, 32)
    result = train_local(model, torch.empty((0, 32), dtype=torch.long), TrainConfig(), 0)
    assert result.tokens == 0
    assert result.steps == 0
    assert math.isnan(evaluate(model, torch.empty((0, 32), dtype=torch.long), tokenizer).loss)


def test_gpt2_tokenizer_offline_message():
    # The hub client reads HF_HUB_OFFLINE at import, so check in a fresh process.
    code = "from linguachain.task.tokenizer import load_gpt2_tokenizer; load_gpt2_tokenizer()"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "tokenizer.name='bpe'" in result.stderr
