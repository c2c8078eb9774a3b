"""Wire format of encrypted updates and decryption messages in Flower records.

A node's encrypted train reply carries, next to its "metrics" MetricRecord:

- "ciphertext": an ArrayRecord of chunks in order, each an
  `Array(dtype="bytes", shape=(len,), stype=<scheme>, data=<bytes>)` (Flower splits
  large arrays into transport chunks of its own);
- "secure": a ConfigRecord with the scheme, the token count, the fingerprint of the
  CKKS context or Paillier key, the number of chunks, the update length and a
  SHA-256 commitment to the ciphertext.

The commitment hashes the scheme, the fingerprint and every chunk with its length,
so the server detects a chunk changed, lost or reordered after the node
committed to it, and a ledger can record it without holding any ciphertext.
"""

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from linguachain.privacy.errors import InvalidCiphertextError
from linguachain.privacy.threshold import EqualityProof, PartialDecryption

CIPHERTEXT_RECORD = "ciphertext"
SECURE_RECORD = "secure"
DECRYPT_RECORD = "decrypt"
PLAINTEXT_RECORD = "plaintext"
PARTIAL_RECORD = "partial"

# Message type of the decryption requests the server sends to key holders.
DECRYPT_MESSAGE_TYPE = "query.decrypt"
# Message type of the requests to decrypt FLTrust's per-node score scalars.
DECRYPT_SCORES_MESSAGE_TYPE = "query.decrypt_scores"
# Key of a decryption request naming what its ciphertext is: the plain sum of
# fresh replies, or FLTrust's trust-weighted sum (one level down the chain).
CIPHERTEXT_KIND_KEY = "ciphertext-kind"
SUM_KIND = "sum"
FLTRUST_SUM_KIND = "fltrust-sum"
# The FedAvg of norm-bounded updates, already divided by the total block weight.
SCALED_SUM_KIND = "scaled-sum"
# Hash of the global model whose update sum a decryption request carries.
MODEL_HASH_KEY = "model-hash"
# Scalars per node in a "query.decrypt_scores" request (FLTrust: 2, norm bound: 1).
SCALARS_PER_NODE_KEY = "scalars-per-node"
# Array of a score decryption reply: one (inner product, squared norm) row per node.
SCORES_KEY = "scores"

_CHUNK_NAME = "chunk-{:06d}"


@dataclass(frozen=True)
class EncryptedUpdate:
    """One node's encrypted, token-weighted update as it travels to the server."""

    scheme: str
    chunks: list[bytes]
    token_count: int | None
    key_fingerprint: str
    length: int
    commitment: str

    @property
    def num_bytes(self) -> int:
        """Ciphertext bytes, without record headers."""
        return sum(len(chunk) for chunk in self.chunks)


def compute_commitment(
    scheme: str, key_fingerprint: str, chunks: Sequence[bytes]
) -> str:
    """Return the SHA-256 hex digest committing to a reply's ciphertext chunks."""
    digest = hashlib.sha256(b"linguachain/encrypted-update/v1")
    for field in (scheme.encode(), key_fingerprint.encode()):
        digest.update(len(field).to_bytes(8, "big") + field)
    digest.update(len(chunks).to_bytes(8, "big"))
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "big"))
        digest.update(chunk)
    return digest.hexdigest()


def chunks_to_record(chunks: Sequence[bytes], scheme: str) -> ArrayRecord:
    """Pack ciphertext chunks into an ArrayRecord of byte arrays, in order."""
    arrays = OrderedDict()
    for index, chunk in enumerate(chunks):
        arrays[_CHUNK_NAME.format(index)] = Array(
            dtype="bytes", shape=(len(chunk),), stype=scheme, data=bytes(chunk)
        )
    return ArrayRecord(arrays)


def chunks_from_record(record: ArrayRecord) -> list[bytes]:
    """Return the ciphertext chunks of an ArrayRecord written by chunks_to_record."""
    if not isinstance(record, ArrayRecord):
        raise InvalidCiphertextError(
            f"ciphertext record is a {type(record).__name__}, not an ArrayRecord"
        )
    chunks = []
    for index, (name, array) in enumerate(record.items()):
        if name != _CHUNK_NAME.format(index):
            raise InvalidCiphertextError(
                f"ciphertext chunk {index} is named {name!r}, expected "
                f"{_CHUNK_NAME.format(index)!r}; chunks are missing or reordered"
            )
        if array.dtype != "bytes" or not isinstance(array.data, bytes):
            raise InvalidCiphertextError(
                f"ciphertext chunk {index} has dtype {array.dtype!r}, expected bytes"
            )
        chunks.append(array.data)
    return chunks


