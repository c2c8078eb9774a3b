"""Robustness scores in the ledger: rewards scale with them, repeated zeros slash."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest
from chain_helpers import BALANCE, PARAMS, STAKE, commitments, keys  # noqa: F401

from linguachain.ledger.chain import InvalidBlockError, Ledger, new_block
from linguachain.ledger.consensus import (
    data_payload,
    genesis_payload,
    propose_template,
    prove_block,
    seal_block,
    seal_locally,
    sign_block,
    version_payload,
)
from linguachain.ledger.rules import get_block_proposer
from linguachain.ledger.transactions import get_slash_amount

SLASH_PARAMS = dataclasses.replace(
    PARAMS, zero_score_rounds=2, zero_score_slash_basis_points=1_000
)


def open_chain(path, keys, params=SLASH_PARAMS) -> Ledger:
    ledger = Ledger.open(path)
    payload = genesis_payload(
        [(key, STAKE, BALANCE) for key in keys], params, {"model_hash": "a" * 64}
    )
    ledger.append(new_block(None, "genesis", payload, ""), check_signatures=False)
    return ledger


def close_rejected_round(ledger: Ledger, keys, scores: list[float]) -> dict:
    """Append a data block closing a rejected round; return its payload."""
    payload = data_payload(
        ledger.context(), "rejected", "test", commitments(keys, scores)
    )
    ledger.append(seal_locally(ledger, "data", payload, keys))
    return payload


def test_rewards_scale_with_score(keys, tmp_path):
    ledger = open_chain(tmp_path / "l.db", keys, PARAMS)
    context = ledger.context()
    # keys[1] has twice the tokens of keys[0] but a quarter of its score.
    entries = commitments(keys, [1.0, 0.25])
    proposer = get_block_proposer(context)
    payload = version_payload(context, "b" * 64, entries, {}, proposer)
    ledger.append(seal_locally(ledger, "version", payload, keys))

    balances = {a.account: a.balance for a in ledger.accounts()}
    weights = [100 * 1_000_000, 200 * 250_000]
    shares = [PARAMS.contributor_reward * w // sum(weights) for w in weights]
    for key, share in zip(keys, shares, strict=True):
        bonus = PARAMS.proposer_reward if key.account == proposer else 0
        assert balances[key.account] == BALANCE + share + bonus
    assert shares[0] == 2 * shares[1]
    ledger.close()


def test_zero_scores_earn_nothing(keys, tmp_path):
    ledger = open_chain(tmp_path / "l.db", keys, PARAMS)
    context = ledger.context()
    proposer = get_block_proposer(context)
    entries = commitments(keys, [0.0, 0.0])
    payload = version_payload(context, "b" * 64, entries, {}, proposer)
    ledger.append(seal_locally(ledger, "version", payload, keys))

    balances = {a.account: a.balance for a in ledger.accounts()}
    for key in keys:
        bonus = PARAMS.proposer_reward if key.account == proposer else 0
        assert balances[key.account] == BALANCE + bonus
    ledger.close()


def test_repeated_zero_scores_slash_once_per_trigger(keys, tmp_path):
    ledger = open_chain(tmp_path / "l.db", keys)
    zero, other = keys
    stake = STAKE
    expected_slashes = []
    # keys[0] scores 0 in five rounds: the streak of 2 triggers after rounds 2
    # and 4. keys[1] alternates, so its streak never reaches 2.
    for round_number in range(1, 6):
        other_score = 0.0 if round_number % 2 else 0.5
        payload = close_rejected_round(ledger, keys, [0.0, other_score])
        if round_number % 2 == 0:
            amount = get_slash_amount(stake, 1_000)
            stake -= amount
            expected_slashes.append(amount)
            assert payload["slashes"] == [
                {"node": zero.account, "amount": amount, "zero_rounds": 2}
            ]
        else:
            assert payload["slashes"] == []

    context = ledger.context()
    assert context.accounts.stakes[zero.account] == stake
    assert context.accounts.stakes[other.account] == STAKE
    assert context.accounts.burned == sum(expected_slashes)
    assert context.zero_score_streaks == {zero.account: 1, other.account: 1}
    report = ledger.verify()
    assert report.valid, str(report)
    ledger.close()


def test_zero_score_streak_survives_reopen(keys, tmp_path):
    path = tmp_path / "l.db"
    ledger = open_chain(path, keys)
    close_rejected_round(ledger, keys, [0.0, 1.0])
    ledger.close()

    reopened = Ledger.open(path)
    payload = close_rejected_round(reopened, keys, [0.0, 1.0])
    assert [s["node"] for s in payload["slashes"]] == [keys[0].account]
    reopened.close()


def test_slash_rule_off_with_zero_rounds(keys, tmp_path):
    params = dataclasses.replace(SLASH_PARAMS, zero_score_rounds=0)
    ledger = open_chain(tmp_path / "l.db", keys, params)
    for _ in range(3):
        payload = close_rejected_round(ledger, keys, [0.0, 0.0])
        assert payload["slashes"] == []
    assert ledger.context().accounts.burned == 0
    ledger.close()


def _sealed(ledger: Ledger, keys, kind: str, payload: dict):
    """Prove and sign a block without the proposer's own validation."""
    context = ledger.context()
    block = prove_block(propose_template(context, kind, payload), context)
    signatures = {key.account: sign_block(key, block) for key in keys}
    return seal_block(context, block, signatures)


