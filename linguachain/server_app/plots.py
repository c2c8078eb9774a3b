"""Matplotlib figures of a run: perplexity, loss, phase times and per-node series.

Each function returns a `matplotlib.figure.Figure` built without pyplot, so no
GUI backend or global figure state is involved: the report embeds it, a notebook
displays it and `save_png` writes it.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

FIGURE_SIZE = (6.0, 3.4)


def perplexity_figure(metrics: list[dict[str, Any]]) -> Figure:
    """Plot held-out perplexity per round on a log scale."""
    figure = Figure(figsize=FIGURE_SIZE, layout="tight")
    axis = figure.subplots()
    rounds = [row["round"] for row in metrics]
    axis.plot(rounds, [row["test_perplexity"] for row in metrics], marker="o")
    axis.set_xlabel("round")
    axis.set_ylabel("held-out perplexity")
    axis.set_xticks(rounds)
    axis.set_yscale("log")
    axis.grid(True, which="both", alpha=0.3)
    return figure


def loss_figure(metrics: list[dict[str, Any]]) -> Figure:
    """Plot held-out loss and the nodes' mean training loss per round."""
    figure = Figure(figsize=FIGURE_SIZE, layout="tight")
    axis = figure.subplots()
    rounds = [row["round"] for row in metrics]
    axis.plot(
        rounds, [row["test_loss"] for row in metrics], marker="o", label="held-out"
    )
    trained = [
        (row["round"], row["train_loss"]) for row in metrics if row.get("train_loss")
    ]
    if trained:
        axis.plot(*zip(*trained, strict=True), marker="s", label="training (node mean)")
    axis.set_xlabel("round")
    axis.set_ylabel("cross-entropy loss (nats/token)")
    axis.set_xticks(rounds)
    axis.legend()
    axis.grid(True, alpha=0.3)
    return figure


def phase_figure(metrics: list[dict[str, Any]]) -> Figure:
    """Stack the seconds each phase took in every round."""
    rows = [row for row in metrics if row.get("seconds")]
    phases: list[str] = []
    for row in rows:
        phases += [name for name in row["seconds"] if name not in phases]
    figure = Figure(figsize=FIGURE_SIZE, layout="tight")
    axis = figure.subplots()
    rounds = [row["round"] for row in rows]
    bottom = [0.0] * len(rows)
    for phase in phases:
        heights = [float(row["seconds"].get(phase) or 0.0) for row in rows]
        axis.bar(rounds, heights, bottom=bottom, label=phase)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axis.set_xlabel("round")
    axis.set_ylabel("seconds")
    axis.set_xticks(rounds)
    axis.legend(fontsize="small")
    return figure


def node_series_figure(
    series: dict[int, dict[str, float]], ylabel: str, stacked: bool = False
) -> Figure:
    """Plot one value per node per round, as lines or stacked bars."""
    nodes = sorted({node for values in series.values() for node in values})
    rounds = sorted(series)
    figure = Figure(figsize=FIGURE_SIZE, layout="tight")
    axis = figure.subplots()
    bottom = [0.0] * len(rounds)
    for node in nodes:
        values = [series[r].get(node) for r in rounds]
        if stacked:
            heights = [v or 0.0 for v in values]
            axis.bar(rounds, heights, bottom=bottom, label=node)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        else:
            points = [
                (r, v) for r, v in zip(rounds, values, strict=True) if v is not None
            ]
            axis.plot(*zip(*points, strict=True), marker="o", label=node)
    axis.set_xlabel("round")
    axis.set_ylabel(ylabel)
    axis.set_xticks(rounds)
    if len(nodes) <= 12:
        axis.legend(fontsize="small", title="node")
    axis.grid(True, alpha=0.3)
    return figure


def to_base64_png(figure: Figure) -> str:
    """Render a figure as base64 PNG text."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def save_png(figure: Figure, path: Path) -> Path:
    """Write a figure to `path` as PNG."""
    figure.savefig(path, dpi=100)
    return path
