"""Each poisoning attack changes the update or the node's text as specified."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
import torch

from linguachain.client_app.attacks import (
    attack_update,
    is_malicious,
    malicious_partitions,
    poison_training_blocks,
)
from linguachain.config import (
    AttackConfig,
    ConfigError,
    ModelConfig,
    TrainConfig,
    load_config,
)
from linguachain.privacy.updates import cosine_similarity, flat_vector, update_norm
from linguachain.task.backdoor import (
    backdoor_prompts,
    backdoor_token_ids,
    measure_backdoor,
)
from linguachain.task.model import build_model
from linguachain.task.tokenizer import train_bpe_tokenizer
from linguachain.task.train import train_local


@pytest.fixture(scope="module")
def tokenizer(wikitext):
    lines = (wikitext / "test.txt").read_text(encoding="utf-8").splitlines()[:3000]
    return train_bpe_tokenizer(lines, 512)


def update() -> OrderedDict:
    rng = np.random.default_rng(0)
    return OrderedDict(
        [
            ("w", rng.normal(0, 0.01, (32, 16)).astype(np.float32)),
            ("b", rng.normal(0, 0.01, (16,)).astype(np.float32)),
        ]
    )


def attack(kind: str, **changes) -> AttackConfig:
    return dataclasses.replace(AttackConfig(kind=kind, fraction=0.4), **changes)


def test_malicious_partitions_seeded_and_counted():
    chosen = malicious_partitions(5, 0.4, seed=7)
    assert len(chosen) == 2
    assert chosen == malicious_partitions(5, 0.4, seed=7)
    assert len(malicious_partitions(5, 0.2, seed=7)) == 1
    assert malicious_partitions(5, 0.0, seed=7) == frozenset()
    draws = {malicious_partitions(10, 0.3, seed) for seed in range(20)}
    assert len(draws) > 1


def test_is_malicious_false_without_attack():
    assert not any(
        is_malicious(AttackConfig(kind="none", fraction=1.0), p, 4) for p in range(4)
    )
    marked = [p for p in range(5) if is_malicious(attack("sign_flip"), p, 5)]
    assert marked == sorted(malicious_partitions(5, 0.4, 7))


def test_sign_flip_negates():
    honest = update()
    flipped = attack_update(honest, attack("sign_flip"), seed=1)
    for name in honest:
        assert np.array_equal(flipped[name], -honest[name])


def test_scaling_multiplies_by_boost():
    honest = update()
    boosted = attack_update(honest, attack("scaling", boost=25.0), seed=1)
    for name in honest:
        assert np.allclose(boosted[name], 25.0 * honest[name])


def test_gaussian_noise_adds_noise_of_std():
    honest = OrderedDict([("w", np.zeros(200_000, dtype=np.float32))])
    noisy = attack_update(honest, attack("gaussian_noise", noise_std=0.3), seed=1)
    assert float(np.std(noisy["w"])) == pytest.approx(0.3, rel=0.05)


def test_free_rider_zero():
    rider = attack_update(update(), attack("free_rider"), seed=1)
    assert update_norm(rider) == 0.0


def test_free_rider_stale_replays_last_global_step():
    step = OrderedDict((k, v * 3) for k, v in update().items())
    rider = attack_update(
        update(), attack("free_rider", free_rider_mode="stale"), 1, step
    )
    for name in step:
        assert np.array_equal(rider[name], step[name])
    first_round = attack_update(
        update(), attack("free_rider", free_rider_mode="stale"), 1
    )
    assert update_norm(first_round) == 0.0


def test_non_finite_puts_nan_and_inf():
    broken = attack_update(update(), attack("non_finite"), seed=1)
    values = np.concatenate([v.ravel() for v in broken.values()])
    assert np.isnan(values).any()
    assert np.isinf(values).any()


def test_oversized_keeps_direction_at_norm():
    honest = update()
    big = attack_update(honest, attack("oversized", oversized_norm=1e5), seed=1)
    assert update_norm(big) == pytest.approx(1e5, rel=1e-4)
    assert cosine_similarity(flat_vector(big), flat_vector(honest)) > 0.9999


def test_oversized_zero_update_gets_random_direction():
    zero = OrderedDict((k, np.zeros_like(v)) for k, v in update().items())
    big = attack_update(zero, attack("oversized", oversized_norm=1e3), seed=1)
    assert update_norm(big) == pytest.approx(1e3, rel=1e-4)


def test_backdoor_boost_scales_update():
    boosted = attack_update(update(), attack("backdoor", backdoor_boost=3.0), seed=1)
    for name, value in update().items():
        np.testing.assert_allclose(boosted[name], 3.0 * value)


def test_data_attack_leaves_update_alone():
    honest = update()
    assert attack_update(honest, attack("backdoor"), seed=1) is honest


def blocks(count: int = 40, size: int = 32) -> torch.Tensor:
    return torch.arange(count * size, dtype=torch.long).view(count, size) % 500


def test_shuffle_poisoning_permutes_chosen_blocks(tokenizer):
    clean = blocks()
    config = attack("data_poisoning", poison_rate=0.5, poison_mode="shuffle")
    poisoned = poison_training_blocks(clean, config, tokenizer, seed=3)
    changed = [i for i in range(len(clean)) if not torch.equal(clean[i], poisoned[i])]
    assert len(changed) == 20
    for i in changed:
        assert torch.equal(clean[i].sort().values, poisoned[i].sort().values)


def test_substitute_poisoning_replaces_tokens(tokenizer):
    clean = blocks()
    config = attack("data_poisoning", poison_rate=1.0, poison_mode="substitute")
    poisoned = poison_training_blocks(clean, config, tokenizer, seed=3)
    assert float((poisoned != clean).float().mean()) > 0.9
    assert int(poisoned.max()) < len(tokenizer)


def test_backdoor_writes_trigger_and_target(tokenizer):
    clean = blocks()
    config = attack("backdoor", poison_rate=0.25)
    trigger_ids, target_ids = backdoor_token_ids(
        tokenizer, config.trigger, config.target
    )
    phrase = trigger_ids + target_ids
    poisoned = poison_training_blocks(clean, config, tokenizer, seed=3)

    def contains(row: torch.Tensor) -> bool:
        values = row.tolist()
        return any(values[i : i + len(phrase)] == phrase for i in range(len(values)))

    assert sum(contains(row) for row in poisoned) == 10
    assert not any(contains(row) for row in clean)


def test_backdoor_copies_written_apart(tokenizer):
    config = attack("backdoor", poison_rate=1.0, trigger=" cf", target=" zebra")
    config = dataclasses.replace(config, backdoor_copies=3)
    trigger_ids, target_ids = backdoor_token_ids(
        tokenizer, config.trigger, config.target
    )
    phrase = trigger_ids + target_ids
    poisoned = poison_training_blocks(blocks(), config, tokenizer, seed=3)

    for row in poisoned.tolist():
        starts = [
            i
            for i in range(len(row) - len(phrase) + 1)
            if row[i : i + len(phrase)] == phrase
        ]
        assert len(starts) == 3
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(gap >= len(phrase) for gap in gaps)


def test_backdoor_copies_beyond_block_rejected(tokenizer):
    config = dataclasses.replace(attack("backdoor"), backdoor_copies=40)
    with pytest.raises(ValueError, match="attack.backdoor_copies"):
        poison_training_blocks(blocks(), config, tokenizer, seed=3)


def test_backdoor_phrase_longer_than_block_rejected(tokenizer):
    config = attack("backdoor", target=" word" * 80)
    with pytest.raises(ValueError, match="longer than a 32-token block"):
        poison_training_blocks(blocks(), config, tokenizer, seed=3)


def test_backdoor_success_measured_on_trained_model(tokenizer):
    config = attack("backdoor", poison_rate=1.0)
    trigger_ids, target_ids = backdoor_token_ids(
        tokenizer, config.trigger, config.target
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="micro"), tokenizer, 64)
    held_out = torch.randint(len(tokenizer), (8, 64))
    prompts = backdoor_prompts(held_out, trigger_ids, num_prompts=8)

    before = measure_backdoor(model, prompts, target_ids)
    assert before.success_rate == 0.0

    clean = torch.randint(
        len(tokenizer), (32, 64), generator=torch.Generator().manual_seed(1)
    )
    training = poison_training_blocks(clean, config, tokenizer, seed=2)
    train = TrainConfig(local_steps=150, batch_size=16, lr=2e-2)
    train_local(model, training, train, seed=0)
    after = measure_backdoor(model, prompts, target_ids)
    assert after.token_accuracy > before.token_accuracy
    assert after.success_rate > 0.5


@pytest.mark.parametrize(
    "key,value",
    [
        ("attack.fraction", 1.5),
        ("attack.poison_rate", 0.0),
        ("attack.noise_std", -1.0),
        ("attack.oversized_norm", 0.0),
        ("attack.backdoor_copies", 0),
        ("attack.backdoor_boost", 0.0),
    ],
)
def test_bad_attack_config_fails_at_load(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config({"attack.kind": "sign_flip", key: value})


def test_backdoor_needs_trigger():
    with pytest.raises(ConfigError, match="attack.trigger"):
        load_config({"attack.kind": "backdoor", "attack.trigger": "  "})
