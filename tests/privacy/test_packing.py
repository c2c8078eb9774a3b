import numpy as np
import pytest

from linguachain.privacy import paillier, threshold
from linguachain.privacy.packing import FixedPointPacking
from linguachain.privacy.threshold import ThresholdDealing


def test_default_layout_sizes() -> None:
    packing = FixedPointPacking()
    assert packing.offset == 2**16
    assert packing.slot_bits == 24
    assert packing.slots_per_plaintext == 85
    assert packing.ciphertext_bytes == 512
    assert packing.bytes_per_parameter == pytest.approx(6.02, abs=0.01)
    assert packing.bytes_per_parameter <= 8


def test_layout_serialized_size_matches(dealing: ThresholdDealing) -> None:
    public_key = dealing.public_key
    packing = FixedPointPacking(modulus_bits=public_key.modulus_bits)
    vector = np.linspace(-1, 1, 1000)
    ciphertexts = paillier.encrypt_many(public_key, packing.pack(vector))
    data = paillier.ciphertexts_to_bytes(public_key, ciphertexts)

    assert len(ciphertexts) == packing.count_plaintexts(1000)
    assert len(data) == len(ciphertexts) * packing.ciphertext_bytes


@pytest.mark.parametrize(
    "values",
    [
        np.array([-3, -1, 0, 1, 2, 3], dtype=np.int8),
        np.array([-3, -1, 0, 1, 2, 3], dtype=np.int32),
        np.array([-3, -1, 0, 1, 2, 3], dtype=np.int64),
        np.array([0, 1, 2, 3], dtype=np.uint16),
        np.array([-2.5, -0.125, 0.0, 0.75, 3.0], dtype=np.float32),
        np.array([-2.5, -0.125, 0.0, 0.75, 3.0], dtype=np.float64),
    ],
)
def test_pack_exact_for_representable_values(values: np.ndarray) -> None:
    packing = FixedPointPacking(clip_range=4.0, precision_bits=8, max_parties=3)
    unpacked = packing.unpack_sum(packing.pack(values), values.size, num_parties=1)
    np.testing.assert_array_equal(unpacked, values.astype(np.float64))


def test_pack_quantization_error_bound() -> None:
    packing = FixedPointPacking(clip_range=1.0, precision_bits=16)
    values = np.random.default_rng(0).uniform(-1, 1, size=5000)
    unpacked = packing.unpack_sum(packing.pack(values), 5000, num_parties=1)
    assert np.max(np.abs(unpacked - values)) <= 2.0**-17


def test_pack_clips_to_range() -> None:
    packing = FixedPointPacking(clip_range=1.0, precision_bits=4)
    values = np.array([-5.0, -1.0, 1.0, 7.0])
    unpacked = packing.unpack_sum(packing.pack(values), 4, num_parties=1)
    np.testing.assert_array_equal(unpacked, [-1.0, -1.0, 1.0, 1.0])


def test_pack_huge_int64_clips() -> None:
    packing = FixedPointPacking(clip_range=2.0, precision_bits=4)
    values = np.array([2**62, -(2**62), 1], dtype=np.int64)
    unpacked = packing.unpack_sum(packing.pack(values), 3, num_parties=1)
    np.testing.assert_array_equal(unpacked, [2.0, -2.0, 1.0])


def test_pack_non_finite_raises() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        FixedPointPacking().pack(np.array([0.1, np.inf]))


@pytest.mark.parametrize("length", [1, 80, 81, 82, 500])
def test_pack_odd_lengths(length: int) -> None:
    packing = FixedPointPacking()
    values = np.random.default_rng(length).uniform(-1, 1, size=length)
    plaintexts = packing.pack(values)
    assert len(plaintexts) == packing.count_plaintexts(length)
    unpacked = packing.unpack_sum(plaintexts, length, num_parties=1)
    assert np.max(np.abs(unpacked - values)) <= 2.0**-17


def test_sum_of_packed_plaintexts_with_negatives() -> None:
    packing = FixedPointPacking(clip_range=1.0, precision_bits=10, max_parties=4)
    rng = np.random.default_rng(5)
    vectors = [np.round(rng.uniform(-1, 1, 200) * 1024) / 1024 for _ in range(4)]
    summed = [sum(column) for column in zip(*(packing.pack(v) for v in vectors))]
    unpacked = packing.unpack_sum(summed, 200, num_parties=4)
    np.testing.assert_array_equal(unpacked, sum(vectors))


