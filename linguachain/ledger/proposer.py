"""Stake-weighted proposer draw and the two-thirds stake quorum rule.

The draw is a pure function of the stake table, the seed (derived from the previous
block's VDF output) and the height, so every node recomputes the same proposer.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from linguachain.ledger.constants import (
    QUORUM_DENOMINATOR,
    QUORUM_NUMERATOR,
    ProposerParameterError,
    StakeError,
)

logger = logging.getLogger(__name__)

PROPOSER_DOMAIN = b"linguachain/proposer/v1"
# The draw hashes to 256-bit integers, so the total stake must stay below 2**256.
MAX_TOTAL_STAKE = 2**256 - 1
# Heights are hashed as 8 big-endian bytes.
MAX_HEIGHT = 2**64 - 1


def get_total_stake(stakes: Sequence[tuple[str, int]]) -> int:
    """Sum a stake table after checking ids are unique and stakes non-negative ints."""
    seen: set[str] = set()
    total = 0
    for validator_id, stake in stakes:
        if not isinstance(validator_id, str) or not validator_id:
            raise StakeError(
                f"validator id must be a non-empty string, got {validator_id!r}"
            )
        if validator_id in seen:
            raise StakeError(
                f"validator {validator_id!r} appears twice in the stake table: "
                "merge its entries"
            )
        seen.add(validator_id)
        if not isinstance(stake, int) or isinstance(stake, bool) or stake < 0:
            raise StakeError(
                f"stake of validator {validator_id!r} must be a non-negative integer "
                f"in base units, got {stake!r}"
            )
        total += stake
    return total


def get_proposer_index(
    stakes: Sequence[tuple[str, int]], seed: bytes, height: int
) -> str:
    """Draw the proposer for a height with probability proportional to stake.

    Return the drawn validator's id. The table is sorted by id first, so its input
    order does not matter. The draw hashes a domain tag, the seed, the height and a
    counter with SHA-256, and rejection sampling removes the modulo bias, so each
    base unit of stake is equally likely.
    """
    total_stake = get_total_stake(stakes)
    if total_stake <= 0:
        raise StakeError(
            f"total stake is {total_stake}: at least one validator must bond a "
            "positive stake before a proposer can be drawn"
        )
    if total_stake > MAX_TOTAL_STAKE:
        raise StakeError(
            f"total stake {total_stake} exceeds {MAX_TOTAL_STAKE} base units"
        )
    if not isinstance(seed, bytes) or not seed:
        raise ProposerParameterError(
            f"proposer seed must be non-empty bytes, got {seed!r}: pass "
            "vdf_output_seed() of the parent block"
        )
    if not isinstance(height, int) or isinstance(height, bool):
        raise ProposerParameterError(f"block height must be an integer, got {height!r}")
    if not 0 <= height <= MAX_HEIGHT:
        raise ProposerParameterError(
            f"block height must be in [0, {MAX_HEIGHT}], got {height}"
        )

    # Rejection sampling: values at or above `limit` would favour low offsets.
    limit = (2**256 // total_stake) * total_stake
    counter = 0
    while True:
        digest = hashlib.sha256(
            PROPOSER_DOMAIN
            + seed
            + height.to_bytes(8, "big")
            + counter.to_bytes(8, "big")
        ).digest()
        value = int.from_bytes(digest, "big")
        if value < limit:
            break
        counter += 1
    offset = value % total_stake

    # Walk the cumulative stake until it passes the drawn offset.
    cumulative = 0
    for validator_id, stake in sorted(stakes, key=lambda entry: entry[0]):
        cumulative += stake
        if offset < cumulative:
            logger.debug(
                "drew proposer %s at height %d (offset %d of %d)",
                validator_id,
                height,
                offset,
                total_stake,
            )
            return validator_id
    raise AssertionError("offset below total stake must fall inside the table")


def quorum_reached(signer_stakes_total: int, total_stake: int) -> bool:
    """Check that signers hold at least two thirds of the total stake (integer math)."""
    for name, value in (
        ("signer stake", signer_stakes_total),
        ("total stake", total_stake),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StakeError(f"{name} must be a non-negative integer, got {value!r}")
    if total_stake == 0:
        raise StakeError(
            "total stake is 0: no quorum exists until a validator bonds stake"
        )
    if signer_stakes_total > total_stake:
        raise StakeError(
            f"signer stake {signer_stakes_total} exceeds total stake {total_stake}: "
            "sum the stakes of distinct signers from the same stake table"
        )
    return QUORUM_DENOMINATOR * signer_stakes_total >= QUORUM_NUMERATOR * total_stake
