"""Encrypted federated runs in Flower's simulation engine on WikiText-2 (micro)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from linguachain.config import from_nested, nest_dotted_keys
from linguachain.ledger.chain import Ledger
from linguachain.sweep import run_job


def read_metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def run(overrides: dict, folder: Path) -> tuple[dict, list[dict]]:
    summary = run_job(nest_dotted_keys(overrides), folder)
    return summary, read_metrics(folder)


@pytest.fixture(scope="module")
def plaintext_run(micro_overrides, tmp_path_factory):
    # The plaintext reference needs no consensus, because nodes seed their training
    # per round and ckks_run asserts that consensus committed both of its rounds.
    folder = tmp_path_factory.mktemp("plaintext")
    overrides = {
        **micro_overrides,
        "secure_aggregation.scheme": "none",
        "consensus.enabled": False,
    }
    return folder, *run(overrides, folder)


@pytest.fixture(scope="module")
def ckks_run(micro_run):
    folder, summary = micro_run
    config = from_nested(yaml.safe_load((folder / "config.yaml").read_text()))
    # The shared micro run must encrypt, or the comparison with plaintext proves nothing.
    assert config.secure_aggregation.scheme == "ckks"
    return folder, summary, read_metrics(folder)


def test_ckks_run_ends_at_plaintext_model(plaintext_run, ckks_run):
    plain = load_file(plaintext_run[0] / "model" / "model.safetensors")
    encrypted = load_file(ckks_run[0] / "model" / "model.safetensors")
    assert sorted(plain) == sorted(encrypted)
    for name in plain:
        # Two rounds of training from starts that differ by CKKS noise (about
        # 1e-11) and float32 rounding stay far inside this tolerance.
        np.testing.assert_allclose(encrypted[name], plain[name], rtol=0, atol=1e-4)
    assert ckks_run[1]["committed_rounds"] == 2


def test_ckks_metrics_have_phases(ckks_run):
    _, summary, rows = ckks_run
    for row in rows[1:]:
        assert row["committed"] is True
        assert row["nodes"] == 2
        assert set(row["seconds"]) == {"train", "aggregate", "evaluate", "ledger"}
        assert set(row["subphase_seconds"]) >= {
            "train.encrypt", "aggregate.sum", "aggregate.decrypt"
        }
        assert 32 <= row["bytes_per_param"] <= 33
        assert row["rejected_replies"] == 0
    assert summary["ledger"]["valid"]


def test_ckks_kits_private_and_out_of_ledger(ckks_run):
    folder = ckks_run[0]
    kit_dir = folder / "kits"
    for kit in ("server", "node-0", "node-1"):
        assert stat.S_IMODE((kit_dir / kit).stat().st_mode) == 0o700
    secret = (kit_dir / "node-0" / "ckks_secret_context.bin").read_bytes()
    ledger_bytes = (folder / "ledger.db").read_bytes()
    assert secret[1000:1064] not in ledger_bytes
    assert Ledger.open(folder / "ledger.db").verify().valid


def test_paillier_run_commits(micro_overrides, tmp_path):
    overrides = {
        **micro_overrides,
        "train.rounds": 1,
        "output.save_model": False,
        "secure_aggregation.scheme": "paillier",
        "secure_aggregation.paillier_modulus_bits": 1024,
    }
    summary, rows = run(overrides, tmp_path)
    assert rows[1]["committed"] is True
    assert rows[1]["nodes"] == 2
    assert rows[1]["bytes_per_param"] < 8
    assert set(rows[1]["subphase_seconds"]) >= {
        "train.encrypt", "aggregate.sum", "aggregate.decrypt"
    }
    assert summary["final_test_perplexity"] < summary["initial_test_perplexity"]
    share = json.loads(
        (tmp_path / "kits" / "node-0" / "paillier_key_share.json").read_text()
    )
    assert share["share"].encode() not in (tmp_path / "ledger.db").read_bytes()