def update_to_records(update: EncryptedUpdate) -> dict[str, ArrayRecord | ConfigRecord]:
    """Return the "ciphertext" and "secure" records of an encrypted reply."""
    header = ConfigRecord(
        {
            "scheme": update.scheme,
            "key-fingerprint": update.key_fingerprint,
            "num-chunks": len(update.chunks),
            "length": update.length,
            "commitment": update.commitment,
        }
    )
    if update.token_count is not None:
        header["token-count"] = int(update.token_count)
    return {
        CIPHERTEXT_RECORD: chunks_to_record(update.chunks, update.scheme),
        SECURE_RECORD: header,
    }


def update_from_content(content: RecordDict) -> EncryptedUpdate:
    """Read an encrypted reply and check its chunk count and commitment."""
    if SECURE_RECORD not in content or CIPHERTEXT_RECORD not in content:
        raise InvalidCiphertextError(
            f"reply has no {SECURE_RECORD!r} or {CIPHERTEXT_RECORD!r} record; the "
            "node sent no encrypted update (is secure aggregation on there?)"
        )
    header = content[SECURE_RECORD]
    if not isinstance(header, ConfigRecord):
        raise InvalidCiphertextError(f"{SECURE_RECORD!r} record is not a ConfigRecord")
    for key, kind in (
        ("scheme", str),
        ("key-fingerprint", str),
        ("num-chunks", int),
        ("length", int),
        ("commitment", str),
    ):
        if not isinstance(header.get(key), kind):
            raise InvalidCiphertextError(
                f"{SECURE_RECORD!r} record has no valid {key!r} ({kind.__name__})"
            )
    token_count = header.get("token-count")
    if token_count is not None and not isinstance(token_count, int):
        raise InvalidCiphertextError(
            f"token count is a {type(token_count).__name__}, not an integer"
        )

    chunks = chunks_from_record(content[CIPHERTEXT_RECORD])
    if len(chunks) != header["num-chunks"]:
        raise InvalidCiphertextError(
            f"reply carries {len(chunks)} chunks but its header announces "
            f"{header['num-chunks']}"
        )
    commitment = compute_commitment(header["scheme"], header["key-fingerprint"], chunks)
    if commitment != header["commitment"]:
        raise InvalidCiphertextError(
            "SHA-256 of the ciphertext chunks does not match the node's commitment; "
            "the chunks were truncated or changed"
        )
    return EncryptedUpdate(
        scheme=header["scheme"],
        chunks=chunks,
        token_count=token_count,
        key_fingerprint=header["key-fingerprint"],
        length=header["length"],
        commitment=commitment,
    )


def partial_to_records(
    partial: PartialDecryption, values: bytes, key_id: str
) -> dict[str, ArrayRecord | ConfigRecord]:
    """Return the records of a Paillier partial decryption reply."""
    header = ConfigRecord(
        {
            "party-index": partial.party_index,
            "key-fingerprint": key_id,
            # Proof integers exceed 64 bits, so they travel as decimal strings.
            "challenge": str(partial.proof.challenge),
            "response": str(partial.proof.response),
        }
    )
    return {
        PARTIAL_RECORD: chunks_to_record([values], "paillier"),
        DECRYPT_RECORD: header,
    }


def partial_from_content(
    content: RecordDict,
) -> tuple[int, str, bytes, EqualityProof]:
    """Return party index, key id, serialized values and proof of a partial reply."""
    if PARTIAL_RECORD not in content or DECRYPT_RECORD not in content:
        raise ValueError(
            f"decryption reply has no {PARTIAL_RECORD!r} or {DECRYPT_RECORD!r} record"
        )
    header = content[DECRYPT_RECORD]
    chunks = chunks_from_record(content[PARTIAL_RECORD])
    if len(chunks) != 1:
        raise ValueError(f"decryption reply carries {len(chunks)} value blobs, not 1")
    try:
        party_index = int(header["party-index"])
        key_id = str(header["key-fingerprint"])
        proof = EqualityProof(
            challenge=int(str(header["challenge"])),
            response=int(str(header["response"])),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"decryption reply header is invalid: {error}") from error
    return party_index, key_id, chunks[0], proof
