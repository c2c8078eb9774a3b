"""A real Flower simulation of FLTrust over CKKS with one sign-flip attacker."""

from __future__ import annotations

import json

import pytest

from linguachain.client_app.attacks import malicious_partitions
from linguachain.config import nest_dotted_keys
from linguachain.sweep import run_job

NUM_NODES = 3
FRACTION = 0.34


@pytest.fixture(scope="module")
def encrypted_fltrust_run(micro_overrides, tmp_path_factory):
    """Run 3 micro nodes x 1 round; one sign-flip attacker; FLTrust over CKKS."""
    nested = nest_dotted_keys(micro_overrides)
    nested["federation"].update({"num_nodes": NUM_NODES, "fraction_evaluate": 0.0})
    nested["train"].update({"rounds": 1, "local_steps": 4})
    nested["output"].update({"save_model": False})
    nested["attack"] = {"kind": "sign_flip", "fraction": FRACTION}
    nested["aggregation"] = {"name": "fltrust"}
    nested["secure_aggregation"] = {"scheme": "ckks", "ckks_parameters": "scoring"}
    nested["consensus"] = {"enabled": False}
    folder = tmp_path_factory.mktemp("secure-fltrust")
    summary = run_job(nested, folder)
    rows = [
        json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]
    return summary, rows


def test_run_records_trust_scores(encrypted_fltrust_run):
    _, rows = encrypted_fltrust_run
    assert len(rows) == 2
    scores = rows[1]["robustness_scores"]
    assert sorted(scores) == [f"partition-{i}" for i in range(NUM_NODES)]
    assert all(0.0 <= value <= 1.0 for value in scores.values())


def test_attacker_gets_zero_trust(encrypted_fltrust_run):
    _, rows = encrypted_fltrust_run
    (attacker,) = malicious_partitions(NUM_NODES, FRACTION, 7)
    scores = rows[1]["robustness_scores"]
    assert scores[f"partition-{attacker}"] == 0.0
    honest = [scores[f"partition-{i}"] for i in range(NUM_NODES) if i != attacker]
    assert all(value > 0.0 for value in honest)


def test_round_committed_a_new_model(encrypted_fltrust_run):
    _, rows = encrypted_fltrust_run
    assert rows[1]["committed"] is True
    assert rows[1]["model_hash"] != rows[0]["model_hash"]
    assert "rejected" not in rows[1]
