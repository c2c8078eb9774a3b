"""Secure sum of weighted updates: what nodes encrypt and what the server adds.

Both schemes compute the FedAvg average sum(w_i * x_i) / sum(w_i), where x_i is
node i's update (local minus global weights, flattened in canonical order) and
w_i its weight. The weight is the node's number of training blocks, its token
count divided by data.block_size. Every block contains block_size tokens, so the
weights are proportional to token counts and give the same average. They keep
the scaled values block_size times smaller, which leaves CKKS more overflow
margin and Paillier slots more headroom.

- CKKS: the node encrypts w_i * x_i with the shared context (privacy.ckks). The
  server adds ciphertexts with the public context; a key holder decrypts the sum
  and divides it by sum(w_i).
- Paillier: the node quantizes x_i (privacy.packing), multiplies the integers by
  w_i and packs them; the server multiplies ciphertexts, t key-share holders
  decrypt the packed sum together (privacy.threshold) and the server unpacks it.
  The result is exactly the weighted average of the quantized updates.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from linguachain.privacy import ckks, paillier
from linguachain.privacy.codec import split_chunks
from linguachain.privacy.errors import InvalidCiphertextError
from linguachain.privacy.packing import FixedPointPacking
from linguachain.privacy.records import EncryptedUpdate, compute_commitment
from linguachain.privacy.threshold import (
    PaillierKeyShare,
    PartialDecryption,
    ThresholdVerificationKeys,
    combine_partial_decryptions,
    partial_decrypt,
)

logger = logging.getLogger(__name__)

CKKS = "ckks"
PAILLIER = "paillier"

# Paillier ciphertexts per transported chunk: 512 KiB with a 2048-bit n.
PAILLIER_CIPHERTEXTS_PER_CHUNK = 1024


@dataclass(frozen=True)
class PaillierSettings:
    """Fixed-point range, precision and weight headroom of the Paillier path."""

    clip_range: float
    precision_bits: int
    max_total_weight: int


def aggregation_weight(token_count: int, block_size: int) -> int:
    """Return a node's weight: its training blocks, token_count // block_size."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    weight = int(token_count) // block_size
    if weight < 1:
        raise ValueError(
            f"token count {token_count} is below one {block_size}-token block, so "
            "the node has nothing to contribute"
        )
    return weight


def paillier_packing(
    public_key: paillier.PaillierPublicKey, settings: PaillierSettings
) -> FixedPointPacking:
    """Return the slot layout shared by nodes and server for this key."""
    return FixedPointPacking(
        clip_range=settings.clip_range,
        precision_bits=settings.precision_bits,
        max_parties=settings.max_total_weight,
        modulus_bits=public_key.modulus_bits,
    )


def count_paillier_ciphertexts(packing: FixedPointPacking, length: int) -> int:
    """Return how many Paillier ciphertexts an update of this length needs."""
    return packing.count_plaintexts(length)


# Node side: encryption and decryption.


def encrypt_ckks(
    context: ts.Context,
    fingerprint: str,
    vector: np.ndarray,
    weight: int,
    token_count: int,
) -> EncryptedUpdate:
    """Encrypt weight * vector under the shared CKKS context."""
    reply = ckks.encrypt_update(context, vector, weight, fingerprint=fingerprint)
    return EncryptedUpdate(
        scheme=CKKS,
        chunks=reply.chunks,
        token_count=token_count,
        key_fingerprint=fingerprint,
        length=int(vector.size),
        commitment=compute_commitment(CKKS, fingerprint, reply.chunks),
    )


def encrypt_paillier(
    public_key: paillier.PaillierPublicKey,
    packing: FixedPointPacking,
    vector: np.ndarray,
    weight: int,
    token_count: int,
) -> EncryptedUpdate:
    """Quantize, weight, pack and encrypt a flat update under the Paillier key."""
    vector = np.asarray(vector, dtype=np.float64)
    num_clipped = int(np.count_nonzero(np.abs(vector) > packing.clip_range))
    if num_clipped:
        logger.warning(
            "clipped %d of %d update values to [-%g, %g] for Paillier; raise "
            "secure_aggregation.clip_range if this is frequent",
            num_clipped,
            vector.size,
            packing.clip_range,
            packing.clip_range,
        )
    plaintexts = packing.pack(vector, weight)
    # NOTE: the noise r^n mod n^2 is computed here, on the round's critical path.
    # It does not depend on the update, so it could be precomputed during training.
    ciphertexts = paillier.encrypt_many(public_key, plaintexts)
    chunks = [
        paillier.ciphertexts_to_bytes(public_key, part.tolist())
        for part in split_chunks(
            np.array(ciphertexts, dtype=object), PAILLIER_CIPHERTEXTS_PER_CHUNK
        )
    ]
    key_id = public_key.key_id
    return EncryptedUpdate(
        scheme=PAILLIER,
        chunks=chunks,
        token_count=token_count,
        key_fingerprint=key_id,
        length=int(vector.size),
        commitment=compute_commitment(PAILLIER, key_id, chunks),
    )


def decrypt_ckks_average(
    secret_context: ts.Context,
    chunks: Sequence[bytes],
    total_weight: int,
    length: int,
) -> np.ndarray:
    """Decrypt a summed CKKS update on a key holder and divide by the total weight."""
    return ckks.decrypt_average(secret_context, chunks, total_weight, length)


