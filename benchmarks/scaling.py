"""Scaling study: one simulated federation per node count, measured side by side.

For each number of virtual SuperNodes (4, 16, 64 and 100 by default) this script
starts one Flower simulation in a child process. Each uses preset `micro`, one
CPU per ClientApp and a fixed number of nodes sampled per round for training and
for evaluation. It records:

- round time by phase, from the run's metrics.jsonl (train includes waiting for
  the sampled nodes; aggregate, evaluate and ledger are server-side);
- peak memory of the whole process tree (the child, Ray's raylet, GCS and
  workers), sampled every 0.5 s: the sum of RSS, and the sum of PSS, which
  counts shared pages once;
- bytes sent per round, computed from payload sizes: the float32 model goes to
  every sampled node and comes back from every training node, and the tokenizer
  record goes with every message;
- the ledger's size on disk after the run.

It writes docs/benchmarks/scaling.json, docs/benchmarks/scaling.png and the
"Scaling" section of docs/BENCHMARKS.md. Run from the repository root:

    python benchmarks/scaling.py --data /path/to/wikitext-2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from report import replace_section

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_JSON = REPO_ROOT / "docs" / "benchmarks" / "scaling.json"
OUTPUT_PLOT = REPO_ROOT / "docs" / "benchmarks" / "scaling.png"
BENCHMARKS_PAGE = REPO_ROOT / "docs" / "BENCHMARKS.md"
SECTION_TITLE = "## Scaling with the number of nodes"
MEMORY_GOAL_BYTES = 8 * 1024**3
SAMPLE_INTERVAL_SECONDS = 0.5
FLOAT32_BYTES = 4
PREDICTED_SIZES = (1000, 10000)

logger = logging.getLogger("scaling")


def process_tree_memory(pid: int) -> tuple[int, int]:
    """Return the summed RSS and PSS in bytes of `pid` and all its descendants."""
    try:
        import psutil
    except ImportError:
        return _proc_tree_memory(pid)
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def _proc_tree_memory(pid: int) -> tuple[int, int]:
    """Read the same sums from /proc when psutil is not installed."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    rss = pss = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        stack += children.get(current, [])
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
        except OSError:
            continue
        values = dict(re.findall(r"^(\w+):\s+(\d+) kB", rollup, flags=re.MULTILINE))
        rss += int(values.get("Rss", 0)) * 1024
        pss += int(values.get("Pss", 0)) * 1024
    return rss, pss


