"""Tests for the stake-weighted proposer draw and the quorum rule."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import pytest

from linguachain.ledger.constants import ProposerParameterError, StakeError
from linguachain.ledger.proposer import (
    get_proposer_index,
    get_total_stake,
    quorum_reached,
)

SEED = hashlib.sha256(b"vdf output").digest()
STAKES = [("validator-a", 100), ("validator-b", 200), ("validator-c", 700)]


def test_proposer_is_deterministic() -> None:
    first = [get_proposer_index(STAKES, SEED, height) for height in range(50)]
    second = [get_proposer_index(STAKES, SEED, height) for height in range(50)]

    assert first == second


def test_proposer_ignores_table_order() -> None:
    reordered = list(reversed(STAKES))

    for height in range(50):
        assert get_proposer_index(reordered, SEED, height) == get_proposer_index(
            STAKES, SEED, height
        )


def test_proposer_depends_on_seed_and_height() -> None:
    by_height = {get_proposer_index(STAKES, SEED, height) for height in range(100)}
    other_seed = hashlib.sha256(b"other vdf output").digest()
    by_seed = [get_proposer_index(STAKES, other_seed, height) for height in range(100)]

    assert len(by_height) == 3
    assert by_seed != [get_proposer_index(STAKES, SEED, h) for h in range(100)]


def test_proposer_draw_proportional_to_stake() -> None:
    draws = 20_000
    counts = Counter(
        get_proposer_index(STAKES, SEED, height) for height in range(draws)
    )
    total_stake = get_total_stake(STAKES)

    for validator_id, stake in STAKES:
        share = counts[validator_id] / draws
        # Binomial standard deviation is at most 0.0035 here, so 0.02 is over 5 sigma.
        assert share == pytest.approx(stake / total_stake, abs=0.02)


def test_zero_stake_never_drawn() -> None:
    stakes = [("bonded", 5), ("unbonded", 0)]

    proposers = {get_proposer_index(stakes, SEED, height) for height in range(500)}

    assert proposers == {"bonded"}


def test_single_validator_always_drawn() -> None:
    assert get_proposer_index([("only", 1)], SEED, 0) == "only"


@pytest.mark.parametrize(
    "stakes",
    [
        [],
        [("a", 0), ("b", 0)],
        [("a", -1), ("b", 5)],
        [("a", 5), ("a", 5)],
        [("a", 1.5)],
        [("a", True)],
        [("", 5)],
    ],
)
def test_proposer_rejects_bad_stake_table(stakes: list[tuple[str, int]]) -> None:
    with pytest.raises(StakeError):
        get_proposer_index(stakes, SEED, 1)


def test_zero_total_stake_is_value_error() -> None:
    with pytest.raises(ValueError, match="total stake is 0"):
        get_proposer_index([("a", 0)], SEED, 1)


@pytest.mark.parametrize(
    ("seed", "height"), [(b"", 1), ("seed", 1), (SEED, -1), (SEED, 2**64)]
)
def test_proposer_rejects_bad_seed_or_height(seed: Any, height: int) -> None:
    with pytest.raises(ProposerParameterError):
        get_proposer_index(STAKES, seed, height)


@pytest.mark.parametrize(
    ("signed", "total", "reached"),
    [
        (2, 3, True),
        (1, 3, False),
        (3, 3, True),
        (0, 3, False),
        (66, 100, False),
        (67, 100, True),
        (199, 300, False),
        (200, 300, True),
        (2 * 10**30, 3 * 10**30, True),
        (2 * 10**30 - 1, 3 * 10**30, False),
    ],
)
def test_quorum_reached(signed: int, total: int, reached: bool) -> None:
    assert quorum_reached(signed, total) is reached


@pytest.mark.parametrize(
    ("signed", "total"), [(1, 0), (0, 0), (4, 3), (-1, 3), (1, -3), (1.0, 3)]
)
def test_quorum_rejects_bad_stakes(signed: int, total: int) -> None:
    with pytest.raises(StakeError):
        quorum_reached(signed, total)
