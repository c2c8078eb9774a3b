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

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid
from flwr.supercore.run import Run

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


class QuickPullGrid(Grid):
    """A Grid whose `send_and_receive` pulls like the function above.

    Every other call goes to the wrapped grid, so Flower's strategies (train and
    evaluate exchanges) get the short pull interval too.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return send_and_receive(self.grid, messages, timeout)
