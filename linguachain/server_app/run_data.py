"""Load a finished run folder for reports, notebooks and sweep summaries.

A run folder holds `config.yaml`, `metrics.jsonl`, `summary.json`,
`generations.json` and the ledger database. Metrics that only some runs record
(per-node tokens, robustness scores, privacy budget, LinguaCoin balances) are
read if present and left as None otherwise, so a report can say what the run
did not record instead of failing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import MetaData, Table, inspect, select

from linguachain.ledger.chain import Ledger, VerifyReport

logger = logging.getLogger(__name__)

# Keys that runs with per-node accounting, robust aggregation, differential
# privacy or LinguaCoin rewards may add to a metrics row; the first one found wins.
# NOTE: only node_tokens is written today; the other names are expected ones, so a
# strategy that records these metrics under another key must add it here.
NODE_TOKENS_KEYS = ("node_tokens", "contributions")
ROBUSTNESS_KEYS = ("robustness_scores", "robustness_score", "robustness")
EPSILON_KEYS = ("epsilon", "privacy_epsilon", "dp_epsilon")
BALANCE_KEYS = ("balances", "linguacoin_balances")

# Block columns every ledger has; any other non-empty column is consensus
# evidence (attestations, signatures) and is shown as such.
BASE_BLOCK_COLUMNS = ("id", "height", "hash", "parent_hash", "kind", "timestamp")


@dataclass
class BlockView:
    """One ledger block flattened for display."""

    height: int
    kind: str
    hash: str
    parent_hash: str
    timestamp: int
    proposer: str
    payload: dict[str, Any]
    # Consensus evidence: non-empty extra columns and payload keys about
    # attestations or signatures, as short printable strings.
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass
class RunData:
    """Everything a report shows about one finished run."""

    folder: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    generations: list[dict[str, Any]]
    blocks: list[BlockView]
    verify: VerifyReport | None
    ledger_error: str | None
    final_balances: dict[str, float] | None

    @property
    def run_id(self) -> str:
        """Return the run folder's name, which is the run id."""
        return self.folder.name

    @property
    def rounds(self) -> list[int]:
        """Return the round numbers recorded in metrics.jsonl (0 is the start)."""
        return [int(row["round"]) for row in self.metrics]

    def series(self, keys: tuple[str, ...]) -> dict[int, Any] | None:
        """Return {round: value} for the first of `keys` any row records, or None."""
        for key in keys:
            values = {
                int(row["round"]): row[key]
                for row in self.metrics
                if row.get(key) is not None
            }
            if values:
                return values
        return None

    def node_tokens(self) -> dict[int, dict[str, float]] | None:
        """Return {round: {node: tokens}} from metrics rows or ledger data blocks."""
        recorded = self.series(NODE_TOKENS_KEYS)
        if recorded:
            return {r: _as_node_map(v) for r, v in recorded.items() if _as_node_map(v)}
        from_blocks = _node_values_from_blocks(self.blocks, ("tokens", "num_examples"))
        return from_blocks or None

    def robustness(self) -> dict[int, dict[str, float]] | None:
        """Return {round: {node: score}} from metrics rows or ledger data blocks."""
        recorded = self.series(ROBUSTNESS_KEYS)
        if recorded:
            return {r: _as_node_map(v) for r, v in recorded.items()}
        if self.metrics:
            # Metrics rows carry every score a rule gave. The 1.0 that a ledger
            # commitment holds for an unscored node is a reward default, not a score.
            return None
        keys = ("robustness_score", "robustness", "score")
        return _node_values_from_blocks(self.blocks, keys) or None

    def epsilon(self) -> dict[int, dict[str, float]] | None:
        """Return {round: {node or "run": epsilon}} spent so far, or None."""
        recorded = self.series(EPSILON_KEYS)
        if recorded:
            return {r: _as_node_map(v) for r, v in recorded.items()}
        keys = ("epsilon", "privacy_spent")
        return _node_values_from_blocks(self.blocks, keys) or None

    def balances(self) -> dict[int, dict[str, float]] | None:
        """Return LinguaCoin balances per round, or None if the run records none."""
        recorded = self.series(BALANCE_KEYS)
        if recorded:
            return {r: _as_node_map(v) for r, v in recorded.items()}
        return None


