"""The node config a SuperNode passes to its ClientApp (`--node-config`).

Keys, with dashes as Flower's own `partition-id` and `num-partitions`:

    partition-id    required: this node's partition of the training pool,
                    from 0 to num-partitions - 1
    num-partitions  required: number of partitions of the training pool
    data-path       folder of this node's text files; overrides `data.path`
    kit-path        this node's kit folder (`node-<i>/` of the provisioned kits);
                    secure aggregation and consensus read their keys from it
    ledger-url      this node's ledger replica: a SQLite file path or a
                    database URL
    bls-key         this node's BLS key file; overrides the key in `kit-path`

In simulation Flower sets `partition-id` and `num-partitions` itself, and a
node without `kit-path` or `ledger-url` keeps its key and replica in the run
folder (see `linguachain.client_app.validator`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
DATA_PATH = "data-path"
KIT_PATH = "kit-path"
LEDGER_URL = "ledger-url"
BLS_KEY = "bls-key"
NODE_CONFIG_KEYS = (
    PARTITION_ID,
    NUM_PARTITIONS,
    DATA_PATH,
    KIT_PATH,
    LEDGER_URL,
    BLS_KEY,
)


@dataclass(frozen=True)
class NodeSettings:
    """A SuperNode's node config, validated."""

    partition_id: int
    num_partitions: int
    data_path: str = ""
    kit_path: str = ""
    ledger_url: str = ""
    bls_key: str = ""


def read_node_config(node_config: Mapping[str, object]) -> NodeSettings:
    """Validate a node config and return its settings."""
    for key in (PARTITION_ID, NUM_PARTITIONS):
        if key not in node_config:
            raise ValueError(
                f"The node config has no '{key}'; start the SuperNode with"
                f" --node-config \"{PARTITION_ID}=0 {NUM_PARTITIONS}=2\"."
            )
    unknown = sorted(set(node_config) - set(NODE_CONFIG_KEYS))
    if unknown:
        # Flower may add its own keys; a misspelled linguachain key only warns.
        logger.warning(
            "Ignoring unknown node config keys %s; linguachain reads %s",
            unknown,
            ", ".join(NODE_CONFIG_KEYS),
        )
    try:
        partition_id = int(node_config[PARTITION_ID])  # type: ignore[call-overload]
        num_partitions = int(node_config[NUM_PARTITIONS])  # type: ignore[call-overload]
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"'{PARTITION_ID}' and '{NUM_PARTITIONS}' must be integers, got"
            f" {node_config[PARTITION_ID]!r} and {node_config[NUM_PARTITIONS]!r}."
        ) from error
    if num_partitions < 1 or not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"Invalid node config: {PARTITION_ID}={partition_id} with"
            f" {NUM_PARTITIONS}={num_partitions}; expected 0 <= {PARTITION_ID} <"
            f" {NUM_PARTITIONS}."
        )

    settings = NodeSettings(
        partition_id=partition_id,
        num_partitions=num_partitions,
        data_path=str(node_config.get(DATA_PATH, "")),
        kit_path=str(node_config.get(KIT_PATH, "")),
        ledger_url=str(node_config.get(LEDGER_URL, "")),
        bls_key=str(node_config.get(BLS_KEY, "")),
    )
    for key, value in ((DATA_PATH, settings.data_path), (KIT_PATH, settings.kit_path)):
        if value and not Path(value).expanduser().is_dir():
            raise ValueError(f"The node config's '{key}' is not a folder: {value}")
    if settings.bls_key and not Path(settings.bls_key).expanduser().is_file():
        raise ValueError(
            f"The node config's '{BLS_KEY}' is not a file: {settings.bls_key}; point"
            f" it at the node kit's bls_key.json or drop it to use '{KIT_PATH}'."
        )
    return settings