class MemorySampler(threading.Thread):
    """Sample a process tree's memory until stopped and keep the peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = 0
        self.peak_pss = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        """Sample every SAMPLE_INTERVAL_SECONDS until `stopped` is set."""
        while not self.stopped.is_set():
            rss, pss = process_tree_memory(self.pid)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.stopped.wait(SAMPLE_INTERVAL_SECONDS)


def job_config(args: argparse.Namespace, nodes: int, folder: Path) -> dict:
    """Return the nested run config of one simulation with `nodes` SuperNodes."""
    sampled = min(nodes, args.sampled_nodes)
    # Flower samples int(available * fraction) nodes; the half node keeps
    # floating-point rounding from dropping one.
    fraction = 1.0 if sampled == nodes else (sampled + 0.5) / nodes
    return {
        "model": {"preset": "micro"},
        "data": {
            "path": str(args.data),
            "train_file": "valid.txt",
            "test_file": "test.txt",
            "eval_blocks": 32,
        },
        "train": {
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "batch_size": 8,
        },
        "federation": {
            "num_nodes": nodes,
            "fraction_train": fraction,
            "fraction_evaluate": fraction,
            "min_nodes": min(2, nodes),
        },
        "output": {
            "save_model": False,
            "max_new_tokens": 8,
            "prompts": "The history of",
        },
        "ledger": {"url": ""},
    }


def run_worker(config_file: Path, folder: Path) -> None:
    """Run one simulation in this process (the child side of `measure`)."""
    from linguachain.sweep import run_job

    run_job(json.loads(config_file.read_text()), folder)


def measure(args: argparse.Namespace, nodes: int, scratch: Path) -> dict[str, Any]:
    """Run one simulation in a child process and return its row of measurements."""
    folder = scratch / f"nodes-{nodes}"
    config_file = scratch / f"nodes-{nodes}.json"
    config_file.write_text(json.dumps(job_config(args, nodes, folder)))
    log_file = scratch / f"nodes-{nodes}.log"
    logger.info("Simulating %d nodes (log: %s)", nodes, log_file)

    # Ray's workers import the ClientApp too, so they need this checkout first.
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    started = time.perf_counter()
    with open(log_file, "w", encoding="utf-8") as log:
        child = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(config_file), str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": path},
        )
        sampler = MemorySampler(child.pid)
        sampler.start()
        returncode = child.wait()
        sampler.stopped.set()
        sampler.join()
    wall_seconds = time.perf_counter() - started
    if returncode != 0:
        tail = log_file.read_text(encoding="utf-8")[-2000:]
        raise RuntimeError(
            f"The {nodes}-node simulation failed ({returncode}):\n{tail}"
        )

    rows = [
        json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]
    rounds = [row for row in rows if row["round"] > 0]
    # The first round also starts Ray's ClientApp actors; later rounds are the
    # steady state, so they are what round time reports when there are any.
    steady = rounds[1:] or rounds
    summary = json.loads((folder / "summary.json").read_text())
    phases = sorted({name for row in steady for name in row["seconds"]})
    phase_seconds = {
        name: sum(row["seconds"].get(name, 0.0) for row in steady) / len(steady)
        for name in phases
    }
    first_round_seconds = sum(rounds[0]["seconds"].values())
    trained = sum(row["nodes"] for row in rounds) / len(rounds)
    sampled = min(nodes, args.sampled_nodes)
    model_bytes = summary["params"] * FLOAT32_BYTES
    tokenizer_bytes = (folder / "tokenizer" / "tokenizer.json").stat().st_size
    # Training: model down and up per node; evaluation: model down only.
    bytes_per_round = (
        model_bytes * (2 * sampled + sampled) + tokenizer_bytes * 2 * sampled
    )
    ledger_bytes = sum(
        path.stat().st_size for path in folder.glob("ledger.db*") if path.is_file()
    )
    return {
        "nodes": nodes,
        "nodes_sampled_per_round": sampled,
        "nodes_trained_per_round": trained,
        "round_seconds": sum(phase_seconds.values()),
        "first_round_seconds": first_round_seconds,
        "phase_seconds": phase_seconds,
        "peak_rss_bytes": sampler.peak_rss,
        "peak_pss_bytes": sampler.peak_pss,
        "bytes_sent_per_round": bytes_per_round,
        "model_bytes": model_bytes,
        "ledger_bytes": ledger_bytes,
        "wall_seconds": wall_seconds,
        "final_test_perplexity": summary["final_test_perplexity"],
    }


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Return the least-squares slope and intercept of ys over xs."""
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0, mean_y
    slope = (
        sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    )
    return slope, mean_y - slope * mean_x


def plot_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Plot round time by phase, peak memory, bytes per round and ledger size."""
    from matplotlib.figure import Figure

    nodes = [row["nodes"] for row in rows]
    figure = Figure(figsize=(11, 7), layout="tight")
    axes = figure.subplots(2, 2)
    phases = sorted({name for row in rows for name in row["phase_seconds"]})
    positions = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    for phase in phases:
        heights = [row["phase_seconds"].get(phase, 0.0) for row in rows]
        axes[0][0].bar(positions, heights, bottom=bottom, label=phase)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes[0][0].set_xticks(positions, [str(n) for n in nodes])
    axes[0][0].set_title("round time by phase (s)")
    axes[0][0].legend(fontsize="small")
    gib = 1024**3
    axes[0][1].plot(
        nodes, [row["peak_rss_bytes"] / gib for row in rows], "o-", label="RSS sum"
    )
    axes[0][1].plot(
        nodes, [row["peak_pss_bytes"] / gib for row in rows], "s-", label="PSS sum"
    )
    axes[0][1].axhline(
        MEMORY_GOAL_BYTES / gib, color="red", linestyle=":", label="8 GiB goal"
    )
    axes[0][1].set_title("peak memory of the process tree (GiB)")
    axes[0][1].legend(fontsize="small")
    axes[1][0].plot(nodes, [row["bytes_sent_per_round"] / 1e6 for row in rows], "o-")
    axes[1][0].set_title("bytes sent per round (MB)")
    axes[1][1].plot(nodes, [row["ledger_bytes"] / 1024 for row in rows], "o-")
    axes[1][1].set_title("ledger size after the run (KiB)")
    for axis in (axes[0][1], axes[1][0], axes[1][1]):
        axis.set_xlabel("virtual nodes")
        axis.grid(True, alpha=0.3)
    axes[0][0].set_xlabel("virtual nodes")
    figure.savefig(path, dpi=90)


def table_lines(result: dict[str, Any]) -> list[str]:
    """Return the section's heading, setup and table of measured rows."""
    gib = 1024**3
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}.",
        f"Measured {result['measured_at']} UTC; {result['rounds']} round(s) per size,"
        f" preset `micro`, {result['sampled_nodes']} nodes sampled per round for"
        " training and evaluation, one CPU per ClientApp, Flower simulation (Ray).",
        "",
        "Round time is the mean over rounds after the first; the first round also"
        " starts Ray's ClientApp actors and is listed on its own.",
        "",
        "| nodes | sampled | round (s) | phases (s) | first round (s) |"
        " peak RSS sum (GiB) | peak PSS sum (GiB) | sent per round (MB) |"
        " ledger (KiB) | run wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in row["phase_seconds"].items())
        lines.append(
            f"| {row['nodes']} | {row['nodes_sampled_per_round']} |"
            f" {row['round_seconds']:.2f} | {phases} |"
            f" {row['first_round_seconds']:.2f} |"
            f" {row['peak_rss_bytes'] / gib:.2f} | {row['peak_pss_bytes'] / gib:.2f} |"
            f" {row['bytes_sent_per_round'] / 1e6:.2f} |"
            f" {row['ledger_bytes'] / 1024:.0f} |"
            f" {row['wall_seconds']:.0f} |"
        )
    return lines