def _as_node_map(value: Any) -> dict[str, float]:
    """Normalise a per-node metric to {node: number}; a plain number is the run's."""
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items() if _is_number(v)}
    if isinstance(value, list):
        mapped: dict[str, float] = {}
        for item in value:
            if isinstance(item, dict):
                node = _node_id(item)
                number = next((item[k] for k in ("value", "tokens") if k in item), None)
                if node is not None and _is_number(number):
                    mapped[node] = float(number)
        return mapped
    if _is_number(value):
        return {"run": float(value)}
    return {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _node_id(item: dict[str, Any]) -> str | None:
    for key in ("node", "node_id", "account", "address"):
        if key in item:
            return str(item[key])
    return None


def _node_values_from_blocks(
    blocks: list[BlockView], value_keys: tuple[str, ...]
) -> dict[int, dict[str, float]]:
    """Collect per-node numbers from data blocks that list one entry per node."""
    found: dict[int, dict[str, float]] = {}
    for block in blocks:
        if block.kind != "data" or "round" not in block.payload:
            continue
        for entries in block.payload.values():
            if not isinstance(entries, list):
                continue
            for entry in entries:
                if not isinstance(entry, dict) or _node_id(entry) is None:
                    continue
                value = next((entry[k] for k in value_keys if k in entry), None)
                if _is_number(value):
                    node_map = found.setdefault(int(block.payload["round"]), {})
                    node_map[str(_node_id(entry))] = float(value)
    return found


def _printable(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def block_view(block: Any) -> BlockView:
    """Flatten an ORM block into a BlockView, keeping any consensus evidence."""
    payload = json.loads(block.payload)
    evidence: dict[str, str] = {}
    for column in inspect(block).mapper.column_attrs:
        name = column.key
        if name in BASE_BLOCK_COLUMNS or name in ("payload", "proposer"):
            continue
        value = getattr(block, name)
        if value not in (None, b"", "", 0):
            evidence[name] = _printable(value)
    for key, value in payload.items():
        if "attest" in key or "sign" in key:
            evidence[key] = _printable(value)
    return BlockView(
        height=block.height,
        kind=block.kind,
        hash=block.hash,
        parent_hash=block.parent_hash,
        timestamp=block.timestamp,
        proposer=block.proposer or "",
        payload=payload,
        evidence=evidence,
    )


def read_account_balances(ledger: Ledger) -> dict[str, float] | None:
    """Return {account: balance} from the ledger, or None if it keeps no accounts."""
    balances_method = getattr(ledger, "balances", None)
    if callable(balances_method):
        result = balances_method()
        if isinstance(result, dict):
            return {str(k): float(v) for k, v in result.items()}
        return _as_node_map(list(result)) or None

    # Without a balances API, read an `accounts` table with a balance column.
    if "accounts" not in inspect(ledger.engine).get_table_names():
        return None
    table = Table("accounts", MetaData(), autoload_with=ledger.engine)
    if "balance" not in table.columns:
        return None
    key_column = next(
        (
            table.columns[c]
            for c in ("address", "account", "name", "id")
            if c in table.columns
        ),
        None,
    )
    if key_column is None:
        return None
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(key_column, table.columns["balance"]))
        return {str(key): float(balance) for key, balance in rows}


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def find_ledger(folder: Path, summary: dict[str, Any]) -> str | None:
    """Return the run's ledger: ledger.db in the folder, else the summary's URL."""
    path = folder / "ledger.db"
    if path.is_file():
        return str(path)
    url = str(summary.get("ledger", {}).get("url") or "")
    if url.startswith("sqlite:///"):
        # Opening a missing SQLite file would create an empty ledger.
        return url if Path(url.removeprefix("sqlite:///")).is_file() else None
    return url or None


def load_run(folder: str | Path) -> RunData:
    """Read a run folder; a missing or unreadable ledger is reported, not raised."""
    folder = Path(folder).resolve()
    if not (folder / "metrics.jsonl").is_file():
        raise FileNotFoundError(
            f"No metrics.jsonl in {folder}: pass the folder of a run"
            " (results/<run-id>/)."
        )
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    metrics = [json.loads(line) for line in lines if line.strip()]
    summary = _read_json(folder / "summary.json", {})
    generations = _read_json(folder / "generations.json", [])

    blocks: list[BlockView] = []
    report: VerifyReport | None = None
    ledger_error: str | None = None
    balances: dict[str, float] | None = None
    location = find_ledger(folder, summary)
    if location is None:
        ledger_error = f"no ledger found for this run in {folder}"
    else:
        ledger = Ledger.open(location)
        try:
            blocks = [block_view(block) for block in ledger.blocks()]
            report = ledger.verify()
            balances = read_account_balances(ledger)
        except Exception as error:  # noqa: BLE001 - the report shows any ledger fault
            ledger_error = f"{type(error).__name__}: {error}"
            logger.warning(
                "Could not read the ledger at %s: %s", location, ledger_error
            )
        finally:
            ledger.close()
    return RunData(
        folder=folder,
        config=config,
        metrics=metrics,
        summary=summary,
        generations=generations,
        blocks=blocks,
        verify=report,
        ledger_error=ledger_error,
        final_balances=balances,
    )
