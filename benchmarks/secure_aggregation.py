"""Compare plaintext, CKKS and threshold Paillier aggregation side by side.

For the `tiny` preset (4096-token vocabulary, 128-token blocks) and 4, 8 and 16
nodes this measures, in one process:

- local training: `train.local_steps` AdamW steps of one node on random token
  blocks (the cost does not depend on the text), the part of a round that all
  schemes share;
- node encryption of one update with the real node step (flatten, weight,
  encrypt); nodes encrypt in parallel, so one node's time is the round's;
- server aggregation: plaintext FedAvg over n float32 updates, or the
  homomorphic sum of n replies;
- decryption: CKKS decryption of the sum by one key holder (two decrypt in
  parallel); Paillier partial decryption by one validator (validators work in
  parallel), verification of t proofs and combination on the server.

Updates are Gaussian with standard deviation 0.01 in the tiny preset's parameter
layout. The crypto costs depend on the number of values, not on the values.
Paillier costs are measured on a slice of `--paillier-sample` ciphertexts and
scaled linearly to the whole update (every ciphertext costs the same), because
the full update takes minutes per node on a shared 2-core machine. The n
Paillier replies summed on the server are copies of one encrypted slice.

Round time is train + encrypt + sum + decrypt for the encrypted schemes and
train + FedAvg for plaintext; message transfer is not included.

Run: python benchmarks/secure_aggregation.py
Writes docs/benchmarks/secure_aggregation.json and the "Secure aggregation"
section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from linguachain.config import TrainConfig
from linguachain.privacy import ckks, paillier
from linguachain.privacy.codec import flatten_update
from linguachain.privacy.secure_sum import (
    CKKSAggregator,
    PaillierAggregator,
    PaillierSettings,
    encrypt_ckks,
    encrypt_paillier,
    paillier_packing,
    partial_decrypt_paillier,
)
from linguachain.privacy.paillier import generate_prime_pair
from linguachain.privacy.threshold import (
    deal_threshold_keys,
    verify_partial_decryption,
)
from linguachain.task.model import PRESETS
from linguachain.task.train import train_local
from report import replace_section

REPO_ROOT = Path(__file__).resolve().parents[1]
JSON_PATH = REPO_ROOT / "docs" / "benchmarks" / "secure_aggregation.json"
MARKDOWN_PATH = REPO_ROOT / "docs" / "BENCHMARKS.md"
SECTION_TITLE = "## Secure aggregation"

VOCAB_SIZE = 4096
BLOCK_SIZE = 128
DEFAULT_NODES = 4
TOKENS_PER_NODE = 500 * BLOCK_SIZE


def build_tiny_model() -> GPT2LMHeadModel:
    """Build the tiny preset with the default 4096-token vocabulary."""
    preset = PRESETS["tiny"]
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_positions=BLOCK_SIZE,
            n_embd=preset.n_embd,
            n_layer=preset.n_layer,
            n_head=preset.n_head,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


def measure_training(model: GPT2LMHeadModel, local_steps: int) -> float:
    """Time one node's local training on random token blocks."""
    blocks = torch.randint(VOCAB_SIZE, (256, BLOCK_SIZE))
    config = TrainConfig(local_steps=local_steps)
    started = time.perf_counter()
    train_local(model, blocks, config, seed=0)
    return time.perf_counter() - started


def random_update(length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.01, length)


def measure_plaintext(length: int, num_nodes: int) -> dict[str, float]:
    """Time FedAvg over num_nodes float32 updates."""
    updates = [random_update(length, i).astype(np.float32) for i in range(num_nodes)]
    weights = np.full(num_nodes, float(TOKENS_PER_NODE))
    started = time.perf_counter()
    np.average(np.stack(updates), axis=0, weights=weights)
    return {"encrypt": 0.0, "sum": time.perf_counter() - started, "decrypt": 0.0}