def growth_lines(result: dict[str, Any]) -> list[str]:
    """Return the goal check, the fitted growth and what it predicts."""
    gib = 1024**3
    largest = result["rows"][-1]
    memory = result["growth"]["pss_bytes"]
    seconds = result["growth"]["round_seconds"]
    goal = "met" if largest["peak_rss_bytes"] <= MEMORY_GOAL_BYTES else "missed"
    lines = [
        "",
        f"![scaling plots](benchmarks/{OUTPUT_PLOT.name})",
        "",
        f"Goal of at most 8 GiB at {largest['nodes']} nodes: {goal} (RSS sum"
        f" {largest['peak_rss_bytes'] / gib:.2f} GiB). The RSS sum counts pages shared"
        " between Ray's processes once per process, so the PSS sum is the fairer"
        " total.",
        "",
        "Growth, fitted by least squares over the sizes that sample the same number"
        " of nodes:",
        f"- peak PSS: {memory['slope'] / 1024**2:+.2f} MiB per added virtual node;"
        f" measured {memory['min'] / gib:.2f} to {memory['max'] / gib:.2f} GiB"
        f" ({memory['trend']}).",
        f"- round time: {seconds['slope'] * 1000:+.1f} ms per added virtual node;"
        f" measured {seconds['min']:.1f} to {seconds['max']:.1f} s"
        f" ({seconds['trend']}).",
        "- Bytes per round depend on the nodes sampled, not on the nodes registered."
        " The ledger gains one version block per committed round whatever the node"
        " count.",
        "",
        "What these fits predict for one simulation beyond the measured sizes (an"
        " extrapolation, not a measurement; a flat trend is held at the largest value"
        " measured):",
    ]
    for size in PREDICTED_SIZES:
        predicted_gib = memory["predictions"][str(size)] / gib
        lines.append(
            f"- {size} virtual nodes: about {predicted_gib:.1f} GiB and"
            f" {seconds['predictions'][str(size)]:.1f} s per round."
        )
    fitted = result["growth"]["sizes_fitted"]
    lines += [
        "",
        f"The fits cover {min(fitted)} to {max(fitted)} nodes, so these sizes are far"
        " outside the measured range. Any per-node state that Flower keeps did not"
        " show up in memory between those sizes.",
    ]
    per_node_megabytes = (
        largest["bytes_sent_per_round"] / largest["nodes_sampled_per_round"] / 1e6
    )
    lines += [
        "",
        "Memory stays flat because a simulation runs a fixed pool of ClientApp actors"
        " (one per CPU) whatever the number of virtual SuperNodes, and each actor"
        " caches the data of at most 4 nodes. In a deployment each SuperNode is its"
        " own host, so per-host memory stays at one ClientApp's. The server's traffic"
        " per round grows with the nodes sampled, not the nodes registered:"
        f" {per_node_megabytes:.2f} MB per sampled node for the micro preset, and"
        " proportionally more for larger presets. The times come from a"
        f" {result['machine']}, so treat them as rough.",
        "",
    ]
    return lines


