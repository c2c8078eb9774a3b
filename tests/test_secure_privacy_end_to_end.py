"""A real Flower simulation: FLTrust over CKKS with node-side DP and consensus.

Three micro nodes train two rounds; one of them flips the sign of its update.
The run checks that epsilon is reported per node on the encrypted path, that the
data blocks commit each node's trust score and epsilon, and that the chain rule
slashes the attacker after two zero scores.
"""

from __future__ import annotations

import json

import pytest

from linguachain.client_app.attacks import malicious_partitions
from linguachain.ledger.chain import Ledger
from linguachain.ledger.transactions import get_slash_amount
from linguachain.sweep import run_job

NUM_NODES = 3
FRACTION = 0.34
STAKE = 1_000_000


@pytest.fixture(scope="module")
def private_run(micro_overrides, tmp_path_factory):
    """Run 3 nodes x 2 rounds of encrypted FLTrust with DP and gated commits."""
    nested: dict = {}
    for key, value in micro_overrides.items():
        group, name = key.split(".", 1)
        nested.setdefault(group, {})[name] = value

    nested["federation"].update({"num_nodes": NUM_NODES, "fraction_evaluate": 0.0})
    nested["train"].update({"rounds": 2, "local_steps": 4})
    nested["data"].update({"eval_blocks": 32})
    nested["output"].update({"save_model": False})
    nested["attack"] = {"kind": "sign_flip", "fraction": FRACTION}
    nested["aggregation"] = {"name": "fltrust"}
    nested["secure_aggregation"] = {"scheme": "ckks", "ckks_parameters": "scoring"}
    nested["privacy"] = {
        "enabled": True,
        "clip_norm": 1.0,
        "noise_multiplier": 0.01,
    }
    nested["consensus"] = {
        "vdf_iterations": 500,
        "pow_difficulty_bits": 4,
        # The validators' loss check is not under test here.
        "loss_tolerance": 10.0,
        "initial_stake": STAKE,
        "zero_score_rounds": 2,
        "zero_score_slash_basis_points": 1_000,
    }

    folder = tmp_path_factory.mktemp("secure-private")
    run_job(nested, folder)
    rows = [
        json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]
    ledger = Ledger.open(folder / "ledger.db")
    data_blocks = [
        json.loads(block.payload) for block in ledger.blocks() if block.kind == "data"
    ]
    stakes = {account.account: account.stake for account in ledger.accounts()}
    report = ledger.verify()
    ledger.close()
    return rows, data_blocks, stakes, report


def test_epsilon_per_round_and_node(private_run):
    rows, _, _, _ = private_run
    assert len(rows) == 3
    keys = [f"partition-{i}" for i in range(NUM_NODES)]
    for row in rows[1:]:
        assert sorted(row["epsilon"]) == keys
        assert all(0 < value < float("inf") for value in row["epsilon"].values())
        assert row["privacy"]["noisy_nodes"] == NUM_NODES
    for key in keys:
        assert rows[2]["epsilon"][key] > rows[1]["epsilon"][key]


def test_data_blocks_commit_scores_and_epsilon(private_run):
    rows, data_blocks, _, _ = private_run
    assert [block["round"] for block in data_blocks] == [1, 2]
    for row, block in zip(rows[1:], data_blocks, strict=True):
        commitments = block["commitments"]
        assert len(commitments) == NUM_NODES
        committed_epsilon = sorted(c["privacy_spent"] for c in commitments)
        assert committed_epsilon == sorted(row["epsilon"].values())
        committed_scores = sorted(c["robustness_score"] for c in commitments)
        expected_scores = sorted(
            round(value, 6) for value in row["robustness_scores"].values()
        )
        assert committed_scores == expected_scores


def test_attacker_scored_zero_and_slashed(private_run):
    rows, data_blocks, stakes, _ = private_run
    (attacker,) = malicious_partitions(NUM_NODES, FRACTION, 7)
    for row in rows[1:]:
        assert row["robustness_scores"][f"partition-{attacker}"] == 0.0
    zero_accounts = {
        c["node"] for c in data_blocks[0]["commitments"] if c["robustness_score"] == 0
    }
    assert len(zero_accounts) == 1
    (account,) = zero_accounts
    assert data_blocks[0]["slashes"] == []
    amount = get_slash_amount(STAKE, 1_000)
    assert data_blocks[1]["slashes"] == [
        {"node": account, "amount": amount, "zero_rounds": 2}
    ]
    assert stakes[account] == STAKE - amount
    assert all(stake == STAKE for node, stake in stakes.items() if node != account)


def test_chain_with_slash_verifies(private_run):
    _, _, _, report = private_run
    assert report.valid, str(report)