def measure_ckks(length: int, num_nodes: int) -> dict[str, float]:
    """Time CKKS encryption, summation of num_nodes replies and decryption."""
    context = ckks.create_secret_context("sum")
    fingerprint = ckks.context_fingerprint(context)
    aggregator = CKKSAggregator(ckks.make_public_context(context))
    weight = TOKENS_PER_NODE // BLOCK_SIZE

    # Encrypt two distinct updates and send each from half of the nodes: the
    # server's cost depends only on the number of replies.
    distinct = min(num_nodes, 2)
    updates = []
    encrypt_seconds = []
    for node in range(distinct):
        vector = random_update(length, node)
        started = time.perf_counter()
        updates.append(
            encrypt_ckks(context, fingerprint, vector, weight, TOKENS_PER_NODE)
        )
        encrypt_seconds.append(time.perf_counter() - started)
    replies = [updates[node % distinct] for node in range(num_nodes)]

    started = time.perf_counter()
    loaded = [aggregator.load(update, length) for update in replies]
    summed = aggregator.add(loaded)
    sum_seconds = time.perf_counter() - started

    started = time.perf_counter()
    average = ckks.decrypt_average(context, summed, weight * num_nodes, length)
    decrypt_seconds = time.perf_counter() - started

    expected = np.mean(
        [random_update(length, i % distinct) for i in range(num_nodes)], axis=0
    )
    return {
        "encrypt": float(np.mean(encrypt_seconds)),
        "sum": sum_seconds,
        "decrypt": decrypt_seconds,
        "bytes_per_param": updates[0].num_bytes / length,
        "max_abs_error": float(np.max(np.abs(average - expected))),
    }


def measure_paillier(
    length: int, num_nodes: int, primes: tuple[int, int], sample: int
) -> dict[str, float]:
    """Time Paillier encryption, summation and threshold decryption on a slice."""
    modulus_bits = (primes[0] * primes[1]).bit_length()
    dealing = deal_threshold_keys(num_nodes, None, modulus_bits, safe_primes=primes)
    keys = dealing.verification_keys
    settings = PaillierSettings(
        clip_range=0.25, precision_bits=16, max_total_weight=32768
    )
    packing = paillier_packing(dealing.public_key, settings)
    aggregator = PaillierAggregator(keys, settings)
    num_ciphertexts = packing.count_plaintexts(length)
    sample = min(sample, num_ciphertexts)
    sample_length = sample * packing.slots_per_plaintext
    scale = num_ciphertexts / sample
    weight = TOKENS_PER_NODE // BLOCK_SIZE

    vector = random_update(sample_length, 0)
    started = time.perf_counter()
    update = encrypt_paillier(
        dealing.public_key, packing, vector, weight, TOKENS_PER_NODE
    )
    encrypt_seconds = (time.perf_counter() - started) * scale

    # Sum num_nodes copies of the slice: the cost depends only on their number.
    loaded = [aggregator.load(update, sample_length) for _ in range(num_nodes)]
    started = time.perf_counter()
    summed = aggregator.add(loaded)
    sum_seconds = (time.perf_counter() - started) * scale

    # One validator's partial decryption; t of them run in parallel.
    threshold = keys.threshold
    started = time.perf_counter()
    partials = [
        partial_decrypt_paillier(keys, dealing.key_shares[i], summed)
        for i in range(threshold)
    ]
    partial_seconds = (time.perf_counter() - started) / threshold * scale

    ciphertexts = aggregator.parse_sum(summed)
    started = time.perf_counter()
    for partial in partials:
        verify_partial_decryption(keys, ciphertexts, partial)
    average = aggregator.combine(
        ciphertexts, partials, weight * num_nodes, sample_length
    )
    server_seconds = (time.perf_counter() - started) * scale

    return {
        "encrypt": encrypt_seconds,
        "sum": sum_seconds,
        "decrypt": partial_seconds + server_seconds,
        "partial_decrypt": partial_seconds,
        "verify_and_combine": server_seconds,
        "threshold": threshold,
        "bytes_per_param": num_ciphertexts
        * dealing.public_key.ciphertext_bytes
        / length,
        "sampled_ciphertexts": sample,
        "total_ciphertexts": num_ciphertexts,
        "max_abs_error": float(np.max(np.abs(average - vector))),
    }


def round_time(train_seconds: float, phases: dict[str, float]) -> float:
    return train_seconds + phases["encrypt"] + phases["sum"] + phases["decrypt"]