def test_overflow_headroom_at_range_limit(dealing: ThresholdDealing) -> None:
    # 7 * 2Q = 7 * 2^13 fits in 16-bit slots and 8 * 2Q = 2^16 does not, so 7 nodes
    # at +R and -R sum exactly while an eighth would carry into the next slot.
    public_key = dealing.public_key
    packing = FixedPointPacking(
        clip_range=1.0,
        precision_bits=12,
        max_parties=7,
        modulus_bits=public_key.modulus_bits,
    )
    assert packing.slot_bits == 16
    assert 7 * 2 * packing.offset < 2**packing.slot_bits
    assert 8 * 2 * packing.offset == 2**packing.slot_bits

    length = packing.slots_per_plaintext + 3
    pattern = np.where(np.arange(length) % 2 == 0, 1.0, -1.0)
    replies = [
        paillier.encrypt_many(public_key, packing.pack(pattern)) for _ in range(7)
    ]
    totals = paillier.sum_ciphertext_lists(public_key, replies)
    partials = [
        threshold.partial_decrypt(dealing.verification_keys, share, totals)
        for share in dealing.key_shares[:3]
    ]
    plaintexts = threshold.combine_partial_decryptions(
        dealing.verification_keys, totals, partials
    )

    assert max(plaintexts) < public_key.n
    unpacked = packing.unpack_sum(plaintexts, length, num_parties=7)
    np.testing.assert_array_equal(unpacked, 7 * pattern)


def test_unpack_more_parties_than_headroom_raises() -> None:
    packing = FixedPointPacking(max_parties=4)
    with pytest.raises(ValueError, match=r"num_parties 5 is outside \[1, 4\]"):
        packing.unpack_sum(packing.pack(np.zeros(3)), 3, num_parties=5)


def test_unpack_wrong_plaintext_count_raises() -> None:
    packing = FixedPointPacking()
    with pytest.raises(ValueError, match="2 plaintexts for 3 values"):
        packing.unpack_sum([0, 0], 3, num_parties=1)


def test_unpack_bits_above_last_slot_raise() -> None:
    packing = FixedPointPacking()
    too_big = 1 << (packing.slots_per_plaintext * packing.slot_bits)
    with pytest.raises(ValueError, match="bits above its last slot"):
        packing.unpack_sum([too_big], 3, num_parties=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_range": 0.0}, "clip_range must be a positive"),
        ({"clip_range": float("inf")}, "clip_range must be a positive"),
        ({"precision_bits": -1}, "precision_bits must not be negative"),
        ({"max_parties": 0}, "max_parties must be at least 1"),
        ({"clip_range": 0.001, "precision_bits": 4}, "every value quantizes to 0"),
        ({"precision_bits": 60}, "exceed 53"),
    ],
)
def test_invalid_layout_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FixedPointPacking(**kwargs)


def test_weighted_pack_sums_exactly() -> None:
    packing = FixedPointPacking(clip_range=0.25, max_parties=1000, modulus_bits=1024)
    rng = np.random.default_rng(3)
    vectors = [rng.normal(0, 0.05, 300) for _ in range(3)]
    weights = [7, 300, 693]
    packed = [packing.pack(v, w) for v, w in zip(vectors, weights)]
    # Slot-wise integer addition is what multiplying Paillier ciphertexts does.
    sums = [sum(column) for column in zip(*packed)]
    got = packing.unpack_sum(sums, 300, sum(weights))

    quantized = [np.rint(v * packing.scale) for v in vectors]
    expected = sum(w * q for w, q in zip(weights, quantized)) / packing.scale
    np.testing.assert_array_equal(got, expected)


def test_weight_above_headroom_raises() -> None:
    packing = FixedPointPacking(max_parties=10)
    with pytest.raises(ValueError, match="max_parties=10"):
        packing.pack(np.zeros(3), 11)
    with pytest.raises(ValueError, match="outside"):
        packing.pack(np.zeros(3), 0)
