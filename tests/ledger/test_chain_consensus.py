"""Tests of the attested chain: tampering, forged VDFs, quorum, slashing, LinguaCoin."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading

import pytest
from chain_helpers import (  # noqa: F401 (fixtures)
    BALANCE,
    PARAMS,
    STAKE,
    chain_copy,
    chain_file,
    commitments,
    keys,
    postgres_db,
    postgres_url,
    start_chain,
    transfer,
    validator_keys,
)

from linguachain.ledger import bls
from linguachain.ledger.chain import (
    ChainConflictError,
    InvalidBlockError,
    Ledger,
    new_block,
)
from linguachain.ledger.consensus import (
    evidence_to_json,
    genesis_payload,
    propose_template,
    prove_block,
    seal_block,
    seal_locally,
    sign_block,
    transaction_payload,
    validate_proposal,
    version_payload,
)
from linguachain.ledger.constants import BASE_UNITS_PER_LINGUACOIN
from linguachain.ledger.rules import (
    compute_block_hash,
    encode_transactions,
    genesis_seed,
    get_block_proposer,
    pow_header_bytes,
)
from linguachain.ledger.transactions import (
    DoubleSignEvidence,
    Transaction,
    get_slash_amount,
    sign_attestation,
    transaction_signing_message,
)
from linguachain.ledger.pow import solve_pow
from linguachain.ledger.vdf import vdf_challenge, vdf_output_seed, vdf_prove

HEADER_COLUMNS = {
    "hash": "'" + "f" * 64 + "'",
    "parent_hash": "'" + "e" * 64 + "'",
    "kind": "CASE kind WHEN 'data' THEN 'version' ELSE 'data' END",
    "timestamp": "timestamp + 1",
    "proposer": "'" + "ab" * 48 + "'",
    "payload": "payload || ' '",
    "vdf_output": "zeroblob(100)",
    "vdf_proof": "zeroblob(100)",
    "pow_nonce": "pow_nonce + 1",
}


def tamper(path, sql: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(sql)


def restore(path, data: bytes) -> None:
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.write_bytes(data)


def verify(path, check_signatures: bool = True):
    ledger = Ledger.open(path)
    try:
        return ledger.verify(check_signatures)
    finally:
        ledger.close()


def test_attested_chain_verifies(chain_copy):
    report = verify(chain_copy)
    assert report.valid, str(report)
    assert report.num_blocks == 5


def test_tampered_header_fields_detected(chain_copy, tmp_path):
    pristine = chain_copy.read_bytes()
    for height in range(5):
        for column, value in HEADER_COLUMNS.items():
            restore(chain_copy, pristine)
            tamper(chain_copy, f"UPDATE blocks SET {column} = {value} WHERE height = {height}")
            report = verify(chain_copy, check_signatures=False)
            assert not report.valid, (height, column)
            assert report.height == height, (height, column, str(report))


@pytest.mark.parametrize(
    "sql, rule, height",
    [
        ("UPDATE blocks SET attestation = zeroblob(96) WHERE height = 2", "attestation", 2),
        ("UPDATE blocks SET signers = '[]' WHERE height = 1", "attestation", 1),
        ("UPDATE accounts SET balance = balance + 1 WHERE rowid = 1", "balances", 4),
        ("UPDATE transactions SET amount = 1 WHERE block_height = 3", "transaction-rows", 3),
        ("UPDATE chain_state SET summary = replace(summary, '\"burned\":0', "
         "'\"burned\":1')", "supply", 4),
        ("UPDATE model_versions SET model_hash = '" + "d" * 64 + "'", "model-version", 1),
    ],
)
def test_tampered_evidence_and_rows_detected(chain_copy, sql, rule, height):
    tamper(chain_copy, sql)
    report = verify(chain_copy)
    assert not report.valid
    assert report.rule == rule, str(report)
    assert report.height == height


@pytest.fixture(scope="module")
def proposal(keys, tmp_path_factory):
    """A proved version block on top of a fresh genesis, and its chain context."""
    ledger = start_chain(str(tmp_path_factory.mktemp("vdf") / "l.db"), keys)
    context = ledger.context()
    payload = version_payload(
        context, "b" * 64, commitments(keys), {}, get_block_proposer(context)
    )
    return context, prove_block(propose_template(context, "version", payload), context)


def _with_vdf(block, output: bytes, proof: bytes):
    forged = type(block)(**{c.name: getattr(block, c.name) for c in block.__table__.columns
                            if c.name != "id"})
    forged.vdf_output, forged.vdf_proof = output, proof
    forged.hash = compute_block_hash(forged)
    return forged


def test_forged_vdf_rejected(proposal):
    context, block = proposal
    validate_proposal(context, block)
    flipped_output = bytes([block.vdf_output[0] ^ 1]) + block.vdf_output[1:]
    flipped_proof = block.vdf_proof[:50] + bytes([block.vdf_proof[50] ^ 1]) + block.vdf_proof[51:]
    other_iterations = vdf_prove(vdf_challenge(block.parent_hash), PARAMS.vdf_iterations + 1)
    other_challenge = vdf_prove(vdf_challenge("ab" * 32), PARAMS.vdf_iterations)
    cases = {
        "flipped output byte": (flipped_output, block.vdf_proof),
        "flipped proof byte": (block.vdf_output, flipped_proof),
        "wrong iteration count": (other_iterations.output, other_iterations.proof),
        "another challenge": (other_challenge.output, other_challenge.proof),
        "truncated proof": (block.vdf_output, block.vdf_proof[:-1]),
        "empty proof": (b"", b""),
    }
    for name, (output, proof) in cases.items():
        with pytest.raises(InvalidBlockError) as error:
            validate_proposal(context, _with_vdf(block, output, proof))
        assert error.value.rule == "vdf", name


def test_block_below_quorum_not_committed(keys, tmp_path):
    ledger = start_chain(str(tmp_path / "l.db"), keys)
    context = ledger.context()
    payload = version_payload(
        context, "b" * 64, commitments(keys), {}, get_block_proposer(context)
    )
    block = prove_block(propose_template(context, "version", payload), context)
    one_signature = {keys[0].account: sign_block(keys[0], block)}
    # One of two equal validators has half the stake, below two thirds.
    assert seal_block(context, block, one_signature) is None
    block.signers = json.dumps([keys[0].account])
    block.attestation = one_signature[keys[0].account]
    with pytest.raises(InvalidBlockError) as error:
        ledger.append(block)
    assert error.value.rule == "attestation"
    assert ledger.head().height == 0
    assert ledger.model_versions() == []


def test_double_signer_slashed(keys, tmp_path):
    ledger = start_chain(str(tmp_path / "l.db"), keys)
    context = ledger.context()
    first = propose_template(context, "data", {"x": 1})
    second = propose_template(context, "data", {"x": 2})
    offender = keys[1]
    evidence = DoubleSignEvidence(
        sign_attestation(offender.secret_key, 1, bytes.fromhex(first.hash)),
        sign_attestation(offender.secret_key, 1, bytes.fromhex(second.hash)),
    )
    # Anyone may submit the evidence; the next transaction block slashes.
    ledger.submit("evidence", evidence_to_json(evidence))
    entries = [(e.kind, e.encoded) for e in ledger.mempool()]
    payload, rejected = transaction_payload(ledger.context(), entries)
    assert rejected == []
    ledger.append(seal_locally(ledger, "transaction", payload, keys))

    slashed = get_slash_amount(STAKE, PARAMS.slash_basis_points)
    stakes = {a.account: a.stake for a in ledger.accounts()}
    assert stakes[offender.account] == STAKE - slashed
    assert stakes[keys[0].account] == STAKE
    assert ledger.context().accounts.burned == slashed
    assert ledger.mempool() == []

    # The same evidence cannot slash twice.
    payload, rejected = transaction_payload(ledger.context(), entries)
    assert payload is None
    assert len(rejected) == 1
    assert ledger.verify().valid


def test_replayed_and_overdrawn_transfers_rejected(keys, tmp_path):
    ledger = start_chain(str(tmp_path / "l.db"), keys)
    sender, recipient = keys[0], keys[1].account
    first = transfer(sender, recipient, 1_000, 1)
    payload, _ = transaction_payload(ledger.context(), [("transfer", first)])
    ledger.append(seal_locally(ledger, "transaction", payload, keys))

    # A replay reuses nonce 1; an overdraft exceeds the remaining balance.
    overdraft = transfer(sender, recipient, BALANCE, 2)
    for entry in (first, overdraft):
        payload, rejected = transaction_payload(ledger.context(), [("transfer", entry)])
        assert payload is None
        assert rejected == [("transfer", entry)]

    # A proposer that includes the replay anyway gets its block rejected.
    context = ledger.context()
    forced = prove_block(
        propose_template(context, "transaction", {"transactions": [first]}), context
    )
    signatures = {key.account: sign_block(key, forced) for key in keys}
    with pytest.raises(InvalidBlockError) as error:
        ledger.append(seal_block(context, forced, signatures))
    assert error.value.rule == "transaction"
    assert "nonce" in error.value.detail
    balances = {a.account: a.balance for a in ledger.accounts()}
    assert balances[sender.account] == BALANCE - 1_000
    assert balances[recipient] == BALANCE + 1_000


def double_spend_race(url: str, keys, tmp_path) -> None:
    """Race 6 threads appending blocks that each spend the sender's whole balance."""
    ledger = start_chain(url, keys)
    extra = validator_keys(8)[2:]
    blocks = []
    for key in extra:
        entry = transfer(keys[0], key.account, BALANCE, 1)
        payload, _ = transaction_payload(ledger.context(), [("transfer", entry)])
        blocks.append(seal_locally(ledger, "transaction", payload, keys))
    results: list[str] = []
    barrier = threading.Barrier(len(blocks))

    def append(block) -> None:
        writer = Ledger.open(url)
        barrier.wait()
        try:
            writer.append(block, check_signatures=False)
            results.append("appended")
        except (InvalidBlockError, ChainConflictError) as error:
            results.append(type(error).__name__)
        finally:
            writer.close()

    threads = [threading.Thread(target=append, args=(b,)) for b in blocks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results.count("appended") == 1, results
    balances = {a.account: a.balance for a in ledger.accounts()}
    assert balances[keys[0].account] == 0
    assert sum(balances.get(k.account, 0) for k in extra) == BALANCE
    report = ledger.verify()
    assert report.valid, str(report)
    ledger.close()


def test_concurrent_double_spend_sqlite(keys, tmp_path):
    double_spend_race(str(tmp_path / "race.db"), keys, tmp_path)


def test_concurrent_double_spend_postgresql(keys, tmp_path, postgres_db):
    double_spend_race(postgres_db, keys, tmp_path)


def test_attested_chain_on_postgresql(keys, postgres_db):
    from chain_helpers import build_chain

    ledger = build_chain(postgres_db, keys)
    report = ledger.verify()
    assert report.valid, str(report)
    assert report.num_blocks == 5
    total = sum(a.balance + a.stake for a in ledger.accounts())
    context = ledger.context()
    assert total == context.accounts.minted - context.accounts.burned
    ledger.close()


def test_rewards_minted_by_token_share(chain_copy, keys):
    ledger = Ledger.open(chain_copy)
    balances = {a.account: a.balance for a in ledger.accounts()}
    # keys[1] committed twice the tokens of keys[0]; the transfer moved 700.
    share = [PARAMS.contributor_reward * t // 300 for t in (100, 200)]
    attester = PARAMS.attester_reward
    proposers = balances[keys[0].account] + balances[keys[1].account] - 2 * BALANCE
    assert proposers == sum(share) + 2 * attester + PARAMS.proposer_reward
    context = ledger.context()
    assert context.accounts.minted == 2 * (STAKE + BALANCE) + proposers
    assert BASE_UNITS_PER_LINGUACOIN == 10**8


def test_node_signs_only_approved_block_once(keys, tmp_path):
    from flwr.app import ConfigRecord

    from linguachain.client_app.validator import _sign
    from linguachain.ledger.consensus import blocks_to_json, data_payload

    ledger = start_chain(str(tmp_path / "node.db"), keys)
    context = ledger.context()
    first, second = (
        prove_block(
            propose_template(context, "data", data_payload(context, "rejected", r, [])),
            context,
        )
        for r in ("first", "second")
    )
    record = ConfigRecord({"proposal": blocks_to_json([first])})
    with pytest.raises(ValueError, match="not approved"):
        _sign(ledger, keys[0], record)
    ledger.record_approval(first.height, first.hash)
    signature = bytes.fromhex(str(_sign(ledger, keys[0], record)["signature"]))
    assert signature == sign_block(keys[0], first)

    # A second block at the same height is a double sign, even when approved.
    ledger.record_approval(second.height, second.hash)
    with pytest.raises(ValueError, match="double sign"):
        _sign(ledger, keys[0], ConfigRecord({"proposal": blocks_to_json([second])}))


def test_vdf_epochs_prove_first_block_only(keys, tmp_path):
    params = dataclasses.replace(PARAMS, vdf_interval=3)
    ledger = Ledger.open(tmp_path / "l.db")
    payload = genesis_payload([(key, STAKE, BALANCE) for key in keys], params, {})
    genesis = new_block(None, "genesis", payload, "")
    ledger.append(genesis, check_signatures=False)
    seeds = []
    for nonce in range(1, 6):
        seeds.append(ledger.context().proposer_seed)
        payload, _ = transaction_payload(
            ledger.context(), [("transfer", transfer(keys[0], keys[1].account, 1, nonce))]
        )
        ledger.append(seal_locally(ledger, "transaction", payload, keys))
    blocks = list(ledger.blocks(since=1))
    assert [bool(b.vdf_output) for b in blocks] == [True, False, False, True, False]
    assert seeds[0] == genesis_seed(genesis)
    assert seeds[1] == seeds[2] == seeds[3] == vdf_output_seed(blocks[0].vdf_output)
    assert seeds[4] == vdf_output_seed(blocks[3].vdf_output)
    assert ledger.verify().valid

    # A VDF off the schedule and a missing VDF on it are both rejected.
    context = ledger.context()
    template = propose_template(context, "transaction", {"transactions": []})
    off_schedule = prove_block(template, context)
    stray = vdf_prove(vdf_challenge(off_schedule.parent_hash), params.vdf_iterations)
    off_schedule.vdf_output, off_schedule.vdf_proof = stray.output, stray.proof
    off_schedule.hash = compute_block_hash(off_schedule)
    with pytest.raises(InvalidBlockError) as error:
        validate_proposal(context, off_schedule)
    assert error.value.rule == "vdf"
    ledger.close()

    tamper(tmp_path / "l.db", "UPDATE blocks SET vdf_output = x'', vdf_proof = x''"
           " WHERE height = 4")
    report = Ledger.open(tmp_path / "l.db").verify()
    assert not report.valid
    assert report.height == 4
    assert report.rule in ("vdf", "block-hash")


@pytest.mark.parametrize("workers", [0, 1])
def test_verify_reports_earliest_bad_signature(chain_copy, workers):
    # The attestation of block 1 is a valid signature, but not of block 2, and a
    # later rule breaks too: the batched BLS check still names block 2.
    tamper(chain_copy, "UPDATE blocks SET attestation = (SELECT attestation FROM blocks"
           " WHERE height = 1) WHERE height = 2")
    tamper(chain_copy, "UPDATE accounts SET balance = balance + 1 WHERE rowid = 1")
    ledger = Ledger.open(chain_copy)
    report = ledger.verify(workers=workers)
    ledger.close()
    assert not report.valid
    assert report.height == 2, str(report)
    assert report.rule == "attestation"


@pytest.mark.parametrize("workers", [0, 1])
def test_verify_reports_forged_vdf_before_broken_link(chain_copy, workers):
    # Block 1 gets another VDF output with a matching PoW and hash, so its own
    # header checks pass and block 2's parent link breaks. The deferred VDF
    # check of block 1 is then the first failure.
    ledger = Ledger.open(chain_copy)
    block = next(iter(ledger.blocks(since=1)))
    block.vdf_output = bytes([block.vdf_output[0] ^ 1]) + block.vdf_output[1:]
    block.pow_nonce = solve_pow(pow_header_bytes(block), PARAMS.pow_difficulty_bits)
    new_hash = compute_block_hash(block)
    ledger.close()
    tamper(chain_copy, f"UPDATE blocks SET vdf_output = x'{block.vdf_output.hex()}',"
           f" pow_nonce = {block.pow_nonce}, hash = '{new_hash}' WHERE height = 1")
    ledger = Ledger.open(chain_copy)
    report = ledger.verify(workers=workers)
    assert ledger.verify(check_signatures=False, workers=workers).height == 1
    ledger.close()
    assert not report.valid
    assert report.height == 1, str(report)
    assert report.rule == "vdf"


def test_verify_rejects_transfer_signed_by_other_key(keys, tmp_path):
    ledger = start_chain(str(tmp_path / "l.db"), keys)
    unsigned = Transaction("transfer", keys[0].account, keys[1].account, 5, 1)
    forged = dataclasses.replace(
        unsigned,
        signature=bls.sign(keys[1].secret_key, transaction_signing_message(unsigned)),
    )
    context = ledger.context()
    template = propose_template(
        context, "transaction", {"transactions": encode_transactions([forged])}
    )
    block = prove_block(template, context)
    signatures = {key.account: sign_block(key, block) for key in keys}
    # Admitted without signature checks, as a careless writer would.
    ledger.append(seal_block(context, block, signatures), check_signatures=False)
    payload, _ = transaction_payload(
        ledger.context(), [("transfer", transfer(keys[0], keys[1].account, 5, 2))]
    )
    ledger.append(seal_locally(ledger, "transaction", payload, keys))

    report = ledger.verify()
    assert not report.valid
    assert report.height == 1, str(report)
    assert report.rule == "transaction"
    assert ledger.verify(check_signatures=False).valid
    ledger.close()


def _append_signed_transfer(path, keys, amount: int) -> None:
    """Append one transfer block to a fresh chain, storing each validator's signature."""
    ledger = start_chain(str(path), keys)
    context = ledger.context()
    payload, _ = transaction_payload(
        context, [("transfer", transfer(keys[0], keys[1].account, amount, 1))]
    )
    block = prove_block(propose_template(context, "transaction", payload), context)
    signatures = {key.account: sign_block(key, block) for key in keys}
    ledger.append(seal_block(context, block, signatures), signatures=signatures)
    ledger.close()


def test_cli_slash_submits_double_sign_evidence(keys, tmp_path):
    from typer.testing import CliRunner

    from linguachain.cli import app

    # Two ledgers whose blocks at height 1 differ, both signed by every validator.
    _append_signed_transfer(tmp_path / "a.db", keys, 5)
    _append_signed_transfer(tmp_path / "b.db", keys, 6)
    runner = CliRunner()
    offender = keys[0].account
    for name in ("a", "b"):
        result = runner.invoke(app, [
            "ledger", "attestation", "--db", str(tmp_path / f"{name}.db"),
            "--height", "1", "--validator", offender,
        ])
        assert result.exit_code == 0, result.output
        (tmp_path / f"{name}.json").write_text(result.output)

    same = runner.invoke(app, [
        "ledger", "slash", "--first", str(tmp_path / "a.json"),
        "--second", str(tmp_path / "a.json"), "--db", str(tmp_path / "a.db"),
    ])
    assert same.exit_code == 1
    assert "invalid evidence" in same.output

    result = runner.invoke(app, [
        "ledger", "slash", "--first", str(tmp_path / "a.json"),
        "--second", str(tmp_path / "b.json"), "--db", str(tmp_path / "a.db"),
    ])
    assert result.exit_code == 0, result.output
    ledger = Ledger.open(tmp_path / "a.db")
    entries = [(entry.kind, entry.encoded) for entry in ledger.mempool()]
    assert [kind for kind, _ in entries] == ["evidence"]
    payload, rejected = transaction_payload(ledger.context(), entries)
    assert rejected == []
    ledger.append(seal_locally(ledger, "transaction", payload, keys))
    stake = ledger.context().accounts.stakes[offender]
    assert stake == STAKE - get_slash_amount(STAKE, PARAMS.slash_basis_points)
    assert ledger.verify().valid
    ledger.close()
