"""Threshold Paillier decryption with a trusted dealer (Damgard-Jurik, s = 1).

This is the threshold variant of Paillier by Damgard and Jurik with s = 1, whose
key sharing and proofs follow Shoup's threshold RSA.

Dealing, at provisioning time: n = pq with safe primes p = 2p' + 1, q = 2q' + 1 and
m = p'q'. The secret exponent d satisfies d = 0 mod m and d = 1 mod n. The dealer
shares d with a random polynomial f of degree t - 1 over Z_{nm}, f(0) = d, and gives
party i (1 <= i <= l) the share s_i = f(i). It publishes a random square v of
Z*_{n^2} and the verification keys v_i = v^(Delta * s_i), with Delta = l!. The
dealer then discards p and q (kits.provision never writes them).

Partial decryption by party i: c_i = c^(2 * Delta * s_i) mod n^2. Any t of them
combine, with the integer Lagrange coefficients lambda_i = Delta * prod i'/(i' - i),
into prod c_i^(2 * lambda_i) = (1 + n)^(4 * Delta^2 * M), from which
M = L(.) * (4 * Delta^2)^-1 mod n, where L(u) = (u - 1) / n.

Proof of correctness: party i proves log_{c^4}(c_i^2) = log_v(v_i) with a
Chaum-Pedersen proof of equal discrete logs, made non-interactive by hashing with
SHA-256 (Fiat-Shamir). For a batch of k ciphertexts the party sends one proof for
C = prod c_j^rho_j and D = prod c_{i,j}^rho_j (a small-exponent batch test). The
128-bit weights rho_j are hashed from all ciphertexts and partial decryptions. The
group of squares of Z*_{n^2} has order n * p' * q', with no small prime factor, so
a c_{i,j} whose square is wrong passes with probability about 2^-128. A value off
by an element of order 2, such as -c_{i,j}, can carry a valid proof, as in Shoup's
scheme. That is harmless because the combination squares every c_{i,j}.

Costs with a 2048-bit n on a 2-core CPU (5 parties, threshold 3, one batch of 20
packed ciphertexts): partial decryption with its batch proof 26 ms per ciphertext,
dominated by c^(2 * Delta * s_i) with a 4100-bit exponent. Verifying the batch proof
takes 69 ms for the whole batch, and combining 3 shares 0.22 ms per ciphertext.
"""

import hashlib
import logging
import math
import numbers
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2

from linguachain.privacy.errors import (
    InsufficientSharesError,
    InvalidPartialDecryptionError,
)
from linguachain.privacy.paillier import (
    DEFAULT_MODULUS_BITS,
    PaillierPrivateKey,
    PaillierPublicKey,
    generate_prime_pair,
    validate_ciphertexts,
)

logger = logging.getLogger(__name__)

# Bits of the Fiat-Shamir challenge and of the batch weights rho_j.
CHALLENGE_BITS = 256
BATCH_WEIGHT_BITS = 128

_DOMAIN_WEIGHTS = b"linguachain/threshold-paillier/batch-weights/v1"
_DOMAIN_CHALLENGE = b"linguachain/threshold-paillier/challenge/v1"


