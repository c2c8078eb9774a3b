"""The run folder `results/<run-id>/` and the files written into it."""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from pathlib import Path
from typing import Any

import yaml

from linguachain.config import ConfigError, RunConfig, flatten, from_nested

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    """Return a sortable run id: UTC timestamp plus 4 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def nested_config(config: RunConfig) -> dict[str, dict[str, Any]]:
    """Return the config as {group: {key: value}}, as Hydra writes it."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flatten(config).items():
        group, name = key.split(".", 1)
        nested.setdefault(group, {})[name] = value
    return nested


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# Keys a resumed run may change: how many rounds, timeouts and what it writes.
RESUMABLE_KEYS = ("train.rounds", "federation.timeout", "consensus.timeout", "output.")


def check_resume_config(path: Path, config: RunConfig) -> None:
    """Raise ConfigError if a resumed run changes a key that shapes its training."""
    if not path.is_file():
        return
    previous = flatten(from_nested(yaml.safe_load(path.read_text(encoding="utf-8"))))
    current = flatten(config)
    changed = [
        f"{key}={previous.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(previous) | set(current))
        if previous.get(key) != current.get(key) and not key.startswith(RESUMABLE_KEYS)
    ]
    if changed:
        raise ConfigError(
            f"The run folder {path.parent} was started with another config"
            f" ({'; '.join(changed)}). Resume it with the same values, or set"
            " output.run_id to start a new run."
        )


class RunFolder:
    """Writes a run's outputs under one folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_file = self.path / "metrics.jsonl"

    @classmethod
    def create(cls, config: RunConfig, path: Path | None = None) -> "RunFolder":
        """Create the run folder from config (or at `path`) and write config.yaml."""
        if path is None:
            run_id = config.output.run_id or new_run_id()
            path = Path(config.output.dir) / run_id
        folder = cls(path.resolve())
        if folder.metrics_file.exists():
            check_resume_config(folder.path / "config.yaml", config)
        with open(folder.path / "config.yaml", "w", encoding="utf-8") as stream:
            yaml.safe_dump(nested_config(config), stream, sort_keys=False)
        return folder

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one round's metrics as a JSON line."""
        with open(self.metrics_file, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(_json_safe(row)) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Read back every metrics line."""
        if not self.metrics_file.exists():
            return []
        lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def write_json(self, name: str, value: Any) -> Path:
        """Write `value` as indented JSON to `name` in the run folder."""
        path = self.path / name
        path.write_text(json.dumps(_json_safe(value), indent=2) + "\n", encoding="utf-8")
        return path

    def plot_perplexity(self) -> Path:
        """Plot held-out perplexity per round to perplexity.png."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_metrics()
        rounds = [row["round"] for row in rows]
        values = [row["test_perplexity"] for row in rows]
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(rounds, values, marker="o")
        axis.set_xlabel("round")
        axis.set_ylabel("held-out perplexity")
        axis.set_yscale("log")
        axis.set_title("Global model on held-out text")
        axis.grid(True, which="both", alpha=0.3)
        figure.tight_layout()
        path = self.path / "perplexity.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path
