"""Query exchanges with nodes that pull replies sooner than Flower's default.

Flower 1.42's `Grid.send_and_receive` pulls every 0.1 s under
`run_simulation` (`InMemoryGrid.pull_interval`) and every 3 s in a ServerApp
that a SuperLink runs (`HttpGrid`), which is what `flwr run` uses in
simulation and in deployment alike.
Consensus and decryption replies mostly come within tenths of a second, so
`send_and_receive` here pulls after 5 ms first and grows the interval by half,
up to 50 ms, through the same public `push_messages` and `pull_messages` calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

# Intervals between pulls for the replies of a query, in seconds.
FIRST_PULL_SECONDS = 0.005
MAX_PULL_SECONDS = 0.05


def send_and_receive(
    grid: Grid, messages: Iterable[Message], timeout: float | None
) -> list[Message]:
    """Push `messages` and pull replies until all arrived or `timeout` seconds passed.

    A `timeout` of None waits for every reply, as in Flower.
    """
    pending = set(grid.push_messages(messages))
    end = None if timeout is None else time.monotonic() + timeout
    interval = FIRST_PULL_SECONDS
    replies: list[Message] = []
    while pending:
        received = list(grid.pull_messages(pending))
        replies.extend(received)
        pending.difference_update(reply.metadata.reply_to_message_id for reply in received)
        left = None if end is None else end - time.monotonic()
        if not pending or (left is not None and left <= 0):
            break
        time.sleep(interval if left is None else min(interval, left))
        interval = min(1.5 * interval, MAX_PULL_SECONDS)
    return replies
