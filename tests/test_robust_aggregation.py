"""Robust rules on planted outliers: screening, preconditions, scores, norm bounds."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from linguachain.config import ConfigError, load_config
from linguachain.strategies.recording import build_strategy
from linguachain.strategies.screening import minimum_updates

SHAPES = {"layer.weight": (8, 16), "layer.bias": (16,)}


def global_weights() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return OrderedDict(
        (name, rng.normal(0, 1, shape).astype(np.float32))
        for name, shape in SHAPES.items()
    )


def honest_direction() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return OrderedDict(
        (name, rng.normal(0, 0.1, shape).astype(np.float32))
        for name, shape in SHAPES.items()
    )


def reply(
    partition: int, weights: dict[str, np.ndarray], examples: int = 100
) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                OrderedDict((k, Array(np.asarray(v))) for k, v in weights.items())
            ),
            "metrics": MetricRecord(
                {"num-examples": examples, "train-loss": 1.0, "partition-id": partition}
            ),
        }
    )
    metadata = Metadata(
        run_id=1,
        message_id=f"m{partition}",
        src_node_id=100 + partition,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    return Message(content=content, metadata=metadata)


def planted_round(num_honest: int, outlier: str = "flip") -> tuple[list[Message], dict]:
    """Honest updates near one direction plus one outlier at partition id 0."""
    base, direction = global_weights(), honest_direction()
    rng = np.random.default_rng(2)
    replies = []
    for partition in range(1, num_honest + 1):
        update = {
            k: v + rng.normal(0, 0.01, v.shape).astype(np.float32)
            for k, v in direction.items()
        }
        replies.append(reply(partition, {k: base[k] + update[k] for k in base}))
    if outlier == "flip":
        bad = {k: base[k] - 20 * direction[k] for k in base}
    elif outlier == "nan":
        bad = {k: base[k].copy() for k in base}
        bad["layer.bias"][3] = np.nan
    else:
        raise ValueError(outlier)
    replies.insert(0, reply(0, bad))
    return replies, direction


def cosine(a: dict, b: dict) -> float:
    x = np.concatenate([np.ravel(a[k]) for k in SHAPES]).astype(np.float64)
    y = np.concatenate([np.ravel(b[k]) for k in SHAPES]).astype(np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


PLAINTEXT = {"secure_aggregation.scheme": "none"}


def aggregate(overrides: dict, replies: list[Message]):
    config = load_config({**PLAINTEXT, **overrides})
    strategy = build_strategy(config)
    base = global_weights()
    arrays = ArrayRecord(OrderedDict((k, Array(v)) for k, v in base.items()))
    strategy.set_global_weights(arrays)
    if hasattr(strategy, "current_arrays"):
        # FedAvgM takes its momentum step from the model that start() set.
        strategy.current_arrays = arrays
    arrays, _ = strategy.aggregate_train(1, replies)
    report = strategy.round_reports[1]
    if arrays is None:
        return None, report
    update = {k: arrays[k].numpy() - base[k] for k in base}
    return update, report


ROBUST = [
    ({"aggregation.name": "krum", "aggregation.num_malicious": 1}, 6),
    ({"aggregation.name": "multikrum", "aggregation.num_malicious": 1}, 6),
    ({"aggregation.name": "median"}, 6),
    ({"aggregation.name": "trimmed_mean", "aggregation.trim_fraction": 0.2}, 6),
    ({"aggregation.name": "bulyan", "aggregation.num_malicious": 1}, 7),
    ({"aggregation.name": "norm_bound"}, 6),
    ({"aggregation.name": "norm_bound", "aggregation.norm_bound": 0.5}, 6),
]


@pytest.mark.parametrize("overrides,num_nodes", ROBUST)
def test_robust_rule_resists_flipped_outlier(overrides, num_nodes):
    replies, direction = planted_round(num_nodes - 1)
    update, report = aggregate(
        {**overrides, "federation.num_nodes": num_nodes}, replies
    )
    assert update is not None
    assert cosine(update, direction) > 0.5
    assert report.scores["partition-0"] == 0.0
    honest = [report.scores[f"partition-{i}"] for i in range(1, num_nodes)]
    assert min(honest) > 0.5


def test_fedavg_is_dragged_by_flipped_outlier():
    replies, direction = planted_round(5)
    update, report = aggregate({"federation.num_nodes": 6}, replies)
    assert cosine(update, direction) < 0
    assert report.scores["partition-0"] > 0.9


def test_krum_selects_no_outlier():
    replies, direction = planted_round(5)
    overrides = {"aggregation.name": "krum", "aggregation.num_malicious": 1}
    update, _ = aggregate({**overrides, "federation.num_nodes": 6}, replies)
    assert cosine(update, direction) > 0.99


def test_norm_bound_clips_outlier_to_bound():
    replies, _ = planted_round(5)
    overrides = {"aggregation.name": "norm_bound", "aggregation.norm_bound": 0.5}
    _, report = aggregate({**overrides, "federation.num_nodes": 6}, replies)
    assert report.norm_bound == 0.5
    assert report.norms["partition-0"] > 10


@pytest.mark.parametrize(
    "name",
    ["fedavg", "fedavgm", "krum", "multikrum", "median", "trimmed_mean", "bulyan"],
)
def test_non_finite_update_rejected_before_aggregation(name):
    replies, direction = planted_round(7, outlier="nan")
    overrides = {"aggregation.name": name, "aggregation.num_malicious": 1}
    if name in ("fedavg", "fedavgm", "median", "trimmed_mean"):
        overrides["aggregation.num_malicious"] = 0
    update, report = aggregate({**overrides, "federation.num_nodes": 8}, replies)
    assert "partition-0" in report.rejected
    assert "NaN" in report.rejected["partition-0"]
    assert all(np.all(np.isfinite(v)) for v in update.values())
    assert cosine(update, direction) > 0.9


def test_oversized_update_rejected_by_max_norm():
    replies, direction = planted_round(3)
    overrides = {"aggregation.max_update_norm": 5.0, "federation.num_nodes": 4}
    update, report = aggregate(overrides, replies)
    assert "max_update_norm" in report.rejected["partition-0"]
    assert cosine(update, direction) > 0.9


def test_mismatched_arrays_rejected():
    replies, _ = planted_round(3)
    base = global_weights()
    replies.append(reply(9, {"layer.weight": base["layer.weight"]}))
    _, report = aggregate({"federation.num_nodes": 5}, replies)
    assert "invalid arrays" in report.rejected["partition-9"]


def test_krum_round_skipped_when_too_few_updates():
    replies, _ = planted_round(3)
    overrides = {"aggregation.name": "krum", "aggregation.num_malicious": 1}
    update, report = aggregate({**overrides, "federation.num_nodes": 5}, replies[:4])
    assert update is None
    assert "needs 5" in report.skipped


@pytest.mark.parametrize(
    "name,f,nodes,needed",
    [
        ("krum", 1, 4, 5),
        ("multikrum", 2, 6, 7),
        ("bulyan", 1, 6, 7),
        ("bulyan", 0, 2, 3),
    ],
)
def test_precondition_rejected_at_load(name, f, nodes, needed):
    overrides = {
        "aggregation.name": name,
        "aggregation.num_malicious": f,
        "federation.num_nodes": nodes,
    }
    with pytest.raises(ConfigError, match=f"= {needed} nodes per round"):
        load_config({**PLAINTEXT, **overrides})
    assert minimum_updates(name, f) == needed


def test_trim_fraction_that_trims_nothing_warns(caplog):
    overrides = {
        "aggregation.name": "trimmed_mean",
        "aggregation.trim_fraction": 0.1,
        "federation.num_nodes": 5,
    }
    with caplog.at_level(logging.WARNING, logger="linguachain.config"):
        load_config({**PLAINTEXT, **overrides})
    assert "trims nothing" in caplog.text


def test_multikrum_select_above_n_minus_f_rejected():
    overrides = {
        "aggregation.name": "multikrum",
        "aggregation.num_malicious": 1,
        "aggregation.multikrum_select": 5,
        "federation.num_nodes": 5,
    }
    with pytest.raises(ConfigError, match="at most n - f = 4"):
        load_config({**PLAINTEXT, **overrides})


@pytest.mark.parametrize("name", ["krum", "median", "trimmed_mean"])
def test_robust_rule_rejected_with_encryption(name):
    overrides = {"aggregation.name": name, "secure_aggregation.scheme": "ckks"}
    with pytest.raises(ConfigError, match="runs on plaintext updates"):
        load_config(overrides)


def test_norm_bound_over_ckks_needs_depth():
    overrides = {
        "aggregation.name": "norm_bound",
        "secure_aggregation.scheme": "ckks",
        "secure_aggregation.ckks_parameters": "sum",
    }
    with pytest.raises(ConfigError, match="aggregation=norm_bound over CKKS"):
        load_config(overrides)


def test_norm_bound_over_paillier_names_alternatives():
    overrides = {
        "aggregation.name": "norm_bound",
        "secure_aggregation.scheme": "paillier",
    }
    with pytest.raises(ConfigError) as error:
        load_config(overrides)
    message = str(error.value)
    assert "ckks_parameters=scoring" in message
    assert "scheme=none" in message
    assert "privacy.clip_norm" in message


def test_norm_bound_over_scoring_ckks_loads():
    overrides = {
        "aggregation.name": "norm_bound",
        "secure_aggregation.scheme": "ckks",
        "secure_aggregation.ckks_parameters": "scoring",
    }
    assert load_config(overrides).aggregation.name == "norm_bound"


def test_fltrust_over_ckks_needs_depth():
    overrides = {
        "aggregation.name": "fltrust",
        "secure_aggregation.scheme": "ckks",
        "secure_aggregation.ckks_parameters": "sum",
    }
    with pytest.raises(ConfigError, match="'sum' has multiplicative depth 0"):
        load_config(overrides)


def test_fltrust_over_paillier_rejected():
    overrides = {"aggregation.name": "fltrust", "secure_aggregation.scheme": "paillier"}
    with pytest.raises(ConfigError, match="scheme=ckks"):
        load_config(overrides)


def test_fltrust_over_scoring_ckks_loads():
    overrides = {
        "aggregation.name": "fltrust",
        "secure_aggregation.scheme": "ckks",
        "secure_aggregation.ckks_parameters": "scoring",
    }
    config = load_config(overrides)
    assert config.aggregation.name == "fltrust"
    assert config.secure_aggregation.ckks_parameters == "scoring"


def test_fltrust_zeroes_flipped_outlier():
    replies, direction = planted_round(5)
    config = load_config(
        {**PLAINTEXT, "aggregation.name": "fltrust", "federation.num_nodes": 6}
    )
    strategy = build_strategy(config)
    strategy.reference_fn = lambda base: direction
    base = global_weights()
    strategy.set_global_weights(
        ArrayRecord(OrderedDict((k, Array(v)) for k, v in base.items()))
    )
    arrays, _ = strategy.aggregate_train(1, replies)
    update = {k: arrays[k].numpy() - base[k] for k in base}
    report = strategy.round_reports[1]
    assert report.scores["partition-0"] == 0.0
    assert min(report.scores[f"partition-{i}"] for i in range(1, 6)) > 0.9
    assert cosine(update, direction) > 0.99
    norm = np.sqrt(
        sum(float(np.sum(v.astype(np.float64) ** 2)) for v in update.values())
    )
    reference = np.sqrt(
        sum(float(np.sum(v.astype(np.float64) ** 2)) for v in direction.values())
    )
    assert norm <= reference * (1 + 1e-4)
