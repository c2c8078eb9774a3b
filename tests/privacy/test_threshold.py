import dataclasses
import itertools

import gmpy2
import pytest

from linguachain.privacy import paillier, threshold
from linguachain.privacy.errors import (
    InsufficientSharesError,
    InvalidPartialDecryptionError,
)
from linguachain.privacy.threshold import ThresholdDealing

MESSAGES = [0, 1, 987654321, 2**300 + 5]


@pytest.fixture(scope="module")
def ciphertexts(dealing: ThresholdDealing) -> list[int]:
    messages = MESSAGES[:-1] + [dealing.public_key.n - 1]
    return paillier.encrypt_many(dealing.public_key, messages)


@pytest.fixture(scope="module")
def partials(
    dealing: ThresholdDealing, ciphertexts: list[int]
) -> list[threshold.PartialDecryption]:
    return [
        threshold.partial_decrypt(dealing.verification_keys, share, ciphertexts)
        for share in dealing.key_shares
    ]


def expected_messages(dealing: ThresholdDealing) -> list[int]:
    return MESSAGES[:-1] + [dealing.public_key.n - 1]


def test_dealing_shape(dealing: ThresholdDealing) -> None:
    keys = dealing.verification_keys
    assert keys.num_parties == 5
    assert keys.threshold == 3
    assert keys.delta == 120
    assert len(keys.party_keys) == 5
    assert [share.party_index for share in dealing.key_shares] == [1, 2, 3, 4, 5]
    assert "share=" not in repr(dealing.key_shares[0])