def partial_decrypt_paillier(
    verification_keys: ThresholdVerificationKeys,
    key_share: PaillierKeyShare,
    chunks: Sequence[bytes],
) -> PartialDecryption:
    """Compute this party's proven partial decryption of a summed Paillier update."""
    public_key = verification_keys.public_key
    ciphertexts = [
        value
        for chunk in chunks
        for value in paillier.ciphertexts_from_bytes(public_key, chunk)
    ]
    return partial_decrypt(verification_keys, key_share, ciphertexts)


# Server side: validation and homomorphic addition.


def check_header(
    update: EncryptedUpdate, scheme: str, fingerprint: str, length: int
) -> int:
    """Check scheme, key fingerprint, length and token count; return the count."""
    if update.scheme != scheme:
        raise InvalidCiphertextError(
            f"reply uses scheme {update.scheme!r}, but this federation runs "
            f"{scheme!r}"
        )
    if update.key_fingerprint != fingerprint:
        raise InvalidCiphertextError(
            f"reply was encrypted under key {update.key_fingerprint[:16]!r}..., not "
            f"this federation's {fingerprint[:16]!r}...; the node must use the kit "
            "provisioned for this run"
        )
    if update.length != length:
        raise InvalidCiphertextError(
            f"reply encrypts {update.length} values, but the model has {length}"
        )
    if update.token_count is None:
        raise InvalidCiphertextError("reply has no token count")
    if update.token_count <= 0:
        raise InvalidCiphertextError(
            f"reply has token count {update.token_count}; it must be positive"
        )
    return update.token_count


class CKKSAggregator:
    """Validates and adds CKKS replies with the public context only."""

    scheme = CKKS

    def __init__(self, public_context: ts.Context) -> None:
        if public_context.is_private():
            raise ValueError(
                "the server's CKKS context contains a secret key; load the server "
                "kit, which contains only the public context"
            )
        self.context = public_context
        self.fingerprint = ckks.context_fingerprint(public_context)

    def load(self, update: EncryptedUpdate, length: int) -> list[ts.CKKSVector]:
        """Validate a reply and deserialize its chunks."""
        check_header(update, CKKS, self.fingerprint, length)
        return ckks.validate_reply(
            self.context,
            ckks.CKKSReply(update.chunks, update.token_count, update.key_fingerprint),
            length,
            self.fingerprint,
        )

    def add(self, loaded: list[list[ts.CKKSVector]]) -> list[bytes]:
        """Add the loaded replies chunk-wise and serialize the sums."""
        if not loaded:
            raise ValueError("no replies to add")
        return ckks.add_chunkwise(loaded)


class PaillierAggregator:
    """Validates and adds Paillier replies, then combines partial decryptions."""

    scheme = PAILLIER

    def __init__(
        self,
        verification_keys: ThresholdVerificationKeys,
        settings: PaillierSettings,
    ) -> None:
        self.verification_keys = verification_keys
        self.public_key = verification_keys.public_key
        self.fingerprint = self.public_key.key_id
        self.packing = paillier_packing(self.public_key, settings)

    def load(self, update: EncryptedUpdate, length: int) -> list[int]:
        """Validate a reply and parse its ciphertexts."""
        check_header(update, PAILLIER, self.fingerprint, length)
        expected = count_paillier_ciphertexts(self.packing, length)
        expected_chunks = -(-expected // PAILLIER_CIPHERTEXTS_PER_CHUNK)
        if len(update.chunks) != expected_chunks:
            raise InvalidCiphertextError(
                f"reply has {len(update.chunks)} chunks, but {length} values need "
                f"{expected_chunks} chunks of up to {PAILLIER_CIPHERTEXTS_PER_CHUNK} "
                "ciphertexts"
            )
        ciphertexts = []
        for index, chunk in enumerate(update.chunks):
            try:
                ciphertexts += paillier.ciphertexts_from_bytes(self.public_key, chunk)
            except InvalidCiphertextError as error:
                raise InvalidCiphertextError(f"chunk {index}: {error}") from error
        return paillier.validate_ciphertexts(
            self.public_key, ciphertexts, expected, self.fingerprint
        )

    def add(self, loaded: list[list[int]]) -> list[bytes]:
        """Multiply the replies' ciphertexts position-wise and serialize the sums."""
        summed = paillier.sum_ciphertext_lists(self.public_key, loaded)
        return [
            paillier.ciphertexts_to_bytes(self.public_key, part.tolist())
            for part in split_chunks(
                np.array(summed, dtype=object), PAILLIER_CIPHERTEXTS_PER_CHUNK
            )
        ]

    def parse_sum(self, chunks: Sequence[bytes]) -> list[int]:
        """Parse the serialized summed ciphertexts."""
        return [
            value
            for chunk in chunks
            for value in paillier.ciphertexts_from_bytes(self.public_key, chunk)
        ]

    def combine(
        self,
        summed: list[int],
        partials: Sequence[PartialDecryption],
        total_weight: int,
        length: int,
    ) -> np.ndarray:
        """Combine verified partial decryptions into the weighted average update."""
        # The caller verified each partial decryption and named its node.
        plaintexts = combine_partial_decryptions(
            self.verification_keys, summed, partials, verify=False
        )
        weighted_sum = self.packing.unpack_sum(plaintexts, length, total_weight)
        return weighted_sum / float(total_weight)
