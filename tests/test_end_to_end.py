"""End-to-end runs on real WikiText-2 text: Flower simulation, flwr run, sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import pipeline
from typer.testing import CliRunner

from conftest import REPO_ROOT
from linguachain.cli import app as cli
from linguachain.config import nest_dotted_keys
from linguachain.ledger.chain import Ledger
from linguachain.sweep import run_job

RESULT_FILES = [
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "perplexity.png",
    "ledger.db",
    "generations.json",
    "model/config.json",
    "model/model.safetensors",
    "model/tokenizer.json",
    "tokenizer/tokenizer.json",
]


@pytest.fixture(scope="module")
def simulated_run(micro_run) -> tuple[Path, dict]:
    """2 nodes x 2 rounds of the micro preset in Flower's simulation engine."""
    return micro_run


def test_perplexity_falls(simulated_run):
    folder, summary = simulated_run
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[1]["test_perplexity"] < rows[0]["test_perplexity"]
    assert rows[2]["test_perplexity"] < rows[1]["test_perplexity"]
    assert summary["final_test_perplexity"] < summary["initial_test_perplexity"]


def test_every_result_file_exists(simulated_run):
    folder, _ = simulated_run
    missing = [name for name in RESULT_FILES if not (folder / name).is_file()]
    assert missing == []


def test_summary_keys(simulated_run):
    _, summary = simulated_run
    for key in ("rounds", "num_nodes", "params", "initial_test_perplexity",
                "final_test_perplexity", "wall_seconds"):
        assert key in summary
    assert summary["rounds"] == 2
    assert summary["num_nodes"] == 2
    assert "local files" in summary["data_source"]


def test_metrics_rows_have_phase_seconds(simulated_run):
    folder, _ = simulated_run
    row = json.loads((folder / "metrics.jsonl").read_text().splitlines()[1])
    assert row["tokens"] > 0
    assert row["train_loss"] > 0
    assert set(row["seconds"]) >= {"train", "aggregate", "evaluate", "ledger"}


def test_model_reloads_and_generates(simulated_run):
    folder, _ = simulated_run
    generator = pipeline("text-generation", model=str(folder / "model"))
    text = generator("The history of", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The history of")
    assert len(text) > len("The history of")


def test_cli_generate(simulated_run):
    folder, _ = simulated_run
    result = CliRunner().invoke(
        cli, ["generate", "--model", str(folder / "model"), "--prompt", "The game",
              "--max-new-tokens", "5"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("The game")


def test_ledger_verifies_and_detects_byte_edit(simulated_run, tmp_path):
    folder, summary = simulated_run
    ledger = Ledger.open(folder / "ledger.db")
    report = ledger.verify()
    ledger.close()
    assert report.valid
    # Genesis, then a version block and the data block closing it per round.
    assert report.num_blocks == 5
    assert report.head_hash == summary["ledger"]["head"]

    copy = tmp_path / "edited.db"
    data = bytearray((folder / "ledger.db").read_bytes())
    offset = data.find(f'"model_hash":"{summary["final_model_hash"]}'.encode())
    assert offset > 0
    data[offset + len('"model_hash":"')] ^= 0x01
    copy.write_bytes(bytes(data))
    edited = Ledger.open(copy).verify()
    assert not edited.valid
    # The version block of round 2, or the chain state after the head.
    assert edited.height in (3, 4)


def test_node_with_non_finite_loss_replies_error(micro_overrides, tmp_path):
    # A learning rate of 1e30 makes every node's loss non-finite at once: each
    # node replies with an error, the model stays unchanged and nothing commits.
    overrides = {**micro_overrides, "train.rounds": 1, "train.lr": 1e30,
                 "train.grad_clip": 1e30, "output.save_model": False}
    summary = run_job(nest_dotted_keys(overrides), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["committed"] is False
    assert rows[1]["nodes"] == 0
    assert summary["committed_rounds"] == 0


def test_sweep_multirun_two_values(wikitext, tmp_path):
    command = [
        sys.executable, "-m", "linguachain.sweep", "-m", "model=micro",
        f"data.path={wikitext}", "data.train_file=valid.txt", "train.rounds=1",
        "train.local_steps=2", "federation.num_nodes=2", "data.eval_blocks=16",
        "output.save_model=false", "consensus.vdf_iterations=500",
        "consensus.pow_difficulty_bits=4", "train.lr=0.003,0.001",
        f"hydra.sweep.dir={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / job / "summary.json").is_file()
        assert Ledger.open(tmp_path / job / "ledger.db").verify().valid
    lrs = [(tmp_path / j / "config.yaml").read_text() for j in ("0", "1")]
    assert "lr: 0.003" in lrs[0]
    assert "lr: 0.001" in lrs[1]


def test_sweep_rejects_misspelled_key():
    result = subprocess.run(
        [sys.executable, "-m", "linguachain.sweep", "train.lrr=0.1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Did you mean 'train.lr'?" in result.stderr


def test_flwr_run_reuses_project_superlink(wikitext, tmp_path):
    """`flwr run .` from a fresh FLWR_HOME, through `linguachain superlink start`."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    results = tmp_path / "results"
    start = subprocess.run(
        [str(bin_dir / "linguachain"), "superlink", "start", "--num-supernodes", "2"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    try:
        assert start.returncode == 0, start.stderr
        run_config = (
            f"model.preset='micro' data.path='{wikitext}' data.train_file='valid.txt'"
            f" train.rounds=1 train.local_steps=2 data.eval_blocks=16"
            f" output.dir='{results}' output.run_id='flwr-run' output.save_model=false"
        )
        run = subprocess.run(
            [str(bin_dir / "flwr"), "run", str(REPO_ROOT), "--stream",
             "--run-config", run_config],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        summary = json.loads((results / "flwr-run" / "summary.json").read_text())
        assert summary["num_nodes"] == 2
        assert summary["ledger"]["valid"]
        # No per-run environment was installed: nothing was downloaded.
        assert not (tmp_path / "flwr-home" / "runtime-envs").exists()
    finally:
        stop = subprocess.run(
            [str(bin_dir / "linguachain"), "superlink", "stop"],
            env=env, capture_output=True, text=True, timeout=60,
        )
    assert "Stopped" in stop.stdout
