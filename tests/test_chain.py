"""Tests of the hash-chained ledger and its verify command."""

from __future__ import annotations

import sqlite3

import pytest
from typer.testing import CliRunner

from linguachain.cli import app
from linguachain.ledger.chain import Ledger


@pytest.fixture
def ledger_file(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path)
    ledger.append_block("genesis", {"model_hash": "a" * 64})
    ledger.commit_version(1, "b" * 64, "a" * 64, {"test_loss": 7.5})
    ledger.commit_version(2, "c" * 64, "b" * 64, {"test_loss": 6.25})
    ledger.close()
    return path


def test_valid_chain_verifies(ledger_file):
    report = Ledger.open(ledger_file).verify()
    assert report.valid
    assert report.num_blocks == 3


@pytest.mark.parametrize(
    "table, column, value, rule, height",
    [
        ("blocks", "hash", "'" + "f" * 64 + "'", "block-hash", 1),
        ("blocks", "parent_hash", "'" + "e" * 64 + "'", "parent-link", 1),
        ("blocks", "timestamp", "timestamp + 1", "block-hash", 1),
        ("blocks", "kind", "'data'", "block-hash", 1),
        ("blocks", "proposer", "'mallory'", "block-hash", 1),
        ("blocks", "payload", "replace(payload, '7.5', '1.5')", "block-hash", 1),
        ("blocks", "pow_nonce", "7", "block-hash", 1),
        ("blocks", "height", "height + 10", "height", 2),
        ("model_versions", "model_hash", "'" + "d" * 64 + "'", "model-version", 1),
        ("model_versions", "metrics", "'{}'", "model-version", 1),
    ],
)
def test_tampered_field_detected(ledger_file, table, column, value, rule, height):
    key = "height" if table == "blocks" else "block_height"
    with sqlite3.connect(ledger_file) as connection:
        connection.execute(f"UPDATE {table} SET {column} = {value} WHERE {key} = 1")
    report = Ledger.open(ledger_file).verify()
    assert not report.valid
    assert report.rule == rule
    # A moved block shows up where the next height is missing.
    assert report.height == height


def test_one_byte_file_edit_detected(ledger_file):
    data = bytearray(ledger_file.read_bytes())
    offset = data.find(b"c" * 64)
    assert offset > 0
    data[offset] = ord("d")
    ledger_file.write_bytes(bytes(data))
    report = Ledger.open(ledger_file).verify()
    assert not report.valid
    assert report.height == 2


def test_genesis_only_once(tmp_path):
    ledger = Ledger.open(tmp_path / "l.db")
    ledger.append_block("genesis", {})
    with pytest.raises(ValueError, match="already has a genesis"):
        ledger.append_block("genesis", {})


def test_block_before_genesis_rejected(tmp_path):
    with pytest.raises(ValueError, match="append a genesis block first"):
        Ledger.open(tmp_path / "l.db").append_block("version", {})


def test_failed_write_leaves_chain_unchanged(ledger_file):
    ledger = Ledger.open(ledger_file)
    # Round 2 already has a model version, so this insert fails as a whole.
    with pytest.raises(Exception):
        ledger.commit_version(2, "d" * 64, "c" * 64, {})
    assert ledger.head().height == 2
    assert ledger.verify().valid


def test_cli_verify_exit_codes(ledger_file):
    runner = CliRunner()
    good = runner.invoke(app, ["ledger", "verify", "--db", str(ledger_file)])
    assert good.exit_code == 0
    assert "valid: 3 blocks" in good.output
    with sqlite3.connect(ledger_file) as connection:
        connection.execute("UPDATE blocks SET proposer = 'x' WHERE height = 2")
    bad = runner.invoke(app, ["ledger", "verify", "--db", str(ledger_file)])
    assert bad.exit_code == 1
    assert "block 2" in bad.output


def test_cli_show_lists_blocks(ledger_file):
    result = CliRunner().invoke(app, ["ledger", "show", "--db", str(ledger_file)])
    assert result.exit_code == 0
    assert result.output.count("\n") == 3
    assert "version" in result.output


def test_cli_missing_ledger_file(tmp_path):
    result = CliRunner().invoke(app, ["ledger", "verify", "--db", str(tmp_path / "no.db")])
    assert result.exit_code == 2
