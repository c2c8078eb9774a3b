"""Route linguachain's log records through Flower's logger.

Flower streams the records of its `flwr` logger to `flwr run --stream` and to
the SuperLink and SuperNode logs, so linguachain's records go there too.
"""

from __future__ import annotations

import logging

PACKAGE_LOGGER = "linguachain"


class _ForwardToFlower(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("flwr").handle(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Send linguachain records at `level` and above to Flower's handlers, once."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(level)
    if not any(isinstance(h, _ForwardToFlower) for h in logger.handlers):
        logger.addHandler(_ForwardToFlower())
    logger.propagate = False
