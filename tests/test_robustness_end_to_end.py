"""A real Flower simulation with a backdoor attacker, median aggregation and DP."""

from __future__ import annotations

import json

import pytest

from linguachain.client_app.attacks import malicious_partitions
from linguachain.config import nest_dotted_keys
from linguachain.ledger.chain import Ledger
from linguachain.server_app.run_data import load_run
from linguachain.sweep import run_job


@pytest.fixture(scope="module")
def attacked_run(micro_overrides, tmp_path_factory):
    """Run 3 micro nodes x 2 rounds; one backdoor attacker; median; DP on."""
    nested = nest_dotted_keys(micro_overrides)
    nested["federation"].update({"num_nodes": 3, "fraction_evaluate": 0.0})
    nested["train"].update({"local_steps": 4})
    nested["output"].update({"save_model": False})
    nested["attack"] = {"kind": "backdoor", "fraction": 0.34, "backdoor_prompts": 8}
    nested["aggregation"] = {"name": "median"}
    nested["secure_aggregation"] = {"scheme": "none"}
    nested["privacy"] = {"enabled": True, "clip_norm": 0.5, "noise_multiplier": 0.05}
    folder = tmp_path_factory.mktemp("attacked")
    summary = run_job(nested, folder)
    rows = [
        json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]
    return folder, summary, rows


def test_scores_recorded_per_node(attacked_run):
    _, _, rows = attacked_run
    for row in rows[1:]:
        scores = row["robustness_scores"]
        assert sorted(scores) == ["partition-0", "partition-1", "partition-2"]
        assert all(0.0 <= value <= 1.0 for value in scores.values())
        assert row["rejected_updates"] == {}


def test_dp_clips_every_update(attacked_run):
    _, _, rows = attacked_run
    attacker = next(iter(malicious_partitions(3, 0.34, 7)))
    for row in rows[1:]:
        norms = row["update_norms"]
        # Node noise: 0.05 * 0.5 / sqrt(3) per coordinate on about 0.23M values.
        assert all(value < 10.0 for value in norms.values())
        assert f"partition-{attacker}" in norms


def test_epsilon_reported_per_round_and_node(attacked_run):
    _, _, rows = attacked_run
    first, second = rows[1]["privacy"], rows[2]["privacy"]
    assert 0 < first["epsilon"] < second["epsilon"]
    assert sorted(second["per_node"]) == ["partition-0", "partition-1", "partition-2"]
    assert all(node["rounds"] == 2 for node in second["per_node"].values())
    assert second["delta"] == 1e-5
    assert (
        rows[2]["epsilon"]["partition-0"]
        == second["per_node"]["partition-0"]["epsilon"]
    )


def test_backdoor_success_measured_each_round(attacked_run):
    _, _, rows = attacked_run
    for row in rows:
        assert 0.0 <= row["backdoor_success"] <= 1.0
        assert 0.0 <= row["backdoor_token_accuracy"] <= 1.0


def test_version_blocks_carry_epsilon_and_scores(attacked_run):
    folder, summary, rows = attacked_run
    ledger = Ledger.open(folder / "ledger.db")
    versions = ledger.model_versions()
    report = ledger.verify()
    ledger.close()
    assert report.valid
    last = json.loads(versions[-1].metrics)
    assert versions[-1].model_hash == rows[-1]["model_hash"]
    assert last["privacy"]["epsilon"] == pytest.approx(rows[-1]["privacy"]["epsilon"])
    assert sorted(last["robustness_scores"]) == [
        "partition-0",
        "partition-1",
        "partition-2",
    ]


def test_run_report_reads_scores_and_epsilon(attacked_run):
    folder, _, rows = attacked_run
    run = load_run(folder)
    robustness = run.robustness()
    epsilon = run.epsilon()
    assert robustness is not None
    assert epsilon is not None
    assert sorted(robustness[2]) == ["partition-0", "partition-1", "partition-2"]
    assert epsilon[2]["partition-1"] == rows[2]["epsilon"]["partition-1"]