def write_markdown(results: dict, command: str) -> None:
    """Replace or append the secure aggregation section of docs/BENCHMARKS.md."""
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `{command}`. Machine: {results['machine']}.",
        "",
        f"Preset `tiny` ({results['num_parameters']:,} parameters), one node's local "
        f"training of {results['local_steps']} steps: {results['train_seconds']:.1f} s. "
        "Times are per round in seconds: node encryption (one node; nodes work in "
        "parallel), server aggregation, decryption (key holders work in parallel), and "
        "the round time (training + these phases, without transfer) relative to "
        "plaintext FedAvg.",
        "",
        "| scheme | nodes | encrypt s | aggregate s | decrypt s | B/param | round time ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scheme in ("plaintext", "ckks", "paillier"):
        for nodes, row in results[scheme]["by_nodes"].items():
            lines.append(
                f"| {scheme} | {nodes} | {row['encrypt']:.2f} | {row['sum']:.3f} | "
                f"{row['decrypt']:.2f} | {row['bytes_per_param']:.1f} | "
                f"{row['round_time_ratio']:.2f} |"
            )
    paillier_row = results["paillier"]["by_nodes"][str(DEFAULT_NODES)]
    lines += [
        "",
        f"Paillier: {results['paillier_modulus_bits']}-bit n, majority threshold, "
        f"measured on {paillier_row['sampled_ciphertexts']} of "
        f"{paillier_row['total_ciphertexts']} ciphertexts and scaled linearly "
        "(an estimate for the whole update). CKKS: parameter set `sum` (N=4096), the "
        "whole update. Updates are Gaussian (std 0.01), not trained ones; crypto costs "
        "depend on the number of values only.",
        "",
    ]
    replace_section(SECTION_TITLE, lines, MARKDOWN_PATH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--local-steps", type=int, default=30)
    parser.add_argument("--paillier-modulus-bits", type=int, default=2048)
    parser.add_argument("--paillier-sample", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = build_tiny_model()
    weights = OrderedDict((n, p.detach().numpy()) for n, p in model.named_parameters())
    length = int(flatten_update(list(weights.values())).size)
    train_seconds = measure_training(model, args.local_steps)
    print(f"tiny preset: {length} parameters, training {train_seconds:.1f} s")
    primes = generate_prime_pair(args.paillier_modulus_bits, safe_primes=True)

    results: dict = {
        "machine": "2-core CPU, shared with other work",
        "platform": platform.platform(),
        "num_parameters": length,
        "local_steps": args.local_steps,
        "train_seconds": train_seconds,
        "paillier_modulus_bits": args.paillier_modulus_bits,
        "default_nodes": DEFAULT_NODES,
        "plaintext": {"by_nodes": {}},
        "ckks": {"by_nodes": {}},
        "paillier": {"by_nodes": {}},
    }
    for nodes in args.nodes:
        plain = measure_plaintext(length, nodes)
        plain["bytes_per_param"] = 4.0
        plain_round = round_time(train_seconds, plain)
        plain["round_time_ratio"] = 1.0
        rows = {"plaintext": plain}
        rows["ckks"] = measure_ckks(length, nodes)
        rows["paillier"] = measure_paillier(length, nodes, primes, args.paillier_sample)
        for scheme in ("ckks", "paillier"):
            rows[scheme]["round_time_ratio"] = (
                round_time(train_seconds, rows[scheme]) / plain_round
            )
        for scheme, row in rows.items():
            results[scheme]["by_nodes"][str(nodes)] = row
            print(
                f"{scheme:>9} {nodes:>2} nodes: encrypt {row['encrypt']:.2f} s, "
                f"sum {row['sum']:.3f} s, decrypt {row['decrypt']:.2f} s, "
                f"{row['bytes_per_param']:.1f} B/param, ratio {row['round_time_ratio']:.2f}"
            )

    default = str(DEFAULT_NODES if DEFAULT_NODES in args.nodes else args.nodes[0])
    for scheme in ("plaintext", "ckks", "paillier"):
        row = results[scheme]["by_nodes"][default]
        results[scheme]["bytes_per_param"] = row["bytes_per_param"]
        results[scheme]["round_time_ratio"] = row["round_time_ratio"]
    JSON_PATH.parent.mkdir(parents=True, exist_ok=True)
    JSON_PATH.write_text(json.dumps(results, indent=2) + "\n")

    command = "python benchmarks/secure_aggregation.py"
    if args.nodes != [4, 8, 16] or args.paillier_sample != 64:
        command += f" --nodes {' '.join(map(str, args.nodes))} --paillier-sample {args.paillier_sample}"
    write_markdown(results, command)
    print(f"wrote {JSON_PATH} and {MARKDOWN_PATH}")


if __name__ == "__main__":
    main()
