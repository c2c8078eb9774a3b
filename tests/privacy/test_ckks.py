import dataclasses

import numpy as np
import pytest
import tenseal as ts

from linguachain.privacy import ckks
from linguachain.privacy.codec import bytes_per_parameter
from linguachain.privacy.errors import InvalidCiphertextError


def make_updates(
    length: int, num_nodes: int, seed: int
) -> tuple[list[np.ndarray], list[int]]:
    """Return updates with magnitudes in [1e-3, 1e-1] and one sign per coordinate."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=length)
    updates = [signs * 10 ** rng.uniform(-3, -1, size=length) for _ in range(num_nodes)]
    token_counts = [int(t) for t in rng.integers(500, 50_000, size=num_nodes)]
    return updates, token_counts


def weighted_average(updates: list[np.ndarray], token_counts: list[int]) -> np.ndarray:
    total = sum(u * t for u, t in zip(updates, token_counts))
    return total / sum(token_counts)


def test_parameter_sets_within_security_limit() -> None:
    for name, params in ckks.PARAMETER_SETS.items():
        limit = ckks.HE_STANDARD_MAX_MODULUS_BITS[params.poly_modulus_degree]
        assert sum(params.coeff_mod_bit_sizes) <= limit, name
        assert ckks.get_parameters(name) is params


def test_parameter_set_depths() -> None:
    assert ckks.get_parameters("sum").depth == 0
    assert ckks.get_parameters("scoring").depth == 2
    assert ckks.get_parameters("sum").slots == 2048
    assert ckks.get_parameters("scoring").slots == 4096


def test_unknown_parameter_set_raises() -> None:
    with pytest.raises(ValueError, match=r"unknown CKKS parameter set 'big'.*scoring"):
        ckks.get_parameters("big")


def test_require_depth_message() -> None:
    ckks.require_depth("sum", 0)
    ckks.require_depth("scoring", 2)
    with pytest.raises(ValueError) as error:
        ckks.require_depth("sum", 2)
    message = str(error.value)
    assert "supports multiplicative depth 0" in message
    assert "depth 2 is required" in message
    assert "[60, 49]" in message
    assert "scoring" in message
    with pytest.raises(
        ValueError, match=r"\[60, 40, 40, 60\]\), but depth 3 is required"
    ):
        ckks.require_depth("scoring", 3)


def test_server_context_has_no_secret_key(
    sum_context: ts.Context, sum_public_context: ts.Context
) -> None:
    assert sum_context.is_private()
    assert not sum_public_context.is_private()
    # Making the public copy must leave the original context's secret key alone.
    assert sum_context.has_secret_key()

    reloaded = ckks.deserialize_context(ckks.serialize_context(sum_public_context))
    assert not reloaded.is_private()


def test_public_context_cannot_decrypt(
    sum_context: ts.Context, sum_public_context: ts.Context
) -> None:
    reply = ckks.encrypt_update(sum_context, np.full(10, 0.01), token_count=3)
    vector = ts.ckks_vector_from(sum_public_context, reply.chunks[0])
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    with pytest.raises(ValueError, match="no secret key"):
        ckks.decrypt_average(sum_public_context, reply.chunks, 3, 10)


def test_serialize_public_context_with_secret_raises(
    sum_public_context: ts.Context,
) -> None:
    with pytest.raises(ValueError, match="has no secret key"):
        ckks.serialize_context(sum_public_context, save_secret_key=True)


def test_fingerprint_stable_across_copies(
    sum_context: ts.Context, sum_public_context: ts.Context
) -> None:
    fingerprint = ckks.context_fingerprint(sum_context)
    secret_bytes = ckks.serialize_context(sum_context, save_secret_key=True)
    reloaded_secret = ckks.deserialize_context(secret_bytes)
    reloaded_public = ckks.deserialize_context(
        ckks.serialize_context(sum_public_context)
    )

    assert ckks.context_fingerprint(sum_public_context) == fingerprint
    assert ckks.context_fingerprint(reloaded_secret) == fingerprint
    assert ckks.context_fingerprint(reloaded_public) == fingerprint
    other = ckks.create_secret_context("sum")
    assert ckks.context_fingerprint(other) != fingerprint


def test_deserialize_garbage_context_raises() -> None:
    with pytest.raises(ValueError, match="failed to deserialize a TenSEAL context"):
        ckks.deserialize_context(b"not a context")


@pytest.mark.parametrize("length", [1, 2047, 2048, 2049, 5000])
def test_sum_round_trip_odd_lengths(
    sum_context: ts.Context, sum_public_context: ts.Context, length: int
) -> None:
    updates, token_counts = make_updates(length, num_nodes=3, seed=length)
    replies = [
        ckks.encrypt_update(sum_context, update, count)
        for update, count in zip(updates, token_counts)
    ]
    aggregate = ckks.sum_replies(sum_public_context, replies, length)
    average = ckks.decrypt_average(
        sum_context, aggregate.chunks, aggregate.total_tokens, length
    )

    assert len(replies[0].chunks) == -(-length // 2048)
    assert aggregate.total_tokens == sum(token_counts)
    assert average.shape == (length,)
    np.testing.assert_allclose(
        average, weighted_average(updates, token_counts), rtol=1e-6, atol=0
    )


def test_sum_relative_error_many_nodes(
    sum_context: ts.Context, sum_public_context: ts.Context
) -> None:
    # 20 nodes at update magnitudes 1e-3..1e-1: measured max relative error is
    # about 1e-11, five orders of magnitude inside the 1e-6 tolerance.
    length = 3000
    updates, token_counts = make_updates(length, num_nodes=20, seed=7)
    replies = [
        ckks.encrypt_update(sum_context, update, count)
        for update, count in zip(updates, token_counts)
    ]
    aggregate = ckks.sum_replies(sum_public_context, replies, length)
    average = ckks.decrypt_average(
        sum_context, aggregate.chunks, aggregate.total_tokens, length
    )
    expected = weighted_average(updates, token_counts)

    relative_error = np.max(np.abs(average - expected) / np.abs(expected))
    assert relative_error < 1e-6


def test_sum_ciphertexts_without_length(
    sum_context: ts.Context, sum_public_context: ts.Context
) -> None:
    first = ckks.encrypt_update(sum_context, np.full(2100, 0.01), token_count=1000)
    second = ckks.encrypt_update(sum_context, np.full(2100, 0.02), token_count=1000)
    chunks = ckks.sum_ciphertexts(sum_public_context, [first.chunks, second.chunks])
    average = ckks.decrypt_average(sum_context, chunks, 2000, 2100)
    np.testing.assert_allclose(average, np.full(2100, 0.015), rtol=1e-6, atol=0)


def test_sum_bytes_per_parameter(sum_context: ts.Context) -> None:
    vector = np.random.default_rng(1).uniform(-0.1, 0.1, size=2048)
    reply = ckks.encrypt_update(sum_context, vector, token_count=1)
    assert bytes_per_parameter(reply.chunks, 2048) <= 32.5


def test_encrypt_overflow_bound_raises(sum_context: ts.Context) -> None:
    # 2^19 is the largest magnitude that the 60-bit first prime can represent at
    # scale 2^40.
    bound = ckks.get_parameters("sum").max_plaintext_magnitude
    assert bound == 2.0**19
    with pytest.raises(ValueError, match="above the .* can sum without overflow"):
        ckks.encrypt_update(
            sum_context, np.full(4, 0.1), token_count=100_000, max_parties=64
        )


def test_encrypt_non_finite_raises(sum_context: ts.Context) -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        ckks.encrypt_update(sum_context, np.array([0.1, np.nan]), token_count=1)


@pytest.fixture(scope="module")
def valid_reply(sum_context: ts.Context) -> ckks.CKKSReply:
    vector = np.random.default_rng(3).uniform(-0.1, 0.1, size=2500)
    return ckks.encrypt_update(sum_context, vector, token_count=100)


def check_reply_rejected(
    public_context: ts.Context, reply: ckks.CKKSReply, match: str
) -> None:
    with pytest.raises(InvalidCiphertextError, match=match):
        ckks.validate_reply(public_context, reply, 2500)
    with pytest.raises(InvalidCiphertextError, match=r"reply 0: .*" + match):
        ckks.sum_replies(public_context, [reply], 2500)


def test_valid_reply_accepted(
    sum_public_context: ts.Context, valid_reply: ckks.CKKSReply
) -> None:
    vectors = ckks.validate_reply(sum_public_context, valid_reply, 2500)
    assert [vector.size() for vector in vectors] == [2048, 452]


def test_reply_other_context_rejected(
    sum_public_context: ts.Context, valid_reply: ckks.CKKSReply
) -> None:
    other_context = ckks.create_secret_context("sum")
    vector = np.random.default_rng(4).uniform(-0.1, 0.1, size=2500)
    reply = ckks.encrypt_update(other_context, vector, token_count=100)
    check_reply_rejected(sum_public_context, reply, "fingerprint")

    # Same parameters load without error, so only the fingerprint catches a
    # node that lies about it.
    forged = dataclasses.replace(
        reply, context_fingerprint=valid_reply.context_fingerprint
    )
    ckks.validate_reply(sum_public_context, forged, 2500)


def test_reply_other_parameters_rejected(
    sum_public_context: ts.Context, valid_reply: ckks.CKKSReply
) -> None:
    scoring_context = ckks.create_secret_context("scoring")
    reply = ckks.encrypt_update(scoring_context, np.full(2500, 0.01), token_count=1)
    forged = dataclasses.replace(
        reply, context_fingerprint=valid_reply.context_fingerprint
    )
    check_reply_rejected(sum_public_context, forged, "chunk")


def test_reply_truncated_rejected(
    sum_public_context: ts.Context, valid_reply: ckks.CKKSReply
) -> None:
    chunks = [valid_reply.chunks[0][: len(valid_reply.chunks[0]) // 2]]
    chunks.append(valid_reply.chunks[1])
    reply = dataclasses.replace(valid_reply, chunks=chunks)
    check_reply_rejected(sum_public_context, reply, "chunk 0 is not a CKKS ciphertext")


@pytest.mark.parametrize(
    "garbage",
    [b"\x00" * 100, bytes(range(256)) * 40, b"\x0a\x02\x80\x10" + b"\xff" * 5000],
)
def test_reply_garbage_rejected(
    sum_public_context: ts.Context, valid_reply: ckks.CKKSReply, garbage: bytes
) -> None:
    reply = dataclasses.replace(valid_reply, chunks=[valid_reply.chunks[0], garbage])
    check_reply_rejected(sum_public_context, reply, "chunk 1")


def test_reply_empty_and_oversized_chunks_rejected(
    sum_public_context: ts.Context, valid_reply: ckks.CKKSReply
) -> None:
    empty = dataclasses.replace(valid_reply, chunks=[valid_reply.chunks[0], b""])
    check_reply_rejected(sum_public_context, empty, r"chunk 1 has 0 bytes")
    huge = dataclasses.replace(
        valid_reply, chunks=[valid_reply.chunks[0], b"\x00" * 200_000]
    )
    check_reply_rejected(sum_public_context, huge, r"chunk 1 has 200000 bytes")


def test_reply_non_bytes_chunk_rejected(
    sum_public_context: ts.Context, valid_reply: ckks.CKKSReply
) -> None:
    reply = dataclasses.replace(valid_reply, chunks=[valid_reply.chunks[0], "text"])
    check_reply_rejected(sum_public_context, reply, "chunk 1 is a str, not bytes")


def test_reply_wrong_chunk_count_rejected(
    sum_public_context: ts.Context, valid_reply: ckks.CKKSReply
) -> None:
    missing = dataclasses.replace(valid_reply, chunks=valid_reply.chunks[:1])
    check_reply_rejected(sum_public_context, missing, "reply has 1 chunks")
    extra = dataclasses.replace(
        valid_reply, chunks=valid_reply.chunks + valid_reply.chunks[1:]
    )
    check_reply_rejected(sum_public_context, extra, "reply has 3 chunks")


def test_reply_swapped_chunks_rejected(
    sum_public_context: ts.Context, valid_reply: ckks.CKKSReply
) -> None:
    swapped = dataclasses.replace(valid_reply, chunks=valid_reply.chunks[::-1])
    check_reply_rejected(sum_public_context, swapped, "chunk 0 contains 452 values")


@pytest.mark.parametrize(
    ("token_count", "match"),
    [
        (None, "token count is missing"),
        (0, "must be positive"),
        (-5, "must be positive"),
        (2.5, "must be an integer"),
        (True, "must be an integer"),
    ],
)
def test_reply_bad_token_count_rejected(
    sum_public_context: ts.Context,
    valid_reply: ckks.CKKSReply,
    token_count: object,
    match: str,
) -> None:
    reply = dataclasses.replace(valid_reply, token_count=token_count)
    check_reply_rejected(sum_public_context, reply, match)


def test_sum_ciphertexts_rejects_mismatched_reply(
    sum_context: ts.Context, sum_public_context: ts.Context
) -> None:
    first = ckks.encrypt_update(sum_context, np.full(2100, 0.01), token_count=1)
    shorter = ckks.encrypt_update(sum_context, np.full(2000, 0.01), token_count=1)
    with pytest.raises(InvalidCiphertextError, match="reply 1: reply has 1 chunks"):
        ckks.sum_ciphertexts(sum_public_context, [first.chunks, shorter.chunks])


def test_scoring_context_round_trip() -> None:
    context = ckks.create_secret_context("scoring")
    public_context = ckks.make_public_context(context)
    assert context.has_galois_keys()
    assert public_context.has_galois_keys()
    assert ckks.context_fingerprint(public_context) == ckks.context_fingerprint(context)

    updates, token_counts = make_updates(5000, num_nodes=2, seed=11)
    replies = [
        ckks.encrypt_update(context, update, count)
        for update, count in zip(updates, token_counts)
    ]
    aggregate = ckks.sum_replies(public_context, replies, 5000)
    average = ckks.decrypt_average(
        context, aggregate.chunks, aggregate.total_tokens, 5000
    )
    assert len(replies[0].chunks) == 2
    np.testing.assert_allclose(
        average, weighted_average(updates, token_counts), rtol=1e-6, atol=0
    )
