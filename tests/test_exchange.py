"""Query exchanges that pull replies with a short, growing interval."""

from __future__ import annotations

import time
from types import SimpleNamespace

from linguachain.strategies import exchange


class SlowGrid:
    """Pushes message ids and releases one reply per pull after `delay` pulls."""

    def __init__(self, count: int, delay: int, silent: set[str] = frozenset()) -> None:
        self.ids = [f"m{i}" for i in range(count)]
        self.delay = delay
        self.silent = silent
        self.pulls = 0

    def push_messages(self, messages) -> list[str]:
        return list(self.ids)

    def pull_messages(self, message_ids) -> list[SimpleNamespace]:
        self.pulls += 1
        ready = sorted(i for i in message_ids if i not in self.silent)
        if self.pulls <= self.delay or not ready:
            return []
        reply_id = ready[0]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=reply_id))]


def test_all_replies_collected():
    grid = SlowGrid(count=3, delay=2)
    replies = exchange.send_and_receive(grid, [], timeout=10.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0", "m1", "m2"]
    assert grid.pulls == 5


def test_timeout_returns_partial_replies():
    grid = SlowGrid(count=2, delay=0, silent={"m1"})
    started = time.monotonic()
    replies = exchange.send_and_receive(grid, [], timeout=0.2)
    elapsed = time.monotonic() - started
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert elapsed >= 0.2
    # The interval stops growing at MAX_PULL_SECONDS, so pulls keep coming.
    assert grid.pulls >= 0.2 / exchange.MAX_PULL_SECONDS


def test_no_timeout_waits_for_every_reply():
    grid = SlowGrid(count=2, delay=12)
    replies = exchange.send_and_receive(grid, [], timeout=None)
    assert len(replies) == 2


def test_wrapped_grid_pulls_quickly():
    grid = SlowGrid(count=2, delay=3)
    grid.get_node_ids = lambda: [7, 8]
    wrapped = exchange.QuickPullGrid(grid)
    assert list(wrapped.get_node_ids()) == [7, 8]
    replies = list(wrapped.send_and_receive([], timeout=5.0))
    assert len(replies) == 2
    assert grid.pulls == 5