def test_dealing_uses_safe_primes(dealing: ThresholdDealing) -> None:
    for prime in (dealing.private_key.p, dealing.private_key.q):
        assert gmpy2.is_prime((prime - 1) // 2)


def test_default_threshold_is_majority() -> None:
    assert threshold.default_threshold(1) == 1
    assert threshold.default_threshold(4) == 3
    assert threshold.default_threshold(5) == 3
    assert threshold.default_threshold(6) == 4


def test_invalid_threshold_raises() -> None:
    with pytest.raises(ValueError, match=r"threshold 6 is invalid for 5 parties"):
        threshold.deal_threshold_keys(5, threshold=6, modulus_bits=512)
    with pytest.raises(ValueError, match=r"threshold 0 is invalid"):
        threshold.check_threshold(5, 0)


def test_every_t_subset_decrypts(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    for subset in itertools.combinations(partials, 3):
        plaintexts = threshold.combine_partial_decryptions(
            dealing.verification_keys, ciphertexts, list(subset), verify=False
        )
        assert plaintexts == expected_messages(dealing), [p.party_index for p in subset]


def test_exactly_t_verified_shares_decrypt(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    chosen = [partials[4], partials[1], partials[2]]
    plaintexts = threshold.combine_partial_decryptions(
        dealing.verification_keys, ciphertexts, chosen
    )
    assert plaintexts == expected_messages(dealing)


def test_all_shares_decrypt(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    plaintexts = threshold.combine_partial_decryptions(
        dealing.verification_keys, ciphertexts, partials
    )
    assert plaintexts == expected_messages(dealing)


def test_t_minus_one_shares_raise(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    with pytest.raises(
        InsufficientSharesError, match=r"2 parties \[1, 4\].*threshold is 3"
    ):
        threshold.combine_partial_decryptions(
            dealing.verification_keys, ciphertexts, [partials[3], partials[0]]
        )


def test_duplicate_party_raises(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    with pytest.raises(ValueError, match="duplicate party indices"):
        threshold.combine_partial_decryptions(
            dealing.verification_keys,
            ciphertexts,
            [partials[0], partials[0], partials[1]],
        )


def test_honest_partials_verify(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    for partial in partials:
        threshold.verify_partial_decryption(
            dealing.verification_keys, ciphertexts, partial
        )


def tampered_cases(
    dealing: ThresholdDealing, partial: threshold.PartialDecryption
) -> dict[str, threshold.PartialDecryption]:
    n_square = dealing.public_key.n_square
    values = list(partial.values)
    multiplied = values.copy()
    multiplied[2] = multiplied[2] * 4 % n_square
    negated = values.copy()
    # -c_i has the same square as c_i, but the proof binds the exact values.
    negated[1] = n_square - negated[1]
    other_share = values.copy()
    other_share[0] = values[1]
    proof = partial.proof
    return {
        "multiplied value": dataclasses.replace(partial, values=tuple(multiplied)),
        "swapped value": dataclasses.replace(partial, values=tuple(other_share)),
        "response + 1": dataclasses.replace(
            partial,
            proof=dataclasses.replace(proof, response=proof.response + 1),
        ),
        "challenge + 1": dataclasses.replace(
            partial,
            proof=dataclasses.replace(proof, challenge=proof.challenge + 1),
        ),
        "negated value": dataclasses.replace(partial, values=tuple(negated)),
    }


@pytest.mark.parametrize(
    "case",
    [
        "multiplied value",
        "swapped value",
        "negated value",
        "response + 1",
        "challenge + 1",
    ],
)
def test_tampered_partial_detected(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
    case: str,
) -> None:
    tampered = tampered_cases(dealing, partials[1])[case]
    with pytest.raises(InvalidPartialDecryptionError, match="from party 2") as error:
        threshold.combine_partial_decryptions(
            dealing.verification_keys,
            ciphertexts,
            [partials[0], tampered, partials[2]],
        )
    assert error.value.party_index == 2


def test_negated_partial_decrypts_unverified(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    # -c_i differs from c_i only by an element of order 2, which the combination
    # squares away (as in Shoup's scheme); verification still rejects it above.
    tampered = tampered_cases(dealing, partials[1])["negated value"]
    plaintexts = threshold.combine_partial_decryptions(
        dealing.verification_keys,
        ciphertexts,
        [partials[0], tampered, partials[2]],
        verify=False,
    )
    assert plaintexts == expected_messages(dealing)


def test_partial_from_other_party_key_detected(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    relabeled = dataclasses.replace(partials[3], party_index=2)
    with pytest.raises(InvalidPartialDecryptionError, match="from party 2"):
        threshold.verify_partial_decryption(
            dealing.verification_keys, ciphertexts, relabeled
        )


def test_partial_for_other_ciphertexts_detected(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    others = paillier.encrypt_many(dealing.public_key, [1, 2, 3, 4])
    with pytest.raises(InvalidPartialDecryptionError, match="from party 1"):
        threshold.verify_partial_decryption(
            dealing.verification_keys, others, partials[0]
        )


def test_partial_structure_checks(
    dealing: ThresholdDealing,
    ciphertexts: list[int],
    partials: list[threshold.PartialDecryption],
) -> None:
    keys = dealing.verification_keys
    short = dataclasses.replace(partials[0], values=partials[0].values[:2])
    with pytest.raises(InvalidPartialDecryptionError, match="2 values for 4"):
        threshold.verify_partial_decryption(keys, ciphertexts, short)

    outside = dataclasses.replace(partials[0], party_index=9)
    with pytest.raises(InvalidPartialDecryptionError, match=r"outside \[1, 5\]"):
        threshold.verify_partial_decryption(keys, ciphertexts, outside)

    zero = dataclasses.replace(partials[0], values=(0,) + partials[0].values[1:])
    with pytest.raises(InvalidPartialDecryptionError, match="not an element"):
        threshold.verify_partial_decryption(keys, ciphertexts, zero)


def test_homomorphic_sum_threshold_decrypts(dealing: ThresholdDealing) -> None:
    public_key = dealing.public_key
    replies = [paillier.encrypt_many(public_key, [i, 1000 * i]) for i in range(1, 6)]
    totals = paillier.sum_ciphertext_lists(public_key, replies)
    partials = [
        threshold.partial_decrypt(dealing.verification_keys, share, totals)
        for share in dealing.key_shares[2:]
    ]
    plaintexts = threshold.combine_partial_decryptions(
        dealing.verification_keys, totals, partials
    )
    assert plaintexts == [15, 15000]


def test_verification_keys_dict_round_trip(dealing: ThresholdDealing) -> None:
    keys = dealing.verification_keys
    data = keys.to_dict()
    assert all(isinstance(value, str) for value in data["party_keys"])
    assert threshold.ThresholdVerificationKeys.from_dict(data) == keys

    share = dealing.key_shares[0]
    assert threshold.PaillierKeyShare.from_dict(share.to_dict()) == share


def test_lagrange_coefficients_interpolate() -> None:
    # f(x) = 7 + 3x + 2x^2: sum of lambda_i * f(i) equals Delta * f(0).
    delta = 120
    indices = [2, 4, 5]
    values = [7 + 3 * i + 2 * i * i for i in indices]
    total = sum(
        threshold.lagrange_coefficient(i, indices, delta) * value
        for i, value in zip(indices, values)
    )
    assert total == delta * 7
