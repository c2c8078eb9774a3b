"""CKKS (TenSEAL) contexts, encryption of updates and their sum on the server.

A node scales its flat update by its token count, splits it into chunks of
poly_modulus_degree / 2 slots and encrypts each chunk as one TenSEAL CKKSVector.
The server, holding only the public context, adds the chunks of all replies. A node
of the key committee decrypts the sum with the secret context and divides it by the
total token count, which gives the token-weighted average update.

Sizes and times, measured with tenseal 0.3.18 on a 2-core CPU by encrypting random
vectors of magnitude 1e-1 with encrypt_update and summing len() of the chunks
(test_sum_bytes_per_parameter repeats the `sum` check):

- `sum`: 65,676 bytes per full chunk of 2048 slots, 32.1 B/param, 1.5-1.8 ms per
  chunk.
- `scoring`: 331,118 bytes per full chunk of 4096 slots, 80.9 B/param, 5-6 ms per
  chunk.

TenSEAL already compresses each SEAL ciphertext with zstd inside serialize(). zstd
cannot shrink 60-bit coefficients stored in 64-bit words, and a second zlib pass
saves under 1%. The stretch target of 16 B/param is not implemented. It would need
seeded symmetric ciphertexts (SEAL's encrypt_symmetric through tenseal.sealapi,
which sends a PRNG seed in place of the second polynomial) or two values per
complex slot, and both leave the CKKSVector format.

Precision: a fresh ciphertext decrypts with an absolute error of at most about 1e-8
per slot (max over 20 ciphertexts: 5e-9 for `sum`, 9e-9 for `scoring`). The error
does not grow with the values, so scaling by token counts makes it relatively
small: the average's error is about num_replies * 1e-8 / total_tokens. With 20
nodes of 500 to 50,000 tokens and update magnitudes 1e-3 to 1e-1, the measured max
relative error is about 1e-11.
"""

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from linguachain.privacy.codec import chunk_lengths, join_chunks, split_chunks
from linguachain.privacy.errors import InvalidCiphertextError

logger = logging.getLogger(__name__)

# Maximum total coefficient modulus bits for 128-bit classical security with a
# ternary secret, from the HomomorphicEncryption.org security standard (2018),
# Table 1. These are the limits SEAL's CoeffModulus.MaxBitCount returns.
HE_STANDARD_MAX_MODULUS_BITS = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

# A serialized full-size chunk is 2 polynomials x N coefficients x 8 bytes per data
# prime plus a few hundred bytes of headers. Larger chunks are rejected before
# TenSEAL parses them.
SERIALIZATION_MARGIN_BYTES = 4096

# Default number of replies whose sum must not overflow (checked in encrypt_update).
# NOTE: with `sum`, token_count * max|update| * max_parties must stay below 2^19, so
# 100,000 tokens and update values of 0.1 allow only 52 parties. Callers with larger
# token counts should weight by tokens / 1000 or similar.
DEFAULT_MAX_PARTIES = 64


@dataclass(frozen=True)
class CKKSParameters:
    """Named CKKS parameter set: ring degree, modulus chain, scale and keys."""

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    galois_keys: bool
    reason: str

    @property
    def slots(self) -> int:
        """Number of real values one ciphertext holds."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Number of rescales (multiplications) the modulus chain allows."""
        # The last prime is the special prime for key switching, and the first one
        # must stay to hold the result, so every prime in between is one rescale.
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def global_scale(self) -> float:
        """CKKS encoding scale."""
        return float(2**self.scale_bits)

    @property
    def max_plaintext_magnitude(self) -> float:
        """Largest absolute slot value that decrypts correctly after all rescales."""
        # A decrypted slot times the scale must stay below half the first prime.
        return float(2 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 1))


PARAMETER_SETS: dict[str, CKKSParameters] = {
    "sum": CKKSParameters(
        name="sum",
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(60, 49),
        scale_bits=40,
        galois_keys=False,
        reason=(
            "secure aggregation by addition only: one 60-bit data prime keeps "
            "ciphertexts at 32 B/param, and 109 modulus bits is the 128-bit limit "
            "for N=4096"
        ),
    ),
    "scoring": CKKSParameters(
        name="scoring",
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=(60, 40, 40, 60),
        scale_bits=40,
        galois_keys=True,
        reason=(
            "encrypted robustness scores: depth 2 for products with plaintext or "
            "ciphertext weights and Galois keys for the rotations of a dot "
            "product; 200 of the 218 modulus bits allowed for N=8192"
        ),
    ),
}