@dataclass(frozen=True)
class ThresholdVerificationKeys:
    """Public threshold parameters: party count, threshold, v and every v_i."""

    public_key: PaillierPublicKey
    num_parties: int
    threshold: int
    v: int
    party_keys: tuple[int, ...]

    @property
    def delta(self) -> int:
        """Delta = num_parties!, which makes every Lagrange coefficient an integer."""
        return math.factorial(self.num_parties)

    def party_key(self, party_index: int) -> int:
        """Return v_i for a party index i in [1, num_parties]."""
        return self.party_keys[party_index - 1]

    def to_dict(self) -> dict[str, object]:
        """Return the keys as JSON-ready data with decimal strings."""
        return {
            "n": str(self.public_key.n),
            "num_parties": self.num_parties,
            "threshold": self.threshold,
            "v": str(self.v),
            "party_keys": [str(key) for key in self.party_keys],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ThresholdVerificationKeys":
        """Load keys written by to_dict."""
        keys = cls(
            public_key=PaillierPublicKey.from_dict({"n": data["n"]}),
            num_parties=int(data["num_parties"]),
            threshold=int(data["threshold"]),
            v=int(data["v"]),
            party_keys=tuple(int(key) for key in data["party_keys"]),
        )
        check_threshold(keys.num_parties, keys.threshold)
        if len(keys.party_keys) != keys.num_parties:
            raise ValueError(
                f"{len(keys.party_keys)} party verification keys for "
                f"{keys.num_parties} parties; the file is incomplete"
            )
        return keys


@dataclass(frozen=True)
class PaillierKeyShare:
    """Secret share s_i = f(i) of the decryption exponent, held by party i."""

    party_index: int
    share: int
    key_id: str

    def __repr__(self) -> str:
        # Keep the share out of logs and tracebacks.
        return f"PaillierKeyShare(party_index={self.party_index}, key_id={self.key_id[:16]}...)"

    def to_dict(self) -> dict[str, object]:
        """Return the share as JSON-ready data with a decimal string."""
        return {
            "party_index": self.party_index,
            "share": str(self.share),
            "key_id": self.key_id,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PaillierKeyShare":
        """Load a share written by to_dict."""
        return cls(
            party_index=int(data["party_index"]),
            share=int(data["share"]),
            key_id=str(data["key_id"]),
        )


@dataclass(frozen=True)
class EqualityProof:
    """Fiat-Shamir proof of equal discrete logs: challenge e and response z."""

    challenge: int
    response: int


@dataclass(frozen=True)
class PartialDecryption:
    """Party i's partial decryptions c^(2 * Delta * s_i) of a batch and its proof."""

    party_index: int
    values: tuple[int, ...]
    proof: EqualityProof


@dataclass(frozen=True)
class ThresholdDealing:
    """Output of the trusted dealer; private_key must not leave the dealer."""

    public_key: PaillierPublicKey
    verification_keys: ThresholdVerificationKeys
    key_shares: tuple[PaillierKeyShare, ...]
    private_key: PaillierPrivateKey


def default_threshold(num_parties: int) -> int:
    """Return the majority threshold floor(l / 2) + 1."""
    return num_parties // 2 + 1


def check_threshold(num_parties: int, threshold: int) -> None:
    """Raise ValueError unless 1 <= threshold <= num_parties."""
    if num_parties < 1:
        raise ValueError(f"num_parties must be at least 1, got {num_parties}")
    if not 1 <= threshold <= num_parties:
        raise ValueError(
            f"threshold {threshold} is invalid for {num_parties} parties; use a "
            f"value in [1, {num_parties}] (default majority "
            f"{default_threshold(num_parties)})"
        )


def deal_threshold_keys(
    num_parties: int,
    threshold: int | None = None,
    modulus_bits: int = DEFAULT_MODULUS_BITS,
    safe_primes: tuple[int, int] | None = None,
) -> ThresholdDealing:
    """Generate a Paillier key with safe primes and deal t-of-l shares of it.

    safe_primes reuses a pair from generate_prime_pair(bits, safe_primes=True),
    which benchmarks use to deal for several party counts without minutes of
    prime generation; a deployment leaves it None.
    """
    if threshold is None:
        threshold = default_threshold(num_parties)
    check_threshold(num_parties, threshold)

    if safe_primes is None:
        p, q = generate_prime_pair(modulus_bits, safe_primes=True)
    else:
        p, q = safe_primes
    n = p * q
    m = (p - 1) // 2 * ((q - 1) // 2)
    n_times_m = n * m
    n_square = gmpy2.mpz(n) * n

    # d = 0 mod m and d = 1 mod n, by the Chinese remainder theorem.
    d = m * int(gmpy2.invert(m, n)) % n_times_m

    # f(X) = d + a_1 X + ... + a_{t-1} X^{t-1} over Z_{nm}.
    coefficients = [d] + [secrets.randbelow(n_times_m) for _ in range(threshold - 1)]
    shares = [
        _evaluate_polynomial(coefficients, index, n_times_m)
        for index in range(1, num_parties + 1)
    ]

    # v is a random square, which generates the squares of Z*_{n^2} with
    # overwhelming probability for safe primes.
    while True:
        r = gmpy2.mpz(secrets.randbelow(int(n_square) - 2) + 2)
        if gmpy2.gcd(r, n) == 1:
            break
    v = gmpy2.powmod(r, 2, n_square)
    delta = math.factorial(num_parties)
    party_keys = tuple(
        int(gmpy2.powmod(v, delta * share, n_square)) for share in shares
    )

    public_key = PaillierPublicKey(n=n)
    verification_keys = ThresholdVerificationKeys(
        public_key=public_key,
        num_parties=num_parties,
        threshold=threshold,
        v=int(v),
        party_keys=party_keys,
    )
    key_shares = tuple(
        PaillierKeyShare(party_index=index, share=share, key_id=public_key.key_id)
        for index, share in enumerate(shares, start=1)
    )
    logger.info(
        "dealt %d-of-%d threshold Paillier key %s (%d-bit n)",
        threshold,
        num_parties,
        public_key.key_id[:16],
        n.bit_length(),
    )
    return ThresholdDealing(
        public_key=public_key,
        verification_keys=verification_keys,
        key_shares=key_shares,
        private_key=PaillierPrivateKey(public_key=public_key, p=p, q=q),
    )


def partial_decrypt(
    verification_keys: ThresholdVerificationKeys,
    key_share: PaillierKeyShare,
    ciphertexts: Sequence[int],
) -> PartialDecryption:
    """Compute party i's partial decryptions of a batch and prove them correct."""
    public_key = verification_keys.public_key
    if key_share.key_id != public_key.key_id:
        raise ValueError(
            f"key share of party {key_share.party_index} belongs to key "
            f"{key_share.key_id[:16]}..., not {public_key.key_id[:16]}...; load the "
            "share from the same kit as the verification keys"
        )
    if not 1 <= key_share.party_index <= verification_keys.num_parties:
        raise ValueError(
            f"party index {key_share.party_index} is outside [1, "
            f"{verification_keys.num_parties}]"
        )
    ciphertexts = validate_ciphertexts(
        public_key, ciphertexts, len(ciphertexts), public_key.key_id
    )
    n_square = gmpy2.mpz(public_key.n_square)
    exponent = verification_keys.delta * key_share.share
    values = tuple(int(gmpy2.powmod(c, 2 * exponent, n_square)) for c in ciphertexts)

    # Prove log_u(w) = log_v(v_i) = Delta * s_i for the batched bases u and w.
    u, w = _batch_bases(verification_keys, key_share.party_index, ciphertexts, values)
    nonce = secrets.randbits(_nonce_bits(verification_keys))
    commitment_u = gmpy2.powmod(u, nonce, n_square)
    commitment_v = gmpy2.powmod(verification_keys.v, nonce, n_square)
    challenge = _challenge(
        verification_keys, key_share.party_index, u, w, commitment_u, commitment_v
    )
    response = nonce + challenge * exponent

    return PartialDecryption(
        party_index=key_share.party_index,
        values=values,
        proof=EqualityProof(challenge=challenge, response=response),
    )


def verify_partial_decryption(
    verification_keys: ThresholdVerificationKeys,
    ciphertexts: Sequence[int],
    partial: PartialDecryption,
) -> None:
    """Raise InvalidPartialDecryptionError unless the partial decryption is proven."""
    index = partial.party_index
    public_key = verification_keys.public_key
    n_square = gmpy2.mpz(public_key.n_square)

    if not 1 <= index <= verification_keys.num_parties:
        raise InvalidPartialDecryptionError(
            index, f"party index outside [1, {verification_keys.num_parties}]"
        )
    if len(partial.values) != len(ciphertexts):
        raise InvalidPartialDecryptionError(
            index,
            f"{len(partial.values)} values for {len(ciphertexts)} ciphertexts",
        )
    ciphertexts = validate_ciphertexts(
        public_key, ciphertexts, len(ciphertexts), public_key.key_id
    )
    for position, value in enumerate(partial.values):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or not 0 < value < n_square
            or math.gcd(int(value), public_key.n) != 1
        ):
            raise InvalidPartialDecryptionError(
                index, f"value {position} is not an element of Z*_(n^2)"
            )
    proof = partial.proof
    if not (
        isinstance(proof.challenge, int)
        and isinstance(proof.response, int)
        and 0 <= proof.challenge < 2**CHALLENGE_BITS
    ):
        raise InvalidPartialDecryptionError(index, "proof challenge out of range")
    if not 0 <= proof.response < 2 ** (_nonce_bits(verification_keys) + 1):
        raise InvalidPartialDecryptionError(index, "proof response out of range")

    # Recompute the commitments a = u^z * w^-e and b = v^z * v_i^-e, then the
    # challenge; an honest prover's commitments were u^r and v^r.
    u, w = _batch_bases(verification_keys, index, ciphertexts, partial.values)
    party_key = verification_keys.party_key(index)
    commitment_u = (
        gmpy2.powmod(u, proof.response, n_square)
        * gmpy2.powmod(w, -proof.challenge, n_square)
        % n_square
    )
    commitment_v = (
        gmpy2.powmod(verification_keys.v, proof.response, n_square)
        * gmpy2.powmod(party_key, -proof.challenge, n_square)
        % n_square
    )
    expected = _challenge(verification_keys, index, u, w, commitment_u, commitment_v)
    if expected != proof.challenge:
        raise InvalidPartialDecryptionError(
            index, "proof of equal discrete logs does not verify"
        )


def combine_partial_decryptions(
    verification_keys: ThresholdVerificationKeys,
    ciphertexts: Sequence[int],
    partials: Sequence[PartialDecryption],
    verify: bool = True,
) -> list[int]:
    """Verify the partial decryptions and combine t of them into plaintexts."""
    indices = [partial.party_index for partial in partials]
    if len(set(indices)) != len(indices):
        raise ValueError(
            f"duplicate party indices in {sorted(indices)}; pass one partial "
            "decryption per party"
        )
    threshold = verification_keys.threshold
    if len(partials) < threshold:
        raise InsufficientSharesError(
            f"got partial decryptions from {len(partials)} parties "
            f"{sorted(indices)}, but the threshold is {threshold}; collect "
            f"{threshold - len(partials)} more"
        )
    if verify:
        for partial in partials:
            verify_partial_decryption(verification_keys, ciphertexts, partial)

    # Any t shares determine f(0); use the t lowest party indices.
    chosen = sorted(partials, key=lambda partial: partial.party_index)[:threshold]
    chosen_indices = [partial.party_index for partial in chosen]
    coefficients = [
        lagrange_coefficient(index, chosen_indices, verification_keys.delta)
        for index in chosen_indices
    ]

    public_key = verification_keys.public_key
    n = gmpy2.mpz(public_key.n)
    n_square = n * n
    scale_inverse = gmpy2.invert(4 * verification_keys.delta**2, n)
    plaintexts = []
    for position in range(len(ciphertexts)):
        combined = gmpy2.mpz(1)
        for partial, coefficient in zip(chosen, coefficients):
            term = gmpy2.powmod(partial.values[position], 2 * coefficient, n_square)
            combined = combined * term % n_square
        plaintexts.append(int((combined - 1) // n * scale_inverse % n))
    return plaintexts


def lagrange_coefficient(index: int, indices: Sequence[int], delta: int) -> int:
    """Return Delta * prod_{j != i} j / (j - i), the Lagrange coefficient at 0."""
    numerator = delta
    denominator = 1
    for other in indices:
        if other != index:
            numerator *= other
            denominator *= other - index
    # Delta = l! makes the division exact for indices in [1, l].
    quotient, remainder = divmod(numerator, denominator)
    if remainder:
        raise ValueError(
            f"Lagrange coefficient of party {index} over {list(indices)} is not an "
            "integer; party indices must lie in [1, num_parties]"
        )
    return quotient


def _evaluate_polynomial(coefficients: list[int], x: int, modulus: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % modulus
    return result


def _nonce_bits(verification_keys: ThresholdVerificationKeys) -> int:
    # The witness Delta * s_i is below Delta * n * m < Delta * n^2; the nonce is
    # CHALLENGE_BITS + 128 bits longer than challenge * witness, so the response
    # statistically hides the witness.
    n_square_bits = verification_keys.public_key.n_square.bit_length()
    return n_square_bits + verification_keys.delta.bit_length() + 2 * CHALLENGE_BITS


def _batch_bases(
    verification_keys: ThresholdVerificationKeys,
    party_index: int,
    ciphertexts: Sequence[int],
    values: Sequence[int],
) -> tuple[gmpy2.mpz, gmpy2.mpz]:
    """Return u = (prod c_j^rho_j)^4 and w = (prod c_{i,j}^rho_j)^2."""
    n_square = gmpy2.mpz(verification_keys.public_key.n_square)
    width = verification_keys.public_key.ciphertext_bytes

    transcript = hashlib.sha256(_DOMAIN_WEIGHTS)
    transcript.update(_encode_integers(verification_keys, party_index))
    for number in (*ciphertexts, *values):
        transcript.update(int(number).to_bytes(width, "big"))
    seed = transcript.digest()

    batched_c = gmpy2.mpz(1)
    batched_values = gmpy2.mpz(1)
    for position, (c, value) in enumerate(zip(ciphertexts, values)):
        digest = hashlib.sha256(seed + position.to_bytes(8, "big")).digest()
        weight = int.from_bytes(digest[: BATCH_WEIGHT_BITS // 8], "big")
        batched_c = batched_c * gmpy2.powmod(c, weight, n_square) % n_square
        batched_values = batched_values * gmpy2.powmod(value, weight, n_square)
        batched_values %= n_square
    return (
        gmpy2.powmod(batched_c, 4, n_square),
        gmpy2.powmod(batched_values, 2, n_square),
    )


def _challenge(
    verification_keys: ThresholdVerificationKeys,
    party_index: int,
    u: gmpy2.mpz,
    w: gmpy2.mpz,
    commitment_u: gmpy2.mpz,
    commitment_v: gmpy2.mpz,
) -> int:
    width = verification_keys.public_key.ciphertext_bytes
    digest = hashlib.sha256(_DOMAIN_CHALLENGE)
    digest.update(_encode_integers(verification_keys, party_index))
    for number in (u, w, commitment_u, commitment_v):
        digest.update(int(number).to_bytes(width, "big"))
    return int.from_bytes(digest.digest(), "big") >> (256 - CHALLENGE_BITS)


def _encode_integers(
    verification_keys: ThresholdVerificationKeys, party_index: int
) -> bytes:
    """Encode n, v, v_i and i with fixed widths for hashing."""
    width = verification_keys.public_key.ciphertext_bytes
    return b"".join(
        [
            verification_keys.public_key.n.to_bytes(width, "big"),
            verification_keys.v.to_bytes(width, "big"),
            verification_keys.party_key(party_index).to_bytes(width, "big"),
            party_index.to_bytes(4, "big"),
        ]
    )
