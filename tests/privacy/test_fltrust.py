"""FLTrust over CKKS against the same math on plaintext updates."""

from __future__ import annotations

import numpy as np
import pytest

from linguachain.privacy import ckks
from linguachain.privacy.fltrust import (
    EncryptedScore,
    decrypt_aggregate,
    decrypt_scores,
    encrypted_scores,
    fltrust_aggregate,
    trust_weights,
)

# Values per update: 3 chunks of 4096 slots, the last one partial.
LENGTH = 9000


@pytest.fixture(scope="module")
def contexts():
    secret = ckks.create_secret_context("scoring")
    return secret, ckks.make_public_context(secret)


@pytest.fixture(scope="module")
def round_updates():
    """A reference, three honest updates near it, a flipped and a scaled attacker."""
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 0.01, LENGTH)
    honest = [reference + rng.normal(0, 0.01, LENGTH) for _ in range(3)]
    updates = honest + [-5 * reference, 20 * honest[0]]
    return reference, updates


def plaintext_fltrust(reference, updates):
    norm_r = np.linalg.norm(reference)
    cosines = [u @ reference / (np.linalg.norm(u) * norm_r) for u in updates]
    trust = [max(0.0, c) for c in cosines]
    total = sum(trust)
    aggregate = (
        sum(t * norm_r / np.linalg.norm(u) * u for t, u in zip(trust, updates)) / total
    )
    return cosines, trust, aggregate


def encrypt(public, updates):
    return [ckks.encrypt_update(public, u, 1).chunks for u in updates]


def test_scores_match_plaintext(contexts, round_updates):
    secret, public = contexts
    reference, updates = round_updates
    scores = [
        encrypted_scores(public, chunks, reference)
        for chunks in encrypt(public, updates)
    ]
    scalars = decrypt_scores(secret, scores)
    for (inner, square), update in zip(scalars, updates):
        assert inner == pytest.approx(update @ reference, rel=1e-3, abs=1e-5)
        assert square == pytest.approx(update @ update, rel=1e-5)


def test_trust_and_aggregate_match_plaintext(contexts, round_updates):
    secret, public = contexts
    reference, updates = round_updates
    aggregate, weights = fltrust_aggregate(
        public, secret, encrypt(public, updates), reference
    )
    cosines, trust, expected = plaintext_fltrust(reference, updates)
    assert weights.cosines == pytest.approx(cosines, abs=1e-4)
    assert weights.trust == pytest.approx(trust, abs=1e-4)
    assert np.max(np.abs(aggregate - expected)) < 1e-5 * np.max(np.abs(expected)) + 1e-7


def test_flipped_update_gets_zero_trust(contexts, round_updates):
    secret, public = contexts
    reference, updates = round_updates
    _, weights = fltrust_aggregate(public, secret, encrypt(public, updates), reference)
    assert weights.trust[3] == 0.0
    assert min(weights.trust[:3]) > 0.5


def test_scaled_update_rescaled_to_reference_norm(contexts, round_updates):
    secret, public = contexts
    reference, updates = round_updates
    aggregate, weights = fltrust_aggregate(
        public, secret, encrypt(public, updates), reference
    )
    # Every update enters with norm |r|, so the aggregate is no longer than |r|.
    assert np.linalg.norm(aggregate) <= np.linalg.norm(reference) * (1 + 1e-6)
    assert weights.norms[4] == pytest.approx(np.linalg.norm(updates[4]), rel=1e-5)


def test_scores_decrypt_to_scalars_only(contexts, round_updates):
    secret, public = contexts
    reference, updates = round_updates
    score = encrypted_scores(public, encrypt(public, updates[:1])[0], reference)
    assert isinstance(score, EncryptedScore)
    update_chunk = encrypt(public, updates[:1])[0][0]
    with pytest.raises(ValueError, match="expected one scalar each"):
        decrypt_scores(secret, [EncryptedScore(update_chunk, score.squared_norm)])


def test_sum_context_rejected(round_updates):
    reference, updates = round_updates
    sum_secret = ckks.create_secret_context("sum")
    chunks = ckks.encrypt_update(sum_secret, updates[0], 1).chunks
    with pytest.raises(ValueError, match="depth|Galois"):
        encrypted_scores(ckks.make_public_context(sum_secret), chunks, reference)


def test_public_context_cannot_decrypt(contexts, round_updates):
    _, public = contexts
    reference, updates = round_updates
    score = encrypted_scores(public, encrypt(public, updates[:1])[0], reference)
    with pytest.raises(ValueError, match="no secret key"):
        decrypt_scores(public, [score])


def test_zero_reference_rejected():
    with pytest.raises(ValueError, match="must be positive"):
        trust_weights([(1.0, 1.0)], 0.0)


def test_block_weight_cancels_out(contexts, round_updates):
    secret, public = contexts
    reference, updates = round_updates
    # Nodes encrypt their update times their training blocks.
    weighted = [
        ckks.encrypt_update(public, u, w).chunks
        for u, w in zip(updates, [3, 7, 11, 5, 2])
    ]
    aggregate, weights = fltrust_aggregate(public, secret, weighted, reference)
    cosines, trust, expected = plaintext_fltrust(reference, updates)
    assert weights.cosines == pytest.approx(cosines, abs=1e-4)
    assert weights.trust == pytest.approx(trust, abs=1e-4)
    assert np.max(np.abs(aggregate - expected)) < 1e-5 * np.max(np.abs(expected)) + 1e-7


def test_aggregate_with_missing_chunk_rejected(contexts, round_updates):
    secret, public = contexts
    _, updates = round_updates
    chunks = ckks.encrypt_update(public, updates[0], 1).chunks
    with pytest.raises(ValueError, match="aggregate has 2 chunks"):
        decrypt_aggregate(secret, chunks[:2], LENGTH)
