"""Held-out perplexity and backdoor success under attack, per aggregation rule.

Every run is a real Flower simulation (`linguachain.sweep.run_job`) on the
WikiText-2 files: attack kind x attacker fraction x aggregation rule, plus a
privacy-utility curve (noise multiplier sigma vs epsilon vs perplexity) with
FedAvg and node-level DP. The fraction-0 run of a rule is shared by all kinds
(it runs with `attack.kind=backdoor` and no attacker, so it also gives the
backdoor success of a clean model). `fltrust_ckks` is FLTrust over CKKS
ciphertexts (the `scoring` parameter set); every other rule runs on plaintext
updates. Consensus is off, so every aggregate becomes the next global model and
the numbers measure the aggregation rules alone.

The backdoor is made strong enough to succeed against FedAvg in a short run: a
single-token target (" Paris"), the trigger phrase written 4 times into every
block of an attacker (`attack.backdoor_copies`, `attack.poison_rate=1`), and the
poisoned update boosted 3 times (`attack.backdoor_boost`, model replacement).

    python benchmarks/robustness.py --data ../shared/data/wikitext-2

writes docs/benchmarks/robustness.json, two plots next to it and a section of
docs/BENCHMARKS.md. The JSON is rewritten after every run, so a stopped
benchmark keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from linguachain.client_app.attacks import malicious_partitions
from linguachain.config import nest_dotted_keys
from linguachain.sweep import run_job
from report import replace_section

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTION_TITLE = "## Robustness and privacy"
# Row label of FLTrust computed over CKKS ciphertexts.
ENCRYPTED_FLTRUST = "fltrust_ckks"


def base_overrides(args: argparse.Namespace) -> dict:
    return {
        "model.preset": args.preset,
        "data.path": str(Path(args.data).resolve()),
        "data.train_file": "valid.txt",
        "data.test_file": "test.txt",
        "data.eval_blocks": args.eval_blocks,
        "train.rounds": args.rounds,
        "train.local_steps": args.local_steps,
        "train.batch_size": args.batch_size,
        "federation.num_nodes": args.nodes,
        "federation.fraction_evaluate": 0.0,
        "secure_aggregation.scheme": "none",
        "consensus.enabled": False,
        "attack.backdoor_prompts": args.backdoor_prompts,
        "attack.poison_rate": args.poison_rate,
        "attack.target": args.backdoor_target,
        "attack.backdoor_copies": args.backdoor_copies,
        "attack.backdoor_boost": args.backdoor_boost,
        "output.save_model": False,
        "output.max_new_tokens": 4,
        "output.prompts": "The history of",
    }


def rule_overrides(rule: str, nodes: int) -> dict:
    """Return the aggregation keys of a rule, tolerating as many attackers as it can."""
    if rule == "krum":
        return {
            "aggregation.name": "krum",
            "aggregation.num_malicious": (nodes - 3) // 2,
        }
    if rule == "trimmed_mean":
        return {"aggregation.name": "trimmed_mean", "aggregation.trim_fraction": 0.2}
    if rule == ENCRYPTED_FLTRUST:
        return {
            "aggregation.name": "fltrust",
            "secure_aggregation.scheme": "ckks",
            "secure_aggregation.ckks_parameters": "scoring",
        }
    return {"aggregation.name": rule}


def run(overrides: dict, workdir: Path, name: str) -> dict:
    """Run one simulation; return its final metrics row and summary."""
    started = time.perf_counter()
    folder = workdir / name
    summary = run_job(nest_dotted_keys(overrides), folder)
    rows = [
        json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]
    print(f"{name}: perplexity {summary['final_test_perplexity']:.1f}", flush=True)
    return {
        "summary": summary,
        "last": rows[-1],
        "seconds": time.perf_counter() - started,
    }


def attacker_scores(
    last: dict, attackers: frozenset[int]
) -> tuple[float | None, float | None]:
    """Mean robustness score of attackers and of honest nodes in the last round."""
    scores = last.get("robustness_scores") or {}
    bad = [v for k, v in scores.items() if int(k.split("-")[1]) in attackers]
    good = [v for k, v in scores.items() if int(k.split("-")[1]) not in attackers]
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    return mean(bad), mean(good)


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    kinds = result["setup"]["kinds"]
    rules = result["setup"]["aggregations"]
    figure, axes = plt.subplots(
        1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False
    )
    for axis, kind in zip(axes[0], kinds):
        for rule in rules:
            points = sorted(
                (r["fraction"], r["final_perplexity"])
                for r in rows
                if r["attack"] == kind and r["aggregation"] == rule
            )
            if points:
                axis.plot(*zip(*points), marker="o", label=rule)
        axis.set_title(f"attack: {kind}")
        axis.set_xlabel("attacker fraction")
        axis.set_ylabel("final held-out perplexity")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / f"{result['name']}.png", dpi=100)
    plt.close(figure)

    curve = [p for p in result["privacy_curve"] if p["epsilon"] is not None]
    if curve:
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(
            [p["epsilon"] for p in curve],
            [p["final_perplexity"] for p in curve],
            marker="o",
        )
        for point in curve:
            axis.annotate(
                f"sigma={point['noise_multiplier']}",
                (point["epsilon"], point["final_perplexity"]),
                fontsize=8,
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(f"epsilon after all rounds (delta={result['setup']['delta']})")
        axis.set_ylabel("final held-out perplexity")
        axis.set_title("Privacy-utility curve (FedAvg, node-level DP)")
        axis.grid(True, which="both", alpha=0.3)
        figure.tight_layout()
        figure.savefig(out / f"{result['name']}_privacy_utility.png", dpi=100)
        plt.close(figure)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def section_title(name: str) -> str:
    """Return the BENCHMARKS.md heading of a benchmark run named `name`."""
    return SECTION_TITLE if name == "robustness" else f"{SECTION_TITLE}: {name}"


def write_markdown(result: dict, path: Path) -> None:
    setup = result["setup"]
    title = section_title(result["name"])
    lines = [
        title,
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}",
        "",
        f"Preset `{setup['preset']}`, {setup['nodes']} nodes x {setup['rounds']} rounds x"
        f" {setup['local_steps']} local steps, batch {setup['batch_size']}; held-out"
        f" perplexity on {setup['eval_blocks']} blocks of the WikiText-2 test split;"
        f" backdoor success on {setup['backdoor_prompts']} held-out prompts (target"
        f" {setup.get('backdoor_target', ' the password is swordfish')!r}, poison"
        f" rate {setup.get('poison_rate', 0.5)},"
        f" {setup.get('backdoor_copies', 1)} trigger copies per block, update boost"
        f" {setup.get('backdoor_boost', 1.0)}). Attack kinds"
        f" run: {', '.join(setup['kinds'])} (the others are covered by tests, not"
        " measured here). Krum tolerates f = (n - 3) / 2 attackers; the trimmed mean"
        f" cuts 20% per tail; {ENCRYPTED_FLTRUST} is FLTrust over CKKS ciphertexts."
        " Consensus is off. Fraction-0 rows of one rule share one clean run.",
        "",
        "| attack | fraction | aggregation | final perplexity | vs clean | vs clean"
        " FedAvg | backdoor success | attacker score | honest score |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fedavg_clean = next(
        (
            row["final_perplexity"]
            for row in result["rows"]
            if row["aggregation"] == "fedavg" and row["fraction"] == 0
        ),
        None,
    )
    for row in result["rows"]:
        to_fedavg = row["final_perplexity"] / fedavg_clean if fedavg_clean else None
        lines.append(
            f"| {row['attack']} | {row['fraction']} | {row['aggregation']} |"
            f" {fmt(row['final_perplexity'])} | {fmt(row['ratio_to_clean'], 3)} |"
            f" {fmt(to_fedavg, 3)} |"
            f" {fmt(row['backdoor_success'], 3)} | {fmt(row['attacker_score'], 3)} |"
            f" {fmt(row['honest_score'], 3)} |"
        )
    lines += [
        "",
        f"![perplexity under attack](benchmarks/{result['name']}.png)",
        "",
        f"Privacy-utility curve: FedAvg, no attack, clip norm C = {setup['clip_norm']},"
        f" delta = {setup['delta']}. Epsilon is for the released models (node-level,"
        " RDP accountant, no amplification by sampling).",
        "",
        "| noise multiplier sigma | epsilon | epsilon vs. server | final perplexity |",
        "| --- | --- | --- | --- |",
    ]
    for point in result["privacy_curve"]:
        lines.append(
            f"| {point['noise_multiplier']} | {fmt(point['epsilon'], 2)} |"
            f" {fmt(point['epsilon_vs_server'], 2)} | {fmt(point['final_perplexity'])} |"
        )
    image = f"benchmarks/{result['name']}_privacy_utility.png"
    if result["privacy_curve"]:
        lines += ["", f"![privacy-utility curve]({image})"]
    lines += [""]
    lines += [result["discussion"], ""]
    replace_section(title, lines, path)


def discuss(result: dict) -> str:
    """Summarise the goal check: 40% attackers, robust rule within 5% of clean."""
    fractions = result["setup"]["fractions"]
    worst_fraction = max(fractions)
    clean = {
        row["aggregation"]: row["final_perplexity"]
        for row in result["rows"]
        if row["fraction"] == 0
    }
    fedavg_clean = clean.get("fedavg")
    sentences = []
    for kind in result["setup"]["kinds"]:
        worst = [
            r
            for r in result["rows"]
            if r["attack"] == kind and r["fraction"] == worst_fraction
        ]
        within = [
            r["aggregation"]
            for r in worst
            if r["ratio_to_clean"] is not None and r["ratio_to_clean"] <= 1.05
        ]
        sentences.append(
            f"{kind} at {worst_fraction:.0%} attackers: at most 5% above the rule's"
            f" own clean run with {', '.join(within) if within else 'no rule'}."
        )
        by_rule = {r["aggregation"]: r for r in worst}
        encrypted, fedavg = by_rule.get(ENCRYPTED_FLTRUST), by_rule.get("fedavg")
        if encrypted is None or fedavg is None or not fedavg_clean:
            continue
        # The goal: encrypted FLTrust at most 5% above the clean FedAvg run,
        # while FedAvg under the same attack is more than 5% above it.
        encrypted_ok = encrypted["final_perplexity"] <= 1.05 * fedavg_clean
        fedavg_ok = fedavg["final_perplexity"] <= 1.05 * fedavg_clean
        sentences.append(
            f"Goal ({kind}): {ENCRYPTED_FLTRUST} perplexity"
            f" {encrypted['final_perplexity']:.1f} is"
            f" {encrypted['final_perplexity'] / fedavg_clean:.3f} x the clean FedAvg"
            f" run ({fedavg_clean:.1f}), FedAvg"
            f" {fedavg['final_perplexity']:.1f}"
            f" ({fedavg['final_perplexity'] / fedavg_clean:.3f} x), backdoor success"
            f" {fmt(encrypted['backdoor_success'], 3)} vs"
            f" {fmt(fedavg['backdoor_success'], 3)}:"
            f" {'met' if encrypted_ok and not fedavg_ok else 'not met'}."
        )
    return " ".join(sentences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(REPO_ROOT.parent / "shared/data/wikitext-2")
    )
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--backdoor-prompts", type=int, default=16)
    parser.add_argument("--kinds", default="sign_flip,scaling,backdoor")
    parser.add_argument("--fractions", default="0,0.2,0.4")
    parser.add_argument(
        "--aggregations",
        default=f"fedavg,{ENCRYPTED_FLTRUST},krum,median,trimmed_mean",
        help=f"rules to compare; {ENCRYPTED_FLTRUST} is FLTrust over CKKS",
    )
    parser.add_argument("--sigmas", default="0.01,0.1,1.0")
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--poison-rate", type=float, default=1.0)
    parser.add_argument("--backdoor-target", default=" Paris")
    parser.add_argument("--backdoor-copies", type=int, default=4)
    parser.add_argument("--backdoor-boost", type=float, default=3.0)
    parser.add_argument(
        "--name",
        default="robustness",
        help="file stem of the JSON and plots, and suffix of the section title",
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "docs"))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only redraw the plots and the markdown from the existing JSON",
    )
    args = parser.parse_args()
    if args.report_only:
        out = Path(args.out)
        path = out / "benchmarks" / f"{args.name}.json"
        result = json.loads(path.read_text())
        result.setdefault("name", args.name)
        result["discussion"] = discuss(result)
        path.write_text(json.dumps(result, indent=2) + "\n")
        plot(result, out / "benchmarks")
        write_markdown(result, out / "BENCHMARKS.md")
        return

    kinds = args.kinds.split(",")
    fractions = [float(f) for f in args.fractions.split(",")]
    rules = args.aggregations.split(",")
    base = base_overrides(args)
    workdir = Path(tempfile.mkdtemp(prefix="robustness-"))
    out = Path(args.out)
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    result: dict = {
        "name": args.name,
        "rows": [],
        "privacy_curve": [],
        "setup": {
            "preset": args.preset,
            "nodes": args.nodes,
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "batch_size": args.batch_size,
            "eval_blocks": args.eval_blocks,
            "backdoor_prompts": args.backdoor_prompts,
            "poison_rate": args.poison_rate,
            "backdoor_target": args.backdoor_target,
            "backdoor_copies": args.backdoor_copies,
            "backdoor_boost": args.backdoor_boost,
            "kinds": kinds,
            "fractions": fractions,
            "aggregations": rules,
            "clip_norm": args.clip_norm,
            "delta": args.delta,
        },
        "command": "python benchmarks/robustness.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} 2-core CPU, shared with other work, Python"
        f" {platform.python_version()}, torch {torch.__version__}",
        "discussion": "",
    }

    def save() -> None:
        result["discussion"] = discuss(result)
        (out / "benchmarks" / f"{args.name}.json").write_text(
            json.dumps(result, indent=2) + "\n"
        )

    for rule in rules:
        try:
            clean = run(
                {**base, **rule_overrides(rule, args.nodes), "attack.kind": "backdoor"},
                workdir,
                f"{rule}-clean",
            )
        except Exception as error:  # noqa: BLE001 - record the failure, go on
            result.setdefault("failures", []).append(f"{rule} clean run: {error!r}")
            save()
            continue
        clean_perplexity = clean["summary"]["final_test_perplexity"]
        for kind in kinds:
            for fraction in fractions:
                if fraction == 0:
                    outcome = clean
                else:
                    overrides = {
                        **base,
                        **rule_overrides(rule, args.nodes),
                        "attack.kind": kind,
                        "attack.fraction": fraction,
                    }
                    outcome = run(overrides, workdir, f"{rule}-{kind}-{fraction}")
                attackers = malicious_partitions(args.nodes, fraction, 7)
                bad, good = attacker_scores(outcome["last"], attackers)
                perplexity = outcome["summary"]["final_test_perplexity"]
                result["rows"].append(
                    {
                        "attack": kind,
                        "fraction": fraction,
                        "aggregation": rule,
                        "final_perplexity": perplexity,
                        "ratio_to_clean": perplexity / clean_perplexity,
                        "backdoor_success": outcome["last"].get("backdoor_success"),
                        "backdoor_token_accuracy": outcome["last"].get(
                            "backdoor_token_accuracy"
                        ),
                        "attacker_score": bad,
                        "honest_score": good,
                        "rejected": outcome["last"].get("rejected_updates", {}),
                        "seconds": outcome["seconds"],
                    }
                )
                save()

    for sigma in [float(s) for s in args.sigmas.split(",") if s]:
        overrides = {
            **base,
            "privacy.enabled": True,
            "privacy.clip_norm": args.clip_norm,
            "privacy.noise_multiplier": sigma,
            "privacy.delta": args.delta,
        }
        outcome = run(overrides, workdir, f"dp-{sigma}")
        privacy = outcome["last"].get("privacy") or {}
        result["privacy_curve"].append(
            {
                "noise_multiplier": sigma,
                "epsilon": privacy.get("epsilon"),
                "epsilon_vs_server": privacy.get("epsilon_vs_server"),
                "final_perplexity": outcome["summary"]["final_test_perplexity"],
                "update_norms": outcome["last"].get("update_norms"),
            }
        )
        save()

    save()
    plot(result, out / "benchmarks")
    write_markdown(result, out / "BENCHMARKS.md")
    print(result["discussion"])


if __name__ == "__main__":
    main()
