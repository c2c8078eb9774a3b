"""End-to-end consensus on real text: replicas, rejected rounds, resume after SIGKILL.

One run keeps the server's ledger in a throwaway PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from linguachain.cli import app as cli
from linguachain.cli import main
from linguachain.config import nest_dotted_keys
from linguachain.ledger.chain import Ledger
from linguachain.ledger.keys import read_validator_key
from linguachain.sweep import run_job
from postgres_server import postgres_server, postgres_unavailable_reason

FAST_CONSENSUS = {"consensus.vdf_iterations": 500, "consensus.pow_difficulty_bits": 4}


def small_run(micro_overrides: dict, **changes) -> dict:
    return {**micro_overrides, **FAST_CONSENSUS, "train.local_steps": 4,
            "data.eval_blocks": 32, "output.save_model": False, **changes}


def read_metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def chain_payloads(ledger: Ledger) -> list[tuple[str, dict]]:
    return [(block.kind, json.loads(block.payload)) for block in ledger.blocks()]


@pytest.fixture(scope="module")
def gated_run(micro_run) -> tuple[Path, dict]:
    """2 nodes x 2 rounds with consensus-gated commits."""
    return micro_run


def test_replicas_end_with_same_head(gated_run):
    folder, summary = gated_run
    server = Ledger.open(folder / "ledger.db")
    report = server.verify()
    server.close()
    assert report.valid, str(report)
    assert report.head_hash == summary["ledger"]["head"]
    replicas = sorted((folder / "nodes").glob("node-*/ledger.db"))
    assert len(replicas) == 2
    for path in replicas:
        replica = Ledger.open(path)
        assert replica.head().hash == report.head_hash, path
        assert replica.verify(check_signatures=False).valid, path
        replica.close()


def test_rounds_final_and_rewarded(gated_run):
    folder, summary = gated_run
    assert summary["committed_rounds"] == 2
    rows = read_metrics(folder)
    assert [row["consensus"]["status"] for row in rows[1:]] == ["accepted", "accepted"]
    # CKKS FedAvg: validators checked each model against the decrypted average,
    # and the decryptors kept what they decrypted.
    assert [row["consensus"]["aggregate_checked"] for row in rows[1:]] == [True, True]
    assert len(list((folder / "kits").glob("node-*/decrypted-average-run-*.npz"))) == 2
    ledger = Ledger.open(folder / "ledger.db")
    kinds = [kind for kind, _ in chain_payloads(ledger)]
    assert kinds == ["genesis", "version", "data", "version", "data"]
    context = ledger.context()
    assert context.last_round == 2
    assert context.model_hash == summary["final_model_hash"]
    supply = sum(a.balance + a.stake for a in ledger.accounts())
    assert supply == context.accounts.minted - context.accounts.burned
    assert context.accounts.minted > 0
    ledger.close()


def test_cli_generate_from_version(gated_run):
    folder, summary = gated_run
    runner = CliRunner()
    result = runner.invoke(
        cli, ["generate", "--version", summary["final_model_hash"], "--run", str(folder),
              "--prompt", "The game", "--max-new-tokens", "3"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("The game")
    unknown = runner.invoke(
        cli, ["generate", "--version", "0" * 64, "--run", str(folder), "--prompt", "A"]
    )
    assert unknown.exit_code == 1
    assert "no final version block" in unknown.output


def test_cli_balances_and_transfer(gated_run, tmp_path):
    folder, _ = gated_run
    runner = CliRunner()
    ledger_copy = tmp_path / "ledger.db"
    ledger_copy.write_bytes((folder / "ledger.db").read_bytes())
    balances = runner.invoke(cli, ["ledger", "balances", "--db", str(ledger_copy)])
    assert balances.exit_code == 0, balances.output
    assert "total supply" in balances.output
    # With secure aggregation the nodes sign with the keys of their kits.
    key = folder / "kits" / "node-0"
    sender = read_validator_key(key).account
    recipient = next(
        a.account for a in Ledger.open(ledger_copy).accounts() if a.account != sender
    )
    sent = runner.invoke(cli, ["transfer", "--kit", str(key), "--to", recipient,
                               "--amount", "5", "--db", str(ledger_copy)])
    assert sent.exit_code == 0, sent.output
    assert "nonce 1" in sent.output
    too_much = runner.invoke(cli, ["transfer", "--kit", str(key), "--to", recipient,
                                   "--amount", str(10**18), "--db", str(ledger_copy)])
    assert too_much.exit_code == 1
    assert "exceeds the balance" in too_much.output
    # Hex that is no BLS public key, and the sender's own account, are rejected.
    for bad in ["ab" * 48, sender]:
        rejected = runner.invoke(cli, ["transfer", "--kit", str(key), "--to", bad,
                                      "--amount", "1", "--db", str(ledger_copy)])
        assert rejected.exit_code == 2, rejected.output
        assert "--to" in rejected.output
    full = runner.invoke(cli, ["ledger", "balances", "--db", str(ledger_copy), "--full"])
    assert recipient in full.output


def test_cli_errors_without_tracebacks(gated_run, tmp_path, monkeypatch):
    folder, _ = gated_run
    assert cli.pretty_exceptions_show_locals is False
    # A file that is no ledger is rejected without creating tables in it.
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE x (a)")
    rejected = CliRunner().invoke(cli, ["ledger", "verify", "--db", str(other)])
    assert rejected.exit_code == 2
    assert "contains no ledger" in rejected.output
    with sqlite3.connect(other) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
    assert tables == ["x"]
    # main() prints an expected failure as one line, not a traceback.
    monkeypatch.setattr(sys, "argv", ["linguachain", "transfer", "--kit",
                                      str(tmp_path / "missing"), "--to", "ab" * 48,
                                      "--amount", "1", "--db", str(other)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1


def test_worse_model_rejected_and_model_stays(micro_overrides, tmp_path):
    # A negative tolerance demands a loss gain of 1000 nats, which no round makes.
    overrides = small_run(micro_overrides, **{"train.rounds": 1,
                                               "consensus.loss_tolerance": -1000.0})
    summary = run_job(nest_dotted_keys(overrides), tmp_path)
    row = read_metrics(tmp_path)[1]
    assert row["committed"] is False
    assert row["consensus"]["status"] == "rejected"
    assert "exceeds the parent" in row["consensus"]["reason"]
    assert summary["committed_rounds"] == 0
    ledger = Ledger.open(tmp_path / "ledger.db")
    payloads = chain_payloads(ledger)
    assert [kind for kind, _ in payloads] == ["genesis", "data"]
    assert payloads[1][1]["status"] == "rejected"
    assert ledger.context().model_hash == payloads[0][1]["model_hash"]
    assert ledger.model_versions() == []
    assert ledger.verify().valid
    ledger.close()


def test_run_keeps_ledger_in_postgresql(micro_overrides, tmp_path):
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(f"No PostgreSQL server for the ledger: {reason}")
    overrides = small_run(micro_overrides, **{"train.rounds": 1, "train.local_steps": 2})
    with postgres_server() as url:
        summary = run_job(nest_dotted_keys({**overrides, "ledger.url": url}), tmp_path)
        ledger = Ledger(url)
        report = ledger.verify()
        kinds = [kind for kind, _ in chain_payloads(ledger)]
        ledger.close()
    assert summary["ledger"]["url"] == url
    assert summary["ledger"]["valid"]
    assert not (tmp_path / "ledger.db").exists()
    assert report.valid, str(report)
    assert kinds == ["genesis", "version", "data"]
    assert report.head_hash == summary["ledger"]["head"]
    # The nodes keep their SQLite copies, at the server's head.
    replicas = sorted((tmp_path / "nodes").glob("node-*/ledger.db"))
    assert len(replicas) == 2
    for path in replicas:
        replica = Ledger.open(path)
        assert replica.head().hash == report.head_hash, path
        replica.close()


def start_server(overrides: dict, folder: Path, log: Path) -> subprocess.Popen:
    """Start a gated run in its own process group, logging to `log`."""
    code = (
        "import json, sys; from pathlib import Path; from linguachain.sweep import"
        " run_job; run_job(json.loads(sys.argv[1]), Path(sys.argv[2]))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    config = json.dumps(nest_dotted_keys(overrides))
    return subprocess.Popen(
        [sys.executable, "-c", code, config, str(folder)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def kill_when(process: subprocess.Popen, folder: Path, condition, timeout: float) -> None:
    """SIGKILL the server's process group once `condition(ledger)` holds."""
    end = time.time() + timeout
    try:
        while time.time() < end:
            assert process.poll() is None, "the run ended before the kill point"
            path = folder / "ledger.db"
            if path.is_file():
                try:
                    ledger = Ledger.open(path)
                    try:
                        if condition(ledger):
                            return
                    finally:
                        ledger.close()
                except OperationalError:
                    pass  # The server is still creating the tables.
            time.sleep(0.5)
        pytest.fail("the kill point was not reached in time")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


