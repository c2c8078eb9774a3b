"""The run report: one self-contained `report.html` per run folder.

Plots are embedded as base64 PNG and the styles are inline, so the page opens
from disk with no network access. Sections for metrics a run did not record
say so instead of disappearing.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import jinja2

from linguachain.server_app.plots import (
    loss_figure,
    node_series_figure,
    perplexity_figure,
    phase_figure,
    to_base64_png,
)
from linguachain.server_app.report_template import REPORT_TEMPLATE
from linguachain.server_app.run_data import BlockView, RunData, load_run

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"


def format_number(value: Any) -> str:
    """Format a metric for a table cell: 4 significant digits, '-' if missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() or abs(value) >= 1e6:
        return f"{value:,.0f}"
    return f"{value:,.4g}"


def format_utc(timestamp: int) -> str:
    """Format seconds since the Unix epoch as a UTC date and time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def describe_block(block: BlockView) -> str:
    """Summarise a block's payload in one line."""
    payload = block.payload
    if block.kind == "genesis":
        parts = [f"initial model {str(payload.get('model_hash', ''))[:12]}"]
        if "params" in payload:
            parts.append(f"{payload['params']:,} parameters")
        return ", ".join(parts)
    if block.kind == "version":
        metrics = payload.get("metrics", {})
        perplexity = metrics.get("test_perplexity")
        text = (
            f"round {payload.get('round')}: model {str(payload.get('model_hash'))[:12]}"
        )
        if perplexity is not None:
            text += f", held-out perplexity {format_number(perplexity)}"
        return text
    keys = ", ".join(sorted(payload)[:8])
    return f"round {payload['round']}: {keys}" if "round" in payload else keys


def summary_rows(run: RunData) -> list[tuple[str, str]]:
    """Return the headline numbers of a run as (label, text) pairs."""
    summary = run.summary
    ledger = summary.get("ledger", {})
    labels = [
        ("rounds", summary.get("rounds")),
        ("nodes per round (max)", summary.get("num_nodes")),
        ("model parameters", summary.get("params")),
        ("held-out perplexity at round 0", summary.get("initial_test_perplexity")),
        ("final held-out perplexity", summary.get("final_test_perplexity")),
        ("final bits per byte", summary.get("final_test_bits_per_byte")),
        ("rounds committed", summary.get("committed_rounds")),
        ("wall time (s)", summary.get("wall_seconds")),
        ("ledger valid at the end of the run", ledger.get("valid")),
        ("final model hash", summary.get("final_model_hash")),
    ]
    return [
        (label, format_number(value)) for label, value in labels if value is not None
    ]


def node_sections(run: RunData) -> list[dict[str, Any]]:
    """Build the per-node sections: tokens, robustness, epsilon and balances."""
    tokens_fallback = ""
    totals = [(row["round"], row["tokens"]) for row in run.metrics if row.get("tokens")]
    if totals:
        listed = ", ".join(f"round {r}: {t:,}" for r, t in totals)
        tokens_fallback = f"Tokens of all nodes together: {listed}."
    sections = [
        {
            "anchor": "contributions",
            "title": "Node contributions",
            "series": run.node_tokens(),
            "ylabel": "tokens",
            "stacked": True,
            "description": "Tokens in each node's training partition, which is its"
            " FedAvg weight, per round.",
            "fallback": tokens_fallback,
        },
        {
            "anchor": "robustness",
            "title": "Robustness scores",
            "series": run.robustness(),
            "ylabel": "robustness score",
            "description": "Trust score the robust aggregation gave each node's"
            " update.",
        },
        {
            "anchor": "privacy",
            "title": "Differential privacy (epsilon)",
            "series": run.epsilon(),
            "ylabel": "epsilon spent",
            "description": "Privacy budget spent so far (epsilon at the run's delta).",
        },
        {
            "anchor": "balances",
            "title": "LinguaCoin balances",
            "series": run.balances(),
            "ylabel": "balance (LinguaCoin)",
            "description": "Balance of each account after each round.",
            "final": run.final_balances,
        },
    ]
    for section in sections:
        section.setdefault("fallback", "")
        section.setdefault("final", None)
        series = section["series"]
        if series:
            section["nodes"] = sorted({n for values in series.values() for n in values})
            figure = node_series_figure(
                series, section["ylabel"], section.get("stacked", False)
            )
            section["plot"] = to_base64_png(figure)
    return sections


def render_report(run: RunData) -> str:
    """Render the report page of a loaded run."""
    environment = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # Phases first, then their parts ("aggregate.sum"), which the phases include.
    phase_rows = [
        (row.get("round"), {**(row.get("seconds") or {}), **(row.get("subphase_seconds") or {})})
        for row in run.metrics
    ]
    phases: list[str] = []
    for _, seconds in phase_rows:
        phases += [name for name in seconds if name not in phases]
    plots = {
        "perplexity": to_base64_png(perplexity_figure(run.metrics)),
        "loss": to_base64_png(loss_figure(run.metrics)),
        "phases": to_base64_png(phase_figure(run.metrics)),
    }
    return environment.from_string(REPORT_TEMPLATE).render(
        run=run,
        summary_rows=summary_rows(run),
        plots=plots,
        phases=phases,
        phase_rows=phase_rows,
        node_sections=node_sections(run),
        fmt=format_number,
        utc=format_utc,
        describe=describe_block,
        written_at=format_utc(int(time.time())),
    )


def write_report(folder: str | Path) -> Path:
    """Write `report.html` into a finished run folder and return its path."""
    run = load_run(folder)
    path = run.folder / REPORT_NAME
    path.write_text(render_report(run), encoding="utf-8")
    logger.info("Run report: %s", path)
    return path


def write_run_report(folder: str | Path) -> Path | None:
    """Write the report at the end of a run; log a failure instead of raising it."""
    try:
        return write_report(folder)
    except Exception:  # noqa: BLE001 - the run's results are already on disk
        logger.exception(
            "Could not write the run report in %s; rebuild it with"
            " `linguachain report --run %s`",
            folder,
            folder,
        )
        return None