def test_changed_score_breaks_rewards(keys, tmp_path):
    ledger = open_chain(tmp_path / "l.db", keys)
    context = ledger.context()
    payload = version_payload(
        context, "b" * 64, commitments(keys, [1.0, 0.25]), {},
        get_block_proposer(context),
    )
    # A proposer raises its score after the rewards were computed.
    payload["commitments"][1]["robustness_score"] = 1.0
    with pytest.raises(InvalidBlockError) as error:
        ledger.append(_sealed(ledger, keys, "version", payload))
    assert error.value.rule == "rewards"
    assert ledger.head().height == 0
    ledger.close()


def test_changed_score_breaks_slashes(keys, tmp_path):
    ledger = open_chain(tmp_path / "l.db", keys)
    close_rejected_round(ledger, keys, [0.0, 1.0])
    payload = data_payload(
        ledger.context(), "rejected", "test", commitments(keys, [0.0, 1.0])
    )
    assert payload["slashes"]
    # The slashed node claims a positive score but keeps the slash list.
    payload["commitments"][0]["robustness_score"] = 0.5
    with pytest.raises(InvalidBlockError) as error:
        ledger.append(_sealed(ledger, keys, "data", payload))
    assert error.value.rule == "zero-score-slash"
    ledger.close()


@pytest.mark.parametrize("score", [-0.1, 1.5, "1.0", None, True])
def test_invalid_score_rejected(keys, tmp_path, score):
    ledger = open_chain(tmp_path / "l.db", keys)
    entries = commitments(keys)
    entries[0]["robustness_score"] = score
    payload = {**data_payload(ledger.context(), "rejected", "", commitments(keys))}
    payload["commitments"] = entries
    with pytest.raises(InvalidBlockError) as error:
        ledger.append(_sealed(ledger, keys, "data", payload))
    assert error.value.rule == "commitments"
    ledger.close()


def test_tampered_stored_score_fails_verify(keys, tmp_path):
    path = tmp_path / "l.db"
    ledger = open_chain(path, keys)
    close_rejected_round(ledger, keys, [0.0, 1.0])
    payload = close_rejected_round(ledger, keys, [0.0, 1.0])
    assert payload["slashes"]
    ledger.close()

    # Rewrite the second data block as if keys[0] had scored 1.0, with the
    # payload still canonical JSON.
    with sqlite3.connect(path) as connection:
        (text,) = connection.execute(
            "SELECT payload FROM blocks WHERE height = 2"
        ).fetchone()
        stored = json.loads(text)
        stored["commitments"][0]["robustness_score"] = 1.0
        tampered = json.dumps(stored, sort_keys=True, separators=(",", ":"))
        connection.execute(
            "UPDATE blocks SET payload = ? WHERE height = 2", (tampered,)
        )

    ledger = Ledger.open(path)
    report = ledger.verify()
    assert not report.valid
    assert report.height == 2, str(report)
    ledger.close()
