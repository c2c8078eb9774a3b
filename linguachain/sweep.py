"""`linguachain-sweep`: Hydra entry point that runs Flower simulations.

Hydra composes `conf/` over the typed schema registered below. Each job is
validated by `linguachain.config` exactly as `flwr run` is, then runs
`flwr.simulation.run_simulation` with its own results folder and ledger (the
job's Hydra output folder). `-m` sweeps over any key, one job at a time. A failed
job writes `failed.json` and the sweep goes on. After the last job,
`linguachain.sweep_summary` writes the sweep's table and plots.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from linguachain.config import ConfigError, RunConfig, from_nested, valid_keys
from linguachain.sweep_summary import FAILED_JOBS, write_failed_job

logger = logging.getLogger(__name__)

ConfigStore.instance().store(name="base_config", node=RunConfig)


def check_overrides(arguments: list[str]) -> None:
    """Reject a misspelled key on the command line before Hydra reports it."""
    import difflib

    keys = set(valid_keys())
    groups = {key.split(".")[0] for key in keys}
    for argument in arguments:
        if argument.startswith("-") or "=" not in argument:
            continue
        key = argument.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra") or key in keys or key in groups:
            continue
        nearest = difflib.get_close_matches(key, sorted(keys | groups), n=1, cutoff=0.5)
        hint = f" Did you mean '{nearest[0]}'?" if nearest else ""
        raise ConfigError(f"Unknown config key '{key}'.{hint}")


def run_job(nested: dict, output_dir: Path) -> dict:
    """Validate one composed config and run it as a Flower simulation."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from linguachain.client_app.app import app as client_app
    from linguachain.logs import configure_logging
    from linguachain.server_app.run import run_server

    config = from_nested(nested)
    summary: dict = {}
    server_app = ServerApp()

    # run_simulation leaves context.run_config empty, so the config travels here.
    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        configure_logging()
        summary.update(run_server(grid, config, output_dir))

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=config.federation.num_nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if not summary:
        raise RuntimeError(f"The simulation ended without a summary; see {output_dir}.")
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    nested = OmegaConf.to_container(cfg, resolve=True)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    # A failed job is recorded for the sweep summary and the sweep goes on.
    try:
        summary = run_job(nested, output_dir)
    except Exception as error:  # noqa: BLE001 - any job failure is reported, not raised
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        logger.exception("Sweep job in %s failed: %s", output_dir, error)
        write_failed_job(output_dir, error)
        return math.nan
    return float(summary["final_test_perplexity"])


def main() -> None:
    """Run `linguachain-sweep`, rejecting unknown keys with the nearest valid one."""
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    _hydra_main()
    failed = sum(FAILED_JOBS)
    if failed:
        print(f"Error: {failed} sweep job(s) failed; see sweep_summary.md.", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
