"""Flower ServerApp: reads the run config and runs the federation."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from linguachain.config import load_config
from linguachain.logs import configure_logging
from linguachain.server_app.run import run_server

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config, then train and commit rounds."""
    configure_logging()
    config = load_config(dict(context.run_config))
    run_server(grid, config)
