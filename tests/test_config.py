"""Tests of the typed run config shared by flwr run and Hydra."""

from __future__ import annotations

import tomllib

import pytest

from conftest import REPO_ROOT
from linguachain.config import (
    ConfigError,
    RunConfig,
    flatten,
    from_nested,
    load_config,
    nest_dotted_keys,
)


def test_defaults_match_pyproject_run_config():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    run_config = pyproject["tool"]["flwr"]["app"]["config"]
    assert run_config == flatten(RunConfig())


def test_misspelled_key_names_nearest():
    with pytest.raises(ConfigError) as error:
        load_config({"train.lrr": 0.1})
    assert "'train.lrr'" in str(error.value)
    assert "Did you mean 'train.lr'?" in str(error.value)


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError) as error:
        load_config({"train.rounds": "three"})
    assert "'train.rounds'" in str(error.value)
    assert "expected int" in str(error.value)


def test_int_accepted_for_float():
    assert load_config({"train.lr": 1}).train.lr == 1.0


def test_bool_rejected_for_int():
    with pytest.raises(ConfigError, match="train.rounds"):
        load_config({"train.rounds": True})


def test_value_outside_choices_lists_allowed():
    with pytest.raises(ConfigError) as error:
        load_config({"model.preset": "huge"})
    assert "micro, tiny, small, gpt2" in str(error.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("train.rounds", 0),
        ("train.lr", -1.0),
        ("data.block_size", 2),
        ("data.alpha", 0.0),
        ("federation.fraction_train", 1.5),
        ("tokenizer.public_fraction", 1.0),
    ],
)
def test_out_of_range_values_rejected(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config({key: value})


def test_nested_config_goes_through_same_schema():
    config = from_nested({"model": {"preset": "micro"}, "train": {"lr": 0.01}})
    assert config.model.preset == "micro"
    assert config.train.lr == 0.01
    with pytest.raises(ConfigError, match="Did you mean 'model.preset'"):
        from_nested({"model": {"prest": "micro"}})


def test_dotted_keys_nest_by_group():
    values = {"model.preset": "micro", "train.lr": 0.01, "train.rounds": 2}
    nested = nest_dotted_keys(values)
    assert nested == {"model": {"preset": "micro"}, "train": {"lr": 0.01, "rounds": 2}}
    assert from_nested(nested) == load_config(values)
    with pytest.raises(ConfigError, match="'lr'"):
        nest_dotted_keys({"lr": 0.01})


def test_secure_aggregation_defaults_to_ckks():
    assert load_config({}).secure_aggregation.scheme == "ckks"


@pytest.mark.parametrize(
    "values, key",
    [
        ({"secure_aggregation.scheme": "rsa"}, "secure_aggregation.scheme"),
        ({"secure_aggregation.min_replies": 5}, "secure_aggregation.min_replies"),
        (
            {"federation.num_nodes": 1, "secure_aggregation.min_replies": 1},
            "secure_aggregation.ckks_decryptors",
        ),
        ({"secure_aggregation.paillier_modulus_bits": 1023}, "paillier_modulus_bits"),
        ({"secure_aggregation.precision_bits": 0}, "secure_aggregation.precision_bits"),
        ({"secure_aggregation.max_payload_mb": 0.0}, "secure_aggregation.max_payload_mb"),
    ],
)
def test_secure_aggregation_values_rejected(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(values)


def test_one_node_runs_without_secure_aggregation():
    config = load_config({"federation.num_nodes": 1, "secure_aggregation.scheme": "none"})
    assert config.federation.num_nodes == 1


@pytest.mark.parametrize("quorum", ["1/2", "3/2", "two thirds", "2/0"])
def test_consensus_quorum_below_two_thirds_rejected(quorum):
    with pytest.raises(ConfigError) as error:
        load_config({"consensus.quorum": quorum})
    assert "'consensus.quorum'" in str(error.value)
