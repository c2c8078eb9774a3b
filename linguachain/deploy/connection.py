"""Add a SuperLink connection to Flower's config file with Flower's own writer.

Flower 1.42 has no `flwr` command that adds a connection, so `linguachain
connection add` writes the `[superlink.<name>]` table of
`$FLWR_HOME/config.toml` through `flwr.cli.flower_config`, the module `flwr`
itself reads it with.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.cli.flower_config import write_superlink_connection
from flwr.cli.typing import SuperLinkConnection
from flwr.supercore.address import parse_address
from flwr.supercore.utils import get_flwr_home

logger = logging.getLogger(__name__)


def add_connection(
    name: str,
    address: str,
    root_certificates: str | Path | None = None,
    insecure: bool = False,
) -> Path:
    """Write the SuperLink connection `name` and return the config file path."""
    if not name or "." in name or " " in name:
        raise ValueError(
            f"Invalid connection name {name!r}: use letters, digits, '-' or '_'."
        )
    if parse_address(address) is None:
        raise ValueError(
            f"Invalid SuperLink address {address!r}: expected host:port, for example"
            " 10.0.0.1:9093."
        )
    if insecure and root_certificates:
        raise ValueError("Pass either root_certificates or insecure, not both.")
    if not insecure and root_certificates is None:
        raise ValueError(
            "A TLS connection needs the CA certificate (root_certificates); pass"
            " insecure=True only for a SuperLink started with --insecure."
        )

    certificate_path = None
    if root_certificates is not None:
        certificate = Path(root_certificates).expanduser().resolve()
        if not certificate.is_file():
            raise FileNotFoundError(f"CA certificate not found: {certificate}")
        certificate_path = str(certificate)

    connection = SuperLinkConnection(
        name=name,
        address=address,
        root_certificates=certificate_path,
        insecure=True if insecure else None,
    )
    write_superlink_connection(connection)
    config_file = get_flwr_home() / "config.toml"
    logger.info(
        "Wrote SuperLink connection '%s' (%s) to %s", name, address, config_file
    )
    return config_file
