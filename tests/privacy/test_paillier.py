import gmpy2
import phe
import pytest

from linguachain.privacy import paillier
from linguachain.privacy.errors import InvalidCiphertextError

# Small keys keep the suite fast; 1024 bits is well above the 512-bit minimum.
TEST_MODULUS_BITS = 1024


@pytest.fixture(scope="module")
def keypair() -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    return paillier.generate_keypair(TEST_MODULUS_BITS)


def test_keypair_sizes(keypair) -> None:
    public_key, private_key = keypair
    assert public_key.modulus_bits == TEST_MODULUS_BITS
    assert public_key.ciphertext_bytes == 2 * TEST_MODULUS_BITS // 8
    assert private_key.p != private_key.q
    assert "p=" not in repr(private_key)


def test_safe_prime_is_safe() -> None:
    prime = paillier.generate_safe_prime(256)
    assert prime.bit_length() == 256
    assert gmpy2.is_prime(prime)
    assert gmpy2.is_prime((prime - 1) // 2)


def test_small_modulus_rejected() -> None:
    with pytest.raises(ValueError, match="modulus_bits=256 is invalid"):
        paillier.generate_keypair(256)


def test_encrypt_decrypt_round_trip(keypair) -> None:
    public_key, private_key = keypair
    for message in [0, 1, 123456789, public_key.n - 1]:
        ciphertext = paillier.encrypt(public_key, message)
        assert paillier.decrypt(private_key, ciphertext) == message


def test_homomorphic_add(keypair) -> None:
    public_key, private_key = keypair
    messages = [5, 10**30, 42, public_key.n - 3]
    ciphertexts = paillier.encrypt_many(public_key, messages)
    total = paillier.add(public_key, *ciphertexts)
    assert paillier.decrypt(private_key, total) == sum(messages) % public_key.n


def test_precomputed_noise_gives_distinct_ciphertexts(keypair) -> None:
    public_key, private_key = keypair
    noise = paillier.generate_noise(public_key, 3)
    ciphertexts = paillier.encrypt_many(public_key, [7, 7, 7], noise)
    assert len(set(ciphertexts)) == 3
    assert [paillier.decrypt(private_key, c) for c in ciphertexts] == [7, 7, 7]
    with pytest.raises(ValueError, match="2 noise values for 3 plaintexts"):
        paillier.encrypt_many(public_key, [1, 2, 3], noise[:2])


@pytest.mark.parametrize("message", [-1, 1.5, True])
def test_encrypt_invalid_plaintext_raises(keypair, message: object) -> None:
    public_key, _ = keypair
    with pytest.raises(ValueError, match=r"plaintext must be an integer in \[0, n\)"):
        paillier.encrypt(public_key, message)


def test_encrypt_plaintext_n_raises(keypair) -> None:
    public_key, _ = keypair
    with pytest.raises(ValueError, match="plaintext must be an integer"):
        paillier.encrypt(public_key, public_key.n)


def test_phe_decrypts_our_ciphertexts(keypair) -> None:
    public_key, private_key = keypair
    phe_public = phe.PaillierPublicKey(public_key.n)
    phe_private = phe.PaillierPrivateKey(phe_public, private_key.p, private_key.q)
    for message in [0, 99, 2**200 + 17, public_key.n - 1]:
        ciphertext = paillier.encrypt(public_key, message)
        assert phe_private.raw_decrypt(ciphertext) == message


def test_we_decrypt_phe_ciphertexts(keypair) -> None:
    public_key, private_key = keypair
    phe_public = phe.PaillierPublicKey(public_key.n)
    first = phe_public.raw_encrypt(31337)
    second = phe_public.raw_encrypt(10**50)
    assert paillier.decrypt(private_key, first) == 31337
    total = paillier.add(public_key, first, second)
    assert paillier.decrypt(private_key, total) == 31337 + 10**50


def test_validate_ciphertexts_accepts_valid(keypair) -> None:
    public_key, _ = keypair
    ciphertexts = paillier.encrypt_many(public_key, [1, 2])
    assert (
        paillier.validate_ciphertexts(public_key, ciphertexts, 2, public_key.key_id)
        == ciphertexts
    )


def test_validate_ciphertexts_rejects_wrong_key(keypair) -> None:
    public_key, _ = keypair
    ciphertexts = paillier.encrypt_many(public_key, [1])
    with pytest.raises(InvalidCiphertextError, match="not .*this federation's"):
        paillier.validate_ciphertexts(public_key, ciphertexts, 1, "0" * 64)


def test_validate_ciphertexts_rejects_wrong_count(keypair) -> None:
    public_key, _ = keypair
    ciphertexts = paillier.encrypt_many(public_key, [1, 2])
    with pytest.raises(InvalidCiphertextError, match="has 2 ciphertexts, expected 3"):
        paillier.validate_ciphertexts(public_key, ciphertexts, 3, public_key.key_id)


@pytest.mark.parametrize(
    ("make_value", "match"),
    [
        (lambda key: 0, r"outside \[1, n\^2\)"),
        (lambda key: key.n_square, r"outside \[1, n\^2\)"),
        (lambda key: key.n_square + 5, r"outside \[1, n\^2\)"),
        (lambda key: -3, r"outside \[1, n\^2\)"),
        (lambda key: key.n * 7, "not coprime to n"),
        (lambda key: "123", "is a str, not an integer"),
        (lambda key: 3.0, "is a float, not an integer"),
    ],
)
def test_validate_ciphertexts_rejects_bad_values(keypair, make_value, match) -> None:
    public_key, _ = keypair
    ciphertexts = paillier.encrypt_many(public_key, [1])
    ciphertexts.append(make_value(public_key))
    with pytest.raises(InvalidCiphertextError, match="ciphertext 1 .*" + match):
        paillier.validate_ciphertexts(public_key, ciphertexts, 2, public_key.key_id)


def test_ciphertext_bytes_round_trip(keypair) -> None:
    public_key, private_key = keypair
    ciphertexts = paillier.encrypt_many(public_key, [3, 4, 5])
    data = paillier.ciphertexts_to_bytes(public_key, ciphertexts)
    assert len(data) == 3 * public_key.ciphertext_bytes
    assert paillier.ciphertexts_from_bytes(public_key, data) == ciphertexts


def test_ciphertext_bytes_truncated_rejected(keypair) -> None:
    public_key, _ = keypair
    data = paillier.ciphertexts_to_bytes(
        public_key, paillier.encrypt_many(public_key, [3])
    )
    with pytest.raises(InvalidCiphertextError, match="truncated or for another key"):
        paillier.ciphertexts_from_bytes(public_key, data[:-1])
    with pytest.raises(InvalidCiphertextError, match="not a positive multiple"):
        paillier.ciphertexts_from_bytes(public_key, b"")


def test_ciphertext_bytes_out_of_range_rejected(keypair) -> None:
    public_key, _ = keypair
    data = b"\xff" * public_key.ciphertext_bytes
    with pytest.raises(InvalidCiphertextError, match=r"ciphertext 0 is outside"):
        paillier.ciphertexts_from_bytes(public_key, data)


def test_sum_ciphertext_lists(keypair) -> None:
    public_key, private_key = keypair
    replies = [paillier.encrypt_many(public_key, [i, 10 * i]) for i in range(1, 4)]
    totals = paillier.sum_ciphertext_lists(public_key, replies)
    assert [paillier.decrypt(private_key, c) for c in totals] == [6, 60]
    with pytest.raises(InvalidCiphertextError, match="reply 1 has 1 ciphertexts"):
        paillier.sum_ciphertext_lists(public_key, [replies[0], replies[1][:1]])


def test_public_key_dict_round_trip(keypair) -> None:
    public_key, _ = keypair
    data = public_key.to_dict()
    assert data == {"n": str(public_key.n)}
    assert paillier.PaillierPublicKey.from_dict(data) == public_key
    with pytest.raises(ValueError, match="expected an odd modulus"):
        paillier.PaillierPublicKey.from_dict({"n": "15"})