def fit_growth(nodes: list[float], values: list[float]) -> dict[str, Any]:
    """Fit values against node count, call the trend and predict larger sizes."""
    slope, intercept = fit_line(nodes, values)
    low, high = min(values), max(values)
    # A fitted change across the measured range below 10% of the mean, or a
    # falling one, is within this shared machine's noise.
    change = slope * (max(nodes) - min(nodes))
    growing = slope > 0 and change > 0.1 * (sum(values) / len(values))
    predictions = {
        str(size): max(high, intercept + slope * size) if growing else high
        for size in PREDICTED_SIZES
    }
    return {
        "slope": slope,
        "intercept": intercept,
        "min": low,
        "max": high,
        "trend": "growing" if growing else "flat within noise",
        "predictions": predictions,
    }


def growth_estimates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit memory and round time against node count over comparable sizes."""
    # Sizes smaller than the sample train every node, so they do less work per
    # round; the fits use the sizes that sample the full number when there are two.
    full = max(row["nodes_sampled_per_round"] for row in rows)
    comparable = [row for row in rows if row["nodes_sampled_per_round"] == full]
    if len(comparable) < 2:
        comparable = rows
    nodes = [float(row["nodes"]) for row in comparable]
    return {
        "sizes_fitted": [row["nodes"] for row in comparable],
        "pss_bytes": fit_growth(
            nodes, [float(r["peak_pss_bytes"]) for r in comparable]
        ),
        "round_seconds": fit_growth(nodes, [r["round_seconds"] for r in comparable]),
    }


def main() -> None:
    """Measure every node count, then write the JSON, the plot and the page section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 16, 64, 100])
    parser.add_argument("--sampled-nodes", type=int, default=6, help="Nodes per round.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(
            os.environ.get(
                "LINGUACHAIN_TEST_DATA",
                REPO_ROOT.parent / "shared" / "data" / "wikitext-2",
            )
        ),
        help="Folder with WikiText-2 valid.txt (training pool) and test.txt"
        " (default: $LINGUACHAIN_TEST_DATA or ../shared/data/wikitext-2).",
    )
    parser.add_argument(
        "--worker", nargs=2, metavar=("CONFIG", "FOLDER"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Rewrite the plot and the BENCHMARKS.md section from scaling.json.",
    )
    args = parser.parse_args()
    if args.report_only:
        result = json.loads(OUTPUT_JSON.read_text(encoding="utf-8"))
        result["growth"] = growth_estimates(result["rows"])
        write_outputs(result)
        return
    if args.worker:
        run_worker(Path(args.worker[0]), Path(args.worker[1]))
        return

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("valid.txt", "test.txt"):
        if not (args.data / name).is_file():
            raise SystemExit(
                f"WikiText-2 file not found: {args.data / name}. Pass --data with a"
                " folder holding valid.txt and test.txt."
            )
    rows = []
    with tempfile.TemporaryDirectory(prefix="linguachain-scaling-") as scratch:
        for nodes in sorted(args.nodes):
            row = measure(args, nodes, Path(scratch))
            logger.info(
                "%d nodes: %.2f s per round, peak RSS %.2f GiB (PSS %.2f GiB)",
                nodes,
                row["round_seconds"],
                row["peak_rss_bytes"] / 1024**3,
                row["peak_pss_bytes"] / 1024**3,
            )
            rows.append(row)

    command = "python benchmarks/scaling.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in (
            ("nodes", args.nodes),
            ("rounds", args.rounds),
            ("sampled_nodes", args.sampled_nodes),
            ("local_steps", args.local_steps),
        )
    )
    result = {
        "command": command,
        "machine": f"{os.cpu_count()}-core CPU ({platform.machine()}),"
        " shared with other work",
        "measured_at": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "rounds": args.rounds,
        "sampled_nodes": args.sampled_nodes,
        "rows": rows,
        "growth": growth_estimates(rows) if len(rows) > 1 else {},
    }
    write_outputs(result)


def write_outputs(result: dict[str, Any]) -> None:
    """Write scaling.json, the plot and (with two sizes or more) the page section."""
    OUTPUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT_JSON.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot_rows(result["rows"], OUTPUT_PLOT)
    if len(result["rows"]) > 1:
        lines = table_lines(result) + growth_lines(result)
        replace_section(SECTION_TITLE, lines, BENCHMARKS_PAGE)
    logger.info("Wrote %s, %s and %s", OUTPUT_JSON, OUTPUT_PLOT, BENCHMARKS_PAGE)


if __name__ == "__main__":
    main()
