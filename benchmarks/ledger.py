"""Measure the ledger: transfers per second, verify time, consensus share of a round.

Writes docs/benchmarks/ledger.json and the "Ledger" section of docs/BENCHMARKS.md.

    python benchmarks/ledger.py [--transfers 5000] [--blocks 10000] [--chain FILE]
        [--skip-run]

1. Transfers per second: signed-format transfers appended in transaction blocks of
   500 to a SQLite ledger (state transition, canonical decoding, one database
   transaction per block). BLS signatures are checked when a transfer is
   admitted, so that cost is measured on its own (one Verify).
2. Verify time: a chain of `--blocks` blocks shaped like a run (version, data and
   transfer blocks in turn), sealed with the default consensus parameters by 4
   validators, replayed by `Ledger.verify` with all checks, once in one process
   and once with worker processes. Building it takes minutes; `--chain FILE`
   keeps it for the next run. A 30-block sample is replayed under each BLS
   backend.
3. Consensus share: a 2-round simulation with the `flwr run .` defaults (tiny
   preset, 4 nodes, CKKS, consensus) on WikiText-2; share = (consensus and ledger seconds - propose seconds, which hold
   the VDF and PoW) / round seconds, from metrics.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linguachain.ledger import bls  # noqa: E402
from linguachain.ledger.chain import Ledger, new_block  # noqa: E402
from linguachain.ledger.consensus import (  # noqa: E402
    data_payload,
    genesis_payload,
    propose_template,
    prove_block,
    seal_locally,
    transaction_payload,
    version_payload,
)
from linguachain.ledger.keys import generate_validator_key  # noqa: E402
from linguachain.ledger.rules import (  # noqa: E402
    ConsensusParams,
    block_signers,
    encode_transactions,
    get_block_proposer,
)
from linguachain.ledger.vdf import create_discriminant  # noqa: E402
from linguachain.ledger.transactions import (  # noqa: E402
    Transaction,
    sign_transaction,
    transaction_signing_message,
)
from report import replace_section  # noqa: E402

PARAMS = ConsensusParams(vdf_iterations=100, pow_difficulty_bits=4)
BATCH = 500
MACHINE = "2-core CPU"


def keys(count: int):  # type: ignore[no-untyped-def]
    return [generate_validator_key(hashlib.sha256(b"bench %d" % i).digest()) for i in range(count)]


def new_ledger(path: Path, validators) -> Ledger:  # type: ignore[no-untyped-def]
    ledger = Ledger.open(path)
    payload = genesis_payload([(k, 10**6, 10**15) for k in validators], PARAMS, {})
    ledger.append(new_block(None, "genesis", payload, ""), check_signatures=False)
    return ledger


def unsealed_block(ledger: Ledger, payload: dict, validators):  # type: ignore[no-untyped-def]
    """Prove a transaction block and name its signers, without BLS signatures."""
    context = ledger.context()
    block = prove_block(propose_template(context, "transaction", payload), context)
    block.signers = json.dumps(sorted(v.account for v in validators))
    return block


def measure_transfers(folder: Path, count: int) -> dict:
    validators = keys(1)
    recipients = [k.account for k in keys(3)[1:]]
    ledger = new_ledger(folder / "transfers.db", validators)
    sender = validators[0].account
    seconds = 0.0
    nonce = 0
    while nonce < count:
        txs = []
        for _ in range(min(BATCH, count - nonce)):
            nonce += 1
            txs.append(Transaction("transfer", sender, recipients[nonce % 2], 1, nonce))
        block = unsealed_block(ledger, {"transactions": encode_transactions(txs)}, validators)
        started = time.perf_counter()
        ledger.append(block, check_signatures=False)
        seconds += time.perf_counter() - started
    ledger.close()

    # Admission cost: BLS Verify of one transfer signature.
    tx = sign_transaction(Transaction("transfer", sender, recipients[0], 1, 1), validators[0].secret_key)
    started = time.perf_counter()
    samples = 3
    for _ in range(samples):
        assert bls.verify(validators[0].public_key, transaction_signing_message(tx), tx.signature)
    verify_seconds = (time.perf_counter() - started) / samples
    return {
        "transfers_per_second": count / seconds,
        "transfers_measured": count,
        "bls_verify_seconds_per_signature": verify_seconds,
    }


def build_run_chain(path: Path, num_blocks: int, validators) -> Ledger:  # type: ignore[no-untyped-def]
    """Build a chain shaped like a run: version, data and transfer blocks in turn.

    Every block is sealed as a run seals it (VDF where due, PoW, BLS signatures
    of all validators) with the default consensus parameters.
    """
    params = ConsensusParams(contributor_reward=1000, proposer_reward=100, attester_reward=10)
    ledger = Ledger.open(path)
    payload = genesis_payload([(k, 10**6, 10**15) for k in validators], params, {})
    ledger.append(new_block(None, "genesis", payload, ""), check_signatures=False)
    commitments = [
        {"node": k.account, "update_hash": f"{i + 1:064x}", "tokens": 100,
         "robustness_score": 1.0, "privacy_spent": None}
        for i, k in enumerate(validators)
    ]
    nonce = 0
    started = time.perf_counter()
    while ledger.head().height < num_blocks - 1:
        context = ledger.context()
        height = context.head.height + 1
        if height % 3 == 1:
            model_hash = hashlib.sha256(b"model %d" % height).hexdigest()
            payload = version_payload(
                context, model_hash, commitments, {"loss": 5.0}, get_block_proposer(context)
            )
            kind = "version"
        elif height % 3 == 2:
            payload, kind = data_payload(context, "accepted", "", commitments), "data"
        else:
            nonce += 1
            tx = Transaction("transfer", validators[0].account, validators[1].account, 1, nonce)
            text = encode_transactions([sign_transaction(tx, validators[0].secret_key)])[0]
            payload, _ = transaction_payload(context, [("transfer", text)])
            kind = "transaction"
        ledger.append(seal_locally(ledger, kind, payload, validators))
        if height % 500 == 0:
            print(f"built {height} blocks in {time.perf_counter() - started:.0f} s", flush=True)
    return ledger


def measure_verify(folder: Path, num_blocks: int, chain: Path | None) -> dict:
    validators = keys(4)
    path = chain or folder / "verify.db"
    if path.is_file():
        print(f"reusing the chain in {path}", flush=True)
        ledger = Ledger.open(path)
    else:
        ledger = build_run_chain(path, num_blocks, validators)
    blocks = list(ledger.blocks())
    vdf_blocks = sum(1 for block in blocks if block.vdf_output)
    signatures = sum(len(block_signers(block)) for block in blocks)
    seconds = {}
    for workers in (0, None):
        # Appending cached the last discriminants; a verifier starts cold.
        create_discriminant.cache_clear()
        started = time.perf_counter()
        report = ledger.verify(workers=workers)
        seconds["serial" if workers == 0 else "parallel"] = time.perf_counter() - started
        assert report.valid, str(report)
    ledger.close()

    # The same kind of chain replayed with each BLS backend, on a short sample.
    sample_blocks = 30
    sample = build_run_chain(folder / "sample.db", sample_blocks, validators)
    per_block = {}
    for backend in bls.BACKENDS:
        bls.set_backend(backend)
        create_discriminant.cache_clear()
        started = time.perf_counter()
        assert sample.verify(workers=0).valid
        per_block[backend] = 1000 * (time.perf_counter() - started) / sample_blocks
    bls.set_backend("blspy")
    sample.close()
    scale = 10_000 / len(blocks)
    return {
        "verify_seconds_10k_blocks": seconds["parallel"] * scale,
        "verify_seconds_10k_blocks_serial": seconds["serial"] * scale,
        "verify_blocks_measured": len(blocks),
        "verify_vdf_blocks": vdf_blocks,
        "verify_validator_signatures": signatures,
        "verify_ms_per_block_by_bls_backend": per_block,
        "verify_sample_blocks": sample_blocks,
    }


def measure_round_share(folder: Path, rounds: int) -> dict:
    from linguachain.sweep import run_job

    data = os.environ.get("LINGUACHAIN_TEST_DATA", str(ROOT.parent / "shared/data/wikitext-2"))
    # The `flwr run .` defaults (tiny preset, 4 nodes, CKKS, consensus).
    nested = {
        "data": {"path": data, "train_file": "valid.txt", "test_file": "test.txt"},
        "train": {"rounds": rounds},
        "output": {"save_model": False, "max_new_tokens": 4, "prompts": "The"},
    }
    run_job(nested, folder / "run")
    lines = (folder / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines][1:]
    # The phases in "seconds" are disjoint and add up to the round.
    round_seconds = [sum(row["seconds"].values()) for row in rows]
    consensus = [row["seconds"]["ledger"] for row in rows]
    vdf = [row["consensus"]["vdf_seconds"] for row in rows]
    shares = [
        (c - v) / total for c, v, total in zip(consensus, vdf, round_seconds, strict=True)
    ]
    return {
        "consensus_time_share": (sum(consensus) - sum(vdf)) / sum(round_seconds),
        "consensus_time_share_by_round": shares,
        "round_seconds_mean": sum(round_seconds) / len(rows),
        "consensus_seconds_mean": sum(consensus) / len(rows),
        "vdf_pow_seconds_mean": sum(vdf) / len(rows),
        "rounds_measured": len(rows),
    }


def write_section(results: dict, command: str) -> None:
    share = results.get("consensus_time_share")
    lines = [
        "",
        "## Ledger",
        "",
        f"Command: `{command}` ({MACHINE}; numbers vary with the other load).",
        "",
        "| measure | value | target |",
        "| --- | --- | --- |",
        f"| transfers per second (SQLite, blocks of {BATCH}, signatures checked at admission) "
        f"| {results['transfers_per_second']:.0f} | >= 2000 |",
        f"| BLS Verify per transfer signature ({bls.get_backend()}) "
        f"| {1000 * results['bls_verify_seconds_per_signature']:.2f} ms | |",
        f"| verify, 10,000 blocks, one worker process per CPU "
        f"| {results['verify_seconds_10k_blocks']:.1f} s | <= 10 s |",
        f"| verify, 10,000 blocks, all in one process "
        f"| {results['verify_seconds_10k_blocks_serial']:.1f} s | |",
    ]
    per_block = results["verify_ms_per_block_by_bls_backend"]
    lines += [
        f"| verify per block with the {name} BLS backend, {results['verify_sample_blocks']}"
        f"-block sample, one process | {value:.1f} ms | |"
        for name, value in per_block.items()
    ]
    if share is not None:
        lines += [
            f"| consensus and ledger share of round time, VDF excluded "
            f"| {100 * share:.1f}% (rounds: "
            + ", ".join(f"{100 * x:.1f}%" for x in results["consensus_time_share_by_round"])
            + ") | <= 5% |",
            f"| mean round / consensus / VDF+PoW seconds "
            f"| {results['round_seconds_mean']:.1f} / {results['consensus_seconds_mean']:.1f}"
            f" / {results['vdf_pow_seconds_mean']:.1f} | |",
        ]
    lines += [
        "",
        f"The verified chain has {results['verify_blocks_measured']} blocks shaped like a"
        " run (version, data and one-transfer blocks in turn, 4 validators signing"
        f" each), {results['verify_vdf_blocks']} of them with a 1024-bit VDF proof"
        " (one per 64-block epoch) and"
        f" {results['verify_validator_signatures']} validator signatures in all.",
        "The parallel replay checks VDF proofs and BLS signatures in a worker process",
        "while the main process replays the state, so it gains only where a core is",
        "free.",
        f"The round share comes from a {results.get('rounds_measured')}-round run with",
        "the `flwr run .` defaults (tiny preset, 4 nodes, CKKS). It is the ledger",
        "seconds minus the propose step, which contains the VDF and PoW, over the sum",
        "of the round's phases (train, aggregate, evaluate, ledger) in `metrics.jsonl`.",
        "",
    ]
    replace_section("## Ledger", lines)


def main() -> None:
    """Run the measurements and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=5000)
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument(
        "--chain", type=Path, help="SQLite file of a chain to reuse, or to build and keep"
    )
    parser.add_argument("--skip-run", action="store_true", help="skip the Flower run")
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds of the run that measures the share"
    )
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        results.update(measure_transfers(Path(folder), args.transfers))
        print(json.dumps(results), flush=True)
        results.update(measure_verify(Path(folder), args.blocks, args.chain))
        print(json.dumps(results), flush=True)
        if not args.skip_run:
            results.update(measure_round_share(Path(folder), args.rounds))
    results["machine"] = MACHINE
    output = ROOT / "docs" / "benchmarks" / "ledger.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    command = "python benchmarks/ledger.py " + " ".join(sys.argv[1:])
    write_section(results, command.strip())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
