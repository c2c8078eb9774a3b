import numpy as np
import pytest

from linguachain.privacy.codec import (
    bytes_per_parameter,
    chunk_lengths,
    count_chunks,
    flatten_update,
    join_chunks,
    split_chunks,
    unflatten_update,
    update_shapes,
)


def make_update(rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.normal(size=(3, 5)).astype(np.float32),
        rng.normal(size=(7,)),
        np.array(2.5),
        rng.normal(size=(2, 2, 4)).astype(np.float16),
    ]


def test_flatten_round_trip_exact() -> None:
    update = make_update(np.random.default_rng(0))
    vector = flatten_update(update)
    restored = unflatten_update(vector, update_shapes(update))

    assert vector.dtype == np.float64
    assert vector.size == 15 + 7 + 1 + 16
    for original, back in zip(update, restored):
        assert back.shape == original.shape
        np.testing.assert_array_equal(back.astype(original.dtype), original)


@pytest.mark.parametrize("length", [1, 2047, 2048, 2049, 5000])
def test_chunks_round_trip_odd_lengths(length: int) -> None:
    vector = np.random.default_rng(length).normal(size=length)
    chunks = split_chunks(vector, 2048)

    assert len(chunks) == count_chunks(length, 2048)
    assert [chunk.size for chunk in chunks] == chunk_lengths(length, 2048)
    assert all(chunk.size == 2048 for chunk in chunks[:-1])
    np.testing.assert_array_equal(join_chunks(chunks, length), vector)


def test_join_chunks_cuts_padding() -> None:
    chunks = [np.arange(4.0), np.array([4.0, 5.0, 0.0, 0.0])]
    np.testing.assert_array_equal(join_chunks(chunks, 6), np.arange(6.0))


def test_join_chunks_missing_chunk_raises() -> None:
    with pytest.raises(ValueError, match="a chunk is missing"):
        join_chunks([np.arange(4.0)], 6)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_flatten_non_finite_names_index(bad_value: float) -> None:
    update = [np.zeros(3), np.zeros((2, 2)), np.zeros(4)]
    update[1][1, 0] = bad_value

    with pytest.raises(ValueError, match=r"update parameter 1 \(shape \(2, 2\)\)"):
        flatten_update(update)


def test_unflatten_wrong_length_raises() -> None:
    with pytest.raises(ValueError, match="vector has 5 values but the shapes need 6"):
        unflatten_update(np.zeros(5), [(2, 3)])


def test_count_chunks_edges() -> None:
    assert count_chunks(0, 2048) == 0
    assert count_chunks(1, 2048) == 1
    assert count_chunks(4096, 2048) == 2
    assert count_chunks(4097, 2048) == 3
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        count_chunks(10, 0)


def test_bytes_per_parameter() -> None:
    assert bytes_per_parameter([b"x" * 64, b"y" * 64], 4) == 32.0
    with pytest.raises(ValueError, match="num_parameters must be positive"):
        bytes_per_parameter([b"x"], 0)