@dataclass(frozen=True)
class CKKSReply:
    """Encrypted update as a node sends it, with its token count and fingerprint."""

    chunks: list[bytes]
    token_count: int | None
    context_fingerprint: str


@dataclass(frozen=True)
class CKKSAggregate:
    """Chunk-wise sum of the valid replies and their total token count."""

    chunks: list[bytes]
    total_tokens: int
    num_replies: int


def get_parameters(name: str) -> CKKSParameters:
    """Return the CKKS parameter set of this name, checked against the HE standard."""
    if name not in PARAMETER_SETS:
        raise ValueError(
            f"unknown CKKS parameter set {name!r}; "
            f"use one of {sorted(PARAMETER_SETS)}"
        )
    params = PARAMETER_SETS[name]

    max_bits = HE_STANDARD_MAX_MODULUS_BITS.get(params.poly_modulus_degree)
    total_bits = sum(params.coeff_mod_bit_sizes)
    if max_bits is None or total_bits > max_bits:
        raise ValueError(
            f"CKKS parameter set {name!r} uses {total_bits} modulus bits for ring "
            f"degree {params.poly_modulus_degree}, above the 128-bit security "
            f"limit {max_bits}; shorten coeff_mod_bit_sizes"
        )
    return params


def require_depth(parameter_set: str, depth: int) -> None:
    """Raise ValueError unless the parameter set allows this multiplicative depth."""
    params = get_parameters(parameter_set)
    if depth > params.depth:
        deeper = [p.name for p in PARAMETER_SETS.values() if p.depth >= depth]
        fix = f"use {deeper}" if deeper else "add primes to the modulus chain"
        raise ValueError(
            f"CKKS parameter set {parameter_set!r} supports multiplicative depth "
            f"{params.depth} (modulus chain coeff_mod_bit_sizes="
            f"{list(params.coeff_mod_bit_sizes)}), but depth {depth} is required; "
            f"{fix}"
        )


def create_secret_context(parameter_set: str = "sum") -> ts.Context:
    """Create a CKKS context with a fresh secret key for the named parameter set."""
    params = get_parameters(parameter_set)
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    context.global_scale = params.global_scale
    if params.galois_keys:
        context.generate_galois_keys()

    logger.info(
        "created CKKS context %r (N=%d, %d slots)",
        parameter_set,
        params.poly_modulus_degree,
        params.slots,
    )
    return context


def serialize_context(context: ts.Context, save_secret_key: bool = False) -> bytes:
    """Serialize a context, with its secret key only when save_secret_key is set."""
    if save_secret_key and not context.is_private():
        raise ValueError(
            "save_secret_key=True but the context has no secret key; serialize a "
            "node's secret context instead of the server's public one"
        )
    return context.serialize(save_secret_key=save_secret_key)


def deserialize_context(data: bytes) -> ts.Context:
    """Load a context serialized by serialize_context."""
    try:
        context = ts.context_from(bytes(data))
    except (ValueError, RuntimeError, TypeError) as error:
        raise ValueError(
            f"failed to deserialize a TenSEAL context from {len(data)} bytes: "
            f"{error}; check that the file is an unmodified kit file"
        ) from error
    parameters_of(context)
    return context


def make_public_context(context: ts.Context) -> ts.Context:
    """Return an independent copy of the context without the secret key."""
    return ts.context_from(serialize_context(context, save_secret_key=False))


