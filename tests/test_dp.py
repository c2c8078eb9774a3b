"""Node-level differential privacy: clipping bound, noise scale, accounting, config."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

import numpy as np
import pytest
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)

from linguachain.config import ConfigError, load_config
from linguachain.privacy.dp import (
    PrivacyAccounting,
    effective_noise_multipliers,
    node_noise_std,
    privatize_update,
)
from linguachain.privacy.updates import clip_update, update_norm


def random_update(rng: np.random.Generator, scale: float) -> OrderedDict:
    return OrderedDict(
        [
            ("a", rng.normal(0, scale, (64, 32)).astype(np.float32)),
            ("b", rng.normal(0, scale, (100,)).astype(np.float32)),
        ]
    )


@pytest.mark.parametrize("clip_norm", [1e-3, 0.5, 1.0, 7.0])
def test_clipping_bounds_every_norm(clip_norm):
    rng = np.random.default_rng(0)
    for scale in (1e-5, 1e-3, 0.1, 1.0, 100.0):
        clipped, norm = clip_update(random_update(rng, scale), clip_norm)
        assert update_norm(clipped) <= clip_norm + 1e-6
        if norm <= clip_norm:
            assert update_norm(clipped) == pytest.approx(norm, rel=1e-5)


def test_clipping_keeps_direction():
    rng = np.random.default_rng(1)
    update = random_update(rng, 1.0)
    clipped, norm = clip_update(update, 0.5)
    ratio = clipped["a"] / update["a"]
    assert np.allclose(ratio, 0.5 / norm, rtol=1e-4)


def test_node_noise_std_matches_formula():
    rng = np.random.default_rng(2)
    clip_norm, sigma, nodes = 0.8, 1.3, 5
    zero = OrderedDict([("w", np.zeros(400_000, dtype=np.float64))])
    noisy, _ = privatize_update(zero, clip_norm, sigma, nodes, rng)
    expected = sigma * clip_norm / math.sqrt(nodes)
    assert node_noise_std(clip_norm, sigma, nodes) == pytest.approx(expected)
    assert float(np.std(noisy["w"])) == pytest.approx(expected, rel=0.1)
    assert abs(float(np.mean(noisy["w"]))) < expected * 0.01


def test_summed_noise_std_is_sigma_times_clip():
    rng = np.random.default_rng(3)
    clip_norm, sigma, nodes = 2.0, 0.7, 8
    zero = OrderedDict([("w", np.zeros(100_000, dtype=np.float64))])
    total = sum(
        privatize_update(zero, clip_norm, sigma, nodes, rng)[0]["w"]
        for _ in range(nodes)
    )
    assert float(np.std(total)) == pytest.approx(sigma * clip_norm, rel=0.1)


def test_noise_is_added_after_clipping():
    rng = np.random.default_rng(4)
    update = random_update(rng, 10.0)
    noisy, norm = privatize_update(update, 1.0, 0.0, 4, rng)
    assert norm > 1.0
    assert update_norm(noisy) == pytest.approx(1.0, rel=1e-5)


def test_equal_weights_give_sigma():
    weights = {f"n{i}": 100.0 for i in range(5)}
    multipliers = effective_noise_multipliers(1.5, 5, weights, linear=True)
    assert all(m == pytest.approx(1.5) for m in multipliers.values())


def test_dropped_nodes_lower_the_multiplier():
    weights = {f"n{i}": 1.0 for i in range(3)}
    multipliers = effective_noise_multipliers(2.0, 5, weights, linear=True)
    assert multipliers["n0"] == pytest.approx(2.0 * math.sqrt(3 / 5))


def test_heavier_node_gets_less_privacy():
    multipliers = effective_noise_multipliers(1.0, 2, {"big": 3.0, "small": 1.0}, True)
    assert multipliers["big"] < multipliers["small"]


def test_nonlinear_rule_uses_local_multiplier():
    multipliers = effective_noise_multipliers(
        2.0, 4, {"a": 1.0, "b": 5.0}, linear=False
    )
    assert multipliers == {"a": 1.0, "b": 1.0}


def test_accounting_matches_flower_rdp_accountant():
    accounting = PrivacyAccounting(
        noise_multiplier=1.2, delta=1e-5, population=4, linear=True
    )
    weights = {f"n{i}": 10.0 for i in range(4)}
    for _ in range(3):
        report = accounting.record_round(4, weights)
    reference = RdpAccountant(
        PrivacyConfig(
            target_delta=1e-5,
            population_size=4,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    reference.compose(GaussianPrivacyEvent(1.2, 1, 4), count=3)
    assert report["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert report["per_node"]["n0"]["rounds"] == 3
    assert report["epsilon_vs_server"] > report["epsilon"]


def test_epsilon_grows_with_rounds_and_falls_with_sigma():
    def epsilon(sigma: float, rounds: int) -> float:
        accounting = PrivacyAccounting(sigma, 1e-5, population=3, linear=True)
        weights = {"a": 1.0, "b": 1.0, "c": 1.0}
        for _ in range(rounds):
            report = accounting.record_round(3, weights)
        return float(report["epsilon"])

    assert epsilon(1.0, 2) < epsilon(1.0, 4)
    assert epsilon(2.0, 3) < epsilon(1.0, 3)


def test_zero_sigma_gives_infinite_epsilon():
    accounting = PrivacyAccounting(0.0, 1e-5, population=2, linear=True)
    report = accounting.record_round(2, {"a": 1.0, "b": 1.0})
    assert math.isinf(report["epsilon"])


@pytest.mark.parametrize(
    "key,value",
    [
        ("privacy.clip_norm", 0.0),
        ("privacy.clip_norm", -1.0),
        ("privacy.clip_norm", math.inf),
        ("privacy.clip_norm", math.nan),
        ("privacy.noise_multiplier", -0.1),
        ("privacy.noise_multiplier", math.inf),
        ("privacy.delta", 0.0),
        ("privacy.delta", 1.0),
    ],
)
def test_bad_privacy_config_fails_at_load(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config({"privacy.enabled": True, key: value})


def test_zero_sigma_warns_no_privacy(caplog):
    with caplog.at_level(logging.WARNING, logger="linguachain.config"):
        load_config({"privacy.enabled": True, "privacy.noise_multiplier": 0.0})
    assert "no guarantee" in caplog.text
