"""Helpers and fixtures for chain tests: keys, a small attested chain, PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from linguachain.ledger.chain import Ledger, new_block
from linguachain.ledger.consensus import (
    data_payload,
    genesis_payload,
    seal_locally,
    transaction_payload,
    version_payload,
)
from linguachain.ledger.keys import ValidatorKey, generate_validator_key
from linguachain.ledger.rules import ConsensusParams, get_block_proposer
from linguachain.ledger.transactions import (
    Transaction,
    serialize_transaction,
    sign_transaction,
)

# Small VDF and PoW so a block takes milliseconds; BLS dominates the cost.
PARAMS = ConsensusParams(
    vdf_iterations=300,
    pow_difficulty_bits=4,
    contributor_reward=1_000,
    proposer_reward=100,
    attester_reward=10,
)
STAKE = 1_000_000
BALANCE = 5_000


def validator_keys(count: int) -> list[ValidatorKey]:
    """Return deterministic validator keys."""
    return [
        generate_validator_key(hashlib.sha256(b"validator %d" % i).digest())
        for i in range(count)
    ]


@pytest.fixture(scope="session")
def keys() -> list[ValidatorKey]:
    return validator_keys(2)


def start_chain(url: str, keys: list[ValidatorKey]) -> Ledger:
    """Open a ledger at `url` and append a genesis block for `keys`."""
    ledger = Ledger.open(url)
    payload = genesis_payload(
        [(key, STAKE, BALANCE) for key in keys], PARAMS, {"model_hash": "a" * 64}
    )
    ledger.append(new_block(None, "genesis", payload, ""), check_signatures=False)
    return ledger


def commitments(keys: list[ValidatorKey], scores: list[float] | None = None) -> list[dict]:
    scores = scores or [1.0] * len(keys)
    return [
        {"node": key.account, "update_hash": f"{i + 1:064x}", "tokens": 100 * (i + 1),
         "robustness_score": score, "privacy_spent": None}
        for i, (key, score) in enumerate(zip(keys, scores, strict=True))
    ]


def transfer(sender: ValidatorKey, recipient: str, amount: int, nonce: int) -> str:
    tx = Transaction("transfer", sender.account, recipient, amount, nonce)
    return serialize_transaction(sign_transaction(tx, sender.secret_key)).decode()


def build_chain(url: str, keys: list[ValidatorKey]) -> Ledger:
    """Genesis, an accepted round, a transfer block, then a rejected round."""
    ledger = start_chain(url, keys)
    context = ledger.context()
    payload = version_payload(
        context, "b" * 64, commitments(keys), {"train_loss": 7.5},
        get_block_proposer(context),
    )
    ledger.append(seal_locally(ledger, "version", payload, keys))
    context = ledger.context()
    payload = data_payload(context, "accepted", "", commitments(keys))
    ledger.append(seal_locally(ledger, "data", payload, keys))
    payload, _ = transaction_payload(
        ledger.context(), [("transfer", transfer(keys[0], keys[1].account, 700, 1))]
    )
    ledger.append(seal_locally(ledger, "transaction", payload, keys))
    payload = data_payload(ledger.context(), "rejected", "loss rose", commitments(keys))
    ledger.append(seal_locally(ledger, "data", payload, keys))
    return ledger


@pytest.fixture(scope="session")
def chain_file(keys, tmp_path_factory) -> Path:
    """A SQLite file holding the five-block chain of `build_chain`."""
    path = tmp_path_factory.mktemp("chain") / "ledger.db"
    build_chain(str(path), keys).close()
    return path


@pytest.fixture
def chain_copy(chain_file, tmp_path) -> Path:
    """A fresh copy of the chain file that a test may tamper with."""
    path = tmp_path / "ledger.db"
    shutil.copy(chain_file, path)
    return path


# --- PostgreSQL ---


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").is_file():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """Start a throwaway PostgreSQL server on 127.0.0.1 with its own role and database."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql")
    # A folder outside pytest's root-only temporary tree, so the postgres user
    # can reach it.
    base = Path(tempfile.mkdtemp(prefix="linguachain-pg-"))
    data = base / "data"
    # initdb refuses to run as root, so the server runs as the postgres user.
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
        base.chmod(0o700)
    port = _free_port()
    run = lambda *args: subprocess.run(  # noqa: E731
        [*prefix, *args], capture_output=True, text=True, timeout=120
    )
    init = run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    if init.returncode != 0:
        pytest.skip(f"initdb failed, so PostgreSQL tests cannot run: {init.stderr[-500:]}")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base}"
    start = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                str(base / "server.log"), "-w", "start")
    if start.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {start.stderr[-500:]}")
    try:
        psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        for sql in ("CREATE ROLE linguachain LOGIN PASSWORD 'ledger'",
                    "CREATE DATABASE ledger_test OWNER linguachain"):
            result = run(*psql, "-c", sql)
            assert result.returncode == 0, result.stderr
        yield f"postgresql+psycopg://linguachain:ledger@127.0.0.1:{port}/ledger_test"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_url):
    """An empty ledger database on the PostgreSQL server, dropped after the test."""
    from sqlalchemy import create_engine

    from linguachain.ledger.models import Base

    engine = create_engine(postgres_url)
    Base.metadata.drop_all(engine)
    engine.dispose()
    yield postgres_url
    engine = create_engine(postgres_url)
    Base.metadata.drop_all(engine)
    engine.dispose()


def wait_until(condition, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(0.2)
    return False