def context_fingerprint(context: ts.Context) -> str:
    """Return the SHA-256 hex digest of the parameters and public key of a context."""
    # Relinearization and Galois keys are left out: TenSEAL 0.3.18 generates new
    # ones when it loads a context that contains the secret key, so they differ
    # between the nodes' copies. Parameters, scale and public key are stable (tests
    # check a secret context, its public copy and both after reloading).
    public_bytes = context.serialize(
        save_public_key=True,
        save_secret_key=False,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    return hashlib.sha256(public_bytes).hexdigest()


def parameters_of(context: ts.Context) -> CKKSParameters:
    """Return the named parameter set a context was created with."""
    seal_context = context.seal_context().data
    degree = seal_context.first_context_data().parms().poly_modulus_degree()
    total_bits = seal_context.key_context_data().total_coeff_modulus_bit_count()

    for params in PARAMETER_SETS.values():
        if (
            params.poly_modulus_degree == degree
            and sum(params.coeff_mod_bit_sizes) == total_bits
        ):
            return params
    raise ValueError(
        f"CKKS context with N={degree} and {total_bits} modulus bits matches no "
        f"parameter set in {sorted(PARAMETER_SETS)}; create it with "
        "create_secret_context"
    )


def encrypt_update(
    context: ts.Context,
    vector: np.ndarray,
    token_count: int,
    max_parties: int = DEFAULT_MAX_PARTIES,
    fingerprint: str | None = None,
) -> CKKSReply:
    """Scale a flat update by the token count and encrypt it chunk by chunk."""
    params = parameters_of(context)
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"expected a non-empty 1-D vector, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("update contains NaN or inf values; refusing to encrypt it")
    _check_token_count(token_count)

    # The sum of max_parties scaled updates must stay below the largest magnitude
    # the first prime can hold, or the decrypted sum wraps around silently.
    scaled = vector * float(token_count)
    peak = float(np.max(np.abs(scaled))) * max_parties
    if peak >= params.max_plaintext_magnitude:
        raise ValueError(
            f"token count {token_count} times the largest update value "
            f"{float(np.max(np.abs(vector))):.3g} times max_parties {max_parties} is "
            f"{peak:.3g}, above the {params.max_plaintext_magnitude:.3g} that "
            f"parameter set {params.name!r} can sum without overflow; clip the "
            "update, lower max_parties or normalize token counts"
        )

    chunks = [
        ts.ckks_vector(context, chunk.tolist()).serialize()
        for chunk in split_chunks(scaled, params.slots)
    ]
    if fingerprint is None:
        fingerprint = context_fingerprint(context)
    return CKKSReply(
        chunks=chunks, token_count=token_count, context_fingerprint=fingerprint
    )


def validate_reply(
    public_context: ts.Context,
    reply: CKKSReply,
    length: int,
    fingerprint: str | None = None,
) -> list[ts.CKKSVector]:
    """Check a node's reply against the public context and return its chunks."""
    if fingerprint is None:
        fingerprint = context_fingerprint(public_context)
    if reply.context_fingerprint != fingerprint:
        raise InvalidCiphertextError(
            f"reply was encrypted under the context with fingerprint "
            f"{reply.context_fingerprint[:16]!r}..., not the server's "
            f"{fingerprint[:16]!r}...; the node must use the public context of "
            "this federation"
        )
    try:
        _check_token_count(reply.token_count)
    except ValueError as error:
        raise InvalidCiphertextError(
            f"reply has an invalid token count: {error}"
        ) from error
    return _load_chunks(public_context, reply.chunks, length)


def sum_ciphertexts(
    public_context: ts.Context,
    chunk_lists: Sequence[Sequence[bytes]],
    length: int | None = None,
) -> list[bytes]:
    """Add the chunk lists of several replies chunk-wise and serialize the sums."""
    if not chunk_lists:
        raise ValueError("no chunk lists to sum; pass at least one reply")

    vector_lists = []
    for position, chunks in enumerate(chunk_lists):
        try:
            vectors = _load_chunks(public_context, chunks, length)
        except InvalidCiphertextError as error:
            raise InvalidCiphertextError(f"reply {position}: {error}") from error
        if length is None:
            # Without the model length, the first reply fixes the chunk sizes.
            length = _checked_length(public_context, vectors)
        vector_lists.append(vectors)
    return add_chunkwise(vector_lists)


def sum_replies(
    public_context: ts.Context, replies: Sequence[CKKSReply], length: int
) -> CKKSAggregate:
    """Validate every reply and sum them; raise on the first invalid one."""
    if not replies:
        raise ValueError("no replies to sum; pass at least one reply")

    fingerprint = context_fingerprint(public_context)
    vector_lists = []
    for position, reply in enumerate(replies):
        try:
            vector_lists.append(
                validate_reply(public_context, reply, length, fingerprint)
            )
        except InvalidCiphertextError as error:
            raise InvalidCiphertextError(f"reply {position}: {error}") from error

    chunks = add_chunkwise(vector_lists)
    total_tokens = sum(int(reply.token_count) for reply in replies)
    logger.info(
        "summed %d CKKS replies (%d chunks, %d tokens)",
        len(replies),
        len(chunks),
        total_tokens,
    )
    return CKKSAggregate(
        chunks=chunks, total_tokens=total_tokens, num_replies=len(replies)
    )


def decrypt_average(
    secret_context: ts.Context,
    chunks: Sequence[bytes],
    total_tokens: int,
    length: int,
) -> np.ndarray:
    """Decrypt a summed update and divide it by the total token count."""
    if not secret_context.is_private():
        raise ValueError(
            "the context has no secret key, so it cannot decrypt; decrypt on a node "
            "of the key committee with its secret context"
        )
    _check_token_count(total_tokens)

    vectors = _load_chunks(secret_context, chunks, length)
    decrypted = [np.asarray(vector.decrypt(), dtype=np.float64) for vector in vectors]
    return join_chunks(decrypted, length) / float(total_tokens)


def _check_token_count(token_count: object) -> None:
    if token_count is None:
        raise ValueError("token count is missing; the node must send it")
    if isinstance(token_count, bool) or not isinstance(token_count, (int, np.integer)):
        raise ValueError(
            f"token count must be an integer, got {type(token_count).__name__}"
        )
    if token_count <= 0:
        raise ValueError(f"token count must be positive, got {token_count}")


def add_chunkwise(vector_lists: list[list[ts.CKKSVector]]) -> list[bytes]:
    """Add validated replies chunk by chunk, in place into the first, and serialize."""
    totals = vector_lists[0]
    for vectors in vector_lists[1:]:
        for total, vector in zip(totals, vectors):
            total.add_(vector)
    return [total.serialize() for total in totals]


def _checked_length(context: ts.Context, vectors: list[ts.CKKSVector]) -> int:
    """Return the update length of loaded chunks; all but the last must be full."""
    slots = parameters_of(context).slots
    sizes = [vector.size() for vector in vectors]
    length = sum(sizes)
    if sizes != chunk_lengths(length, slots):
        raise InvalidCiphertextError(
            f"reply 0 has chunk sizes {sizes}; every chunk but the last must hold "
            f"{slots} values"
        )
    return length


def _load_chunks(
    context: ts.Context, chunks: Sequence[bytes], length: int | None
) -> list[ts.CKKSVector]:
    """Deserialize chunks and check count, size, level and scale of each one."""
    params = parameters_of(context)
    seal_context = context.seal_context().data
    data_primes = seal_context.first_context_data().chain_index() + 1
    max_bytes = 2 * params.poly_modulus_degree * data_primes * 8
    max_bytes += SERIALIZATION_MARGIN_BYTES

    if length is None:
        expected_sizes = None
    else:
        expected_sizes = chunk_lengths(length, params.slots)
        if len(chunks) != len(expected_sizes):
            raise InvalidCiphertextError(
                f"reply has {len(chunks)} chunks but an update of {length} values "
                f"needs {len(expected_sizes)} chunks of {params.slots} slots"
            )

    vectors = []
    for index, chunk in enumerate(chunks):
        if not isinstance(chunk, (bytes, bytearray)):
            raise InvalidCiphertextError(
                f"chunk {index} is a {type(chunk).__name__}, not bytes"
            )
        if not 0 < len(chunk) <= max_bytes:
            raise InvalidCiphertextError(
                f"chunk {index} has {len(chunk)} bytes, outside (0, {max_bytes}] "
                f"for parameter set {params.name!r}"
            )
        try:
            vector = ts.ckks_vector_from(context, bytes(chunk))
        except (ValueError, RuntimeError, TypeError) as error:
            raise InvalidCiphertextError(
                f"chunk {index} is not a CKKS ciphertext of this context "
                f"(truncated, corrupted or other parameters): {error}"
            ) from error

        if expected_sizes is not None and vector.size() != expected_sizes[index]:
            raise InvalidCiphertextError(
                f"chunk {index} contains {vector.size()} values, expected "
                f"{expected_sizes[index]}"
            )
        if expected_sizes is None and vector.size() not in range(1, params.slots + 1):
            raise InvalidCiphertextError(
                f"chunk {index} contains {vector.size()} values, expected 1 to "
                f"{params.slots}"
            )
        ciphertexts = vector.ciphertext()
        if len(ciphertexts) != 1:
            raise InvalidCiphertextError(
                f"chunk {index} contains {len(ciphertexts)} ciphertexts, expected 1"
            )
        ciphertext = ciphertexts[0]
        if ciphertext.size() != 2:
            raise InvalidCiphertextError(
                f"chunk {index} is a ciphertext of {ciphertext.size()} polynomials, "
                "expected 2 (a fresh, relinearized ciphertext)"
            )
        if ciphertext.parms_id() != seal_context.first_parms_id():
            raise InvalidCiphertextError(
                f"chunk {index} is not at the first level of the modulus chain; "
                "nodes must send fresh ciphertexts"
            )
        if not math.isclose(ciphertext.scale, params.global_scale):
            raise InvalidCiphertextError(
                f"chunk {index} has scale {ciphertext.scale:.6g}, expected "
                f"2^{params.scale_bits}"
            )
        vectors.append(vector)
    return vectors