def freeze_at_line(process: subprocess.Popen, log: Path, pattern: str, timeout: float) -> None:
    """SIGSTOP the server's process group as soon as its log matches `pattern`.

    The window between two blocks is one Flower exchange (a few tenths of a
    second), too short for polling the ledger, so the log is read every 10 ms.
    """
    end = time.time() + timeout
    regex = re.compile(pattern)
    while time.time() < end:
        if regex.search(log.read_text(errors="replace")):
            os.killpg(process.pid, signal.SIGSTOP)
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before its log matched {pattern!r}")
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    pytest.fail(f"the log did not match {pattern!r} within {timeout:.0f} s")


def test_resume_after_kills(micro_overrides, tmp_path):
    folder = tmp_path / "run"
    overrides = small_run(micro_overrides, **{"train.rounds": 3, "train.local_steps": 2})

    # Kill 1, mid-round: round 1's version block is final, its data block is not.
    first_log = tmp_path / "first.log"
    first = start_server(overrides, folder, first_log)
    freeze_at_line(first, first_log, r"Block \d+ \(data\): proposed", timeout=900)
    kill_when(first, folder, lambda l: l.head() is not None and l.head().kind == "version",
              timeout=60)

    # Kill 2, between rounds: once round 2 is closed.
    second = start_server(overrides, folder, tmp_path / "second.log")
    kill_when(second, folder, lambda l: l.context().last_round >= 2, timeout=900)

    summary = run_job(nest_dotted_keys(overrides), folder)
    ledger = Ledger.open(folder / "ledger.db")
    report = ledger.verify()
    assert report.valid, str(report)
    payloads = chain_payloads(ledger)
    version_rounds = [p["round"] for kind, p in payloads if kind == "version"]
    data_rounds = [p["round"] for kind, p in payloads if kind == "data"]
    assert version_rounds == [1, 2, 3]
    assert data_rounds == [1, 2, 3]
    # Each version block mints its rewards once: protocol nonces never repeat.
    reward_nonces = [
        json.loads(tx)["nonce"] for kind, p in payloads if kind != "genesis"
        for tx in p["transactions"]
    ]
    assert reward_nonces == list(range(1, len(reward_nonces) + 1))
    rows = read_metrics(folder)
    rounds = [row["round"] for row in rows]
    assert len(rounds) == len(set(rounds))
    assert rounds[-1] == 3
    assert summary["ledger"]["head"] == report.head_hash
    # The summary covers the whole run, not only the last server session.
    assert summary["initial_test_perplexity"] == rows[0]["test_perplexity"]
    assert summary["final_test_perplexity"] == rows[-1]["test_perplexity"]
    assert summary["committed_rounds"] == 3
    assert summary["num_nodes"] == 2
    for path in sorted((folder / "nodes").glob("node-*/ledger.db")):
        replica = Ledger.open(path)
        assert replica.head().hash == report.head_hash, path
        replica.close()
    ledger.close()


def test_resume_writes_missing_metrics_row(gated_run, micro_overrides, tmp_path):
    # A server killed after a round's blocks became final but before it wrote
    # the round's metrics row: the restarted run writes that row once.
    folder, _ = gated_run
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    lost = json.loads(lines[-1])
    (copy / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")

    run_job(nest_dotted_keys(micro_overrides), copy)
    rows = read_metrics(copy)
    assert [row["round"] for row in rows] == [json.loads(line)["round"] for line in lines]
    assert rows[-1]["resumed"] is True
    assert rows[-1]["committed"] is True
    assert rows[-1]["model_hash"] == lost["model_hash"]
    ledger = Ledger.open(copy / "ledger.db")
    assert ledger.verify().valid
    assert ledger.context().last_round == lost["round"]
    ledger.close()
