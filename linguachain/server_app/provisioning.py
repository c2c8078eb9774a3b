"""Kits for a run: provision them into the run folder or use provisioned ones."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from flwr.serverapp import Grid

from linguachain.config import RunConfig
from linguachain.privacy.kits import SERVER_DIR, provision
from linguachain.privacy.threshold import default_threshold

logger = logging.getLogger(__name__)

KITS_FOLDER = "kits"


def prepare_kits(config: RunConfig, run_folder: Path, grid: Grid) -> RunConfig:
    """Return the config with `secure_aggregation.kit_dir` pointing at usable kits.

    With `kit_dir` set, the kits provisioned there are used as they are. With it
    empty (simulation), fresh kits for every node are written to
    `<run_folder>/kits`, and the returned config, which the server sends to the
    nodes, points them there.
    """
    secure = config.secure_aggregation
    if secure.scheme == "none":
        return config
    if secure.kit_dir:
        server_kit = Path(secure.kit_dir) / SERVER_DIR
        if not server_kit.is_dir():
            raise FileNotFoundError(
                f"server kit {server_kit} not found; run `linguachain provision "
                f"--nodes N --out {secure.kit_dir}` first or leave "
                "secure_aggregation.kit_dir empty to provision in the run folder"
            )
        logger.info("Using the kits provisioned in %s", secure.kit_dir)
        return config

    # Simulation partitions are numbered 0..num_supernodes-1, which can exceed
    # federation.num_nodes when `flwr run` starts more SuperNodes.
    num_nodes = max(config.federation.num_nodes, len(list(grid.get_node_ids())))
    threshold = secure.threshold or default_threshold(num_nodes)
    kit_dir = run_folder / KITS_FOLDER
    provision(
        kit_dir,
        num_nodes,
        ckks_parameter_set=secure.ckks_parameters,
        paillier_modulus_bits=secure.paillier_modulus_bits,
        threshold=threshold,
        paillier=secure.scheme == "paillier",
    )
    logger.info(
        "Provisioned %s kits for %d nodes in %s (secret keys stay in the node "
        "folders; the server loads only %s/)",
        secure.scheme,
        num_nodes,
        kit_dir,
        SERVER_DIR,
    )
    return dataclasses.replace(
        config,
        secure_aggregation=dataclasses.replace(secure, kit_dir=str(kit_dir)),
    )
