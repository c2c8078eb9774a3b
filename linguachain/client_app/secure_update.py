"""Node step of secure aggregation: encrypt the update, decrypt sums on request.

After local training the node computes its update: local minus global weights,
in the order of the global ArrayRecord (the model's `named_parameters` order).
It rejects NaN and inf and checks the projected payload size against
`secure_aggregation.max_payload_mb`. Then it encrypts the update weighted by its
training blocks (privacy.secure_sum) and replies with the ciphertext chunks, its
token count, the key fingerprint and a SHA-256 commitment (privacy.records).

The node finds its kit at the node-config key `kit-path` (deployment) or else at
`<secure_aggregation.kit_dir>/node-<partition-id>` (simulation, where the server
provisions the kits into the run folder and sends that folder in the run config).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from linguachain.config import RunConfig, load_config, valid_keys
from linguachain.privacy import ckks, fltrust
from linguachain.privacy.codec import count_chunks, flatten_update
from linguachain.privacy.kits import NODE_DIR_PREFIX, NodeKit, load_node_kit
from linguachain.privacy.records import (
    CIPHERTEXT_KIND_KEY,
    CIPHERTEXT_RECORD,
    DECRYPT_RECORD,
    MODEL_HASH_KEY,
    FLTRUST_SUM_KIND,
    SCALARS_PER_NODE_KEY,
    SCALED_SUM_KIND,
    SUM_KIND,
    PLAINTEXT_RECORD,
    SCORES_KEY,
    EncryptedUpdate,
    chunks_from_record,
    partial_to_records,
    update_to_records,
)
from linguachain.privacy.secure_sum import (
    CKKS,
    PAILLIER,
    PaillierSettings,
    aggregation_weight,
    decrypt_ckks_average,
    encrypt_ckks,
    encrypt_paillier,
    paillier_packing,
    partial_decrypt_paillier,
)
from linguachain.privacy.paillier import ciphertexts_to_bytes

logger = logging.getLogger(__name__)

KIT_PATH_KEY = "kit-path"
MAX_PAYLOAD_KEY = "secure_aggregation.max_payload_mb"
AVERAGE_KEY = "average"

# Bytes a serialized TenSEAL ciphertext adds to its two polynomials: 140 for a
# full `sum` chunk with tenseal 0.3.18 (sizes in privacy.ckks), rounded up.
CKKS_HEADER_BYTES = 256


class PayloadTooLargeError(ValueError):
    """Encrypted update larger than secure_aggregation.max_payload_mb."""


def paillier_settings(config: RunConfig) -> PaillierSettings:
    """Return the Paillier fixed-point settings of a run config."""
    secure = config.secure_aggregation
    return PaillierSettings(
        clip_range=secure.clip_range,
        precision_bits=secure.precision_bits,
        max_total_weight=secure.max_total_blocks,
    )


def kit_path(context: Context, config: RunConfig) -> Path:
    """Return the folder of this node's kit from node config or run config."""
    configured = context.node_config.get(KIT_PATH_KEY)
    if configured:
        return Path(str(configured))
    if not config.secure_aggregation.kit_dir:
        raise ValueError(
            f"no kit for this node: set the node-config key {KIT_PATH_KEY!r} to the "
            "node's folder written by `linguachain provision`, or set "
            "secure_aggregation.kit_dir"
        )
    partition_id = int(context.node_config["partition-id"])
    return Path(config.secure_aggregation.kit_dir) / f"{NODE_DIR_PREFIX}{partition_id}"


@functools.lru_cache(maxsize=4)
def _load_kit_cached(path: str) -> NodeKit:
    return load_node_kit(path)


def decrypted_average_path(kit_folder: Path, run_id: int) -> Path:
    """Return the file where a CKKS decryptor keeps its last result of a run."""
    return kit_folder / f"decrypted-average-run-{run_id}.npz"


def save_decrypted_average(path: Path, model_hash: str, average: np.ndarray) -> None:
    """Write the average update decrypted for the parent model `model_hash`."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as file:
        np.savez(file, model_hash=np.array(model_hash), average=average)
    partial.replace(path)


def load_decrypted_average(path: Path) -> tuple[str, np.ndarray] | None:
    """Return the parent model hash and average stored at `path`, if readable."""
    try:
        with np.load(path) as stored:
            return str(stored["model_hash"]), np.asarray(stored["average"])
    except (OSError, KeyError, ValueError) as error:
        if path.exists():
            logger.warning("Ignoring unreadable decrypted average %s: %s", path, error)
        return None


def load_kit(context: Context, config: RunConfig) -> NodeKit:
    """Load this node's kit once per process."""
    path = kit_path(context, config)
    if not path.is_dir():
        raise FileNotFoundError(
            f"kit folder {path} not found; point the node-config key "
            f"{KIT_PATH_KEY!r} at the folder `linguachain provision` wrote for it"
        )
    return _load_kit_cached(str(path.resolve()))


def compute_update(
    global_weights: Mapping[str, np.ndarray], local_weights: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Return local minus global weights as one flat float64 vector."""
    if list(global_weights) != list(local_weights):
        raise ValueError(
            "local and global weights have different parameter names or order; "
            "server and node must build the same model preset"
        )
    differences = [
        np.asarray(local_weights[name], np.float64)
        - np.asarray(global_weights[name], np.float64)
        for name in global_weights
    ]
    # flatten_update raises on NaN or inf, so nothing non-finite is encrypted.
    return flatten_update(differences)


def project_payload_bytes(kit: NodeKit, config: RunConfig, length: int) -> int:
    """Return the ciphertext bytes an update of this length will take."""
    scheme = config.secure_aggregation.scheme
    if scheme == CKKS:
        params = ckks.parameters_of(kit.ckks_context)
        data_primes = len(params.coeff_mod_bit_sizes) - 1
        chunk_bytes = 2 * params.poly_modulus_degree * data_primes * 8
        return count_chunks(length, params.slots) * (chunk_bytes + CKKS_HEADER_BYTES)
    public_key = _paillier_public_key(kit)
    packing = paillier_packing(public_key, paillier_settings(config))
    return packing.count_plaintexts(length) * public_key.ciphertext_bytes


def check_payload_size(num_bytes: int, config: RunConfig) -> None:
    """Raise PayloadTooLargeError when a payload exceeds the configured limit."""
    limit_mb = config.secure_aggregation.max_payload_mb
    if num_bytes > limit_mb * 2**20:
        raise PayloadTooLargeError(
            f"encrypted update of {num_bytes / 2**20:.1f} MiB ({num_bytes} bytes) "
            f"exceeds the limit of {limit_mb:g} MiB; raise {MAX_PAYLOAD_KEY} or "
            "use a smaller model preset"
        )


def encrypt_train_update(
    config: RunConfig,
    kit: NodeKit,
    global_weights: Mapping[str, np.ndarray],
    local_weights: Mapping[str, np.ndarray],
    token_count: int,
    partition_id: int,
) -> tuple[dict[str, ArrayRecord | ConfigRecord], dict[str, float]]:
    """Encrypt this node's update; return the reply records and their metrics."""
    scheme = config.secure_aggregation.scheme
    vector = compute_update(global_weights, local_weights)
    weight = aggregation_weight(token_count, config.data.block_size)
    max_blocks = config.secure_aggregation.max_total_blocks
    if scheme == PAILLIER and weight > max_blocks:
        raise ValueError(
            f"this node's {weight} training blocks exceed the Paillier slot "
            f"headroom secure_aggregation.max_total_blocks={max_blocks}; raise it"
        )

    projected = project_payload_bytes(kit, config, vector.size)
    logger.info(
        "Node %d: encrypting %d values with %s, projected payload %.2f MiB "
        "(%.1f B/param)",
        partition_id,
        vector.size,
        scheme,
        projected / 2**20,
        projected / vector.size,
    )
    check_payload_size(projected, config)

    started = time.perf_counter()
    update: EncryptedUpdate
    if scheme == CKKS:
        update = encrypt_ckks(
            kit.ckks_context, kit.ckks_fingerprint, vector, weight, token_count
        )
    elif scheme == PAILLIER:
        public_key = _paillier_public_key(kit)
        packing = paillier_packing(public_key, paillier_settings(config))
        update = encrypt_paillier(public_key, packing, vector, weight, token_count)
    else:
        raise ValueError(f"secure aggregation scheme {scheme!r} encrypts nothing")
    seconds = time.perf_counter() - started

    check_payload_size(update.num_bytes, config)
    logger.info(
        "Node %d: sending %d %s chunks, %.2f MiB, commitment %s..., encrypted in "
        "%.2f s",
        partition_id,
        len(update.chunks),
        scheme,
        update.num_bytes / 2**20,
        update.commitment[:16],
        seconds,
    )
    metrics = {"encrypt-seconds": seconds, "payload-bytes": float(update.num_bytes)}
    return update_to_records(update), metrics


def handle_decrypt(msg: Message, context: Context) -> Message:
    """Decrypt a summed update (CKKS) or partially decrypt it (Paillier)."""
    keys = set(valid_keys())
    config = load_config({k: v for k, v in msg.content["config"].items() if k in keys})
    kit = load_kit(context, config)
    request = msg.content[DECRYPT_RECORD]
    scheme = str(request["scheme"])
    chunks = chunks_from_record(msg.content[CIPHERTEXT_RECORD])
    server_round = int(request["server-round"])

    if scheme == CKKS:
        _check_request_key(request, kit.ckks_fingerprint)
        kind = str(request.get(CIPHERTEXT_KIND_KEY, SUM_KIND))
        total_weight = int(request["total-weight"])
        length = int(request["length"])
        # NOTE: the node cannot tell a sum from a single node's ciphertext, so a
        # server that breaks the protocol could have one update decrypted here.
        if kind == SUM_KIND:
            average = decrypt_ckks_average(
                kit.ckks_context, chunks, total_weight, length
            )
        elif kind in (FLTRUST_SUM_KIND, SCALED_SUM_KIND):
            # The server's weights already divide by their total (the sum of
            # trust scores, or of block weights for norm bounding).
            average = fltrust.decrypt_aggregate(kit.ckks_context, chunks, length)
            average = average / float(total_weight)
        else:
            raise ValueError(
                f"decryption request has {CIPHERTEXT_KIND_KEY}={kind!r}; expected"
                f" {SUM_KIND!r}, {FLTRUST_SUM_KIND!r} or {SCALED_SUM_KIND!r}"
            )
        logger.info(
            "Node %d: decrypted the CKKS %s of %d replies for round %d",
            kit.node_index,
            kind,
            int(request["num-replies"]),
            server_round,
        )
        if MODEL_HASH_KEY in request:
            # Kept for this node's vote, where it checks the proposed model.
            save_decrypted_average(
                decrypted_average_path(kit.path, context.run_id),
                str(request[MODEL_HASH_KEY]),
                average,
            )
        content = RecordDict(
            {PLAINTEXT_RECORD: ArrayRecord({AVERAGE_KEY: Array(average)})}
        )
        return Message(content=content, reply_to=msg)

    if scheme == PAILLIER:
        verification_keys = kit.paillier_verification_keys
        key_share = kit.paillier_key_share
        if verification_keys is None or key_share is None:
            raise ValueError(
                f"kit {kit.path} contains no Paillier key share; provision the kits "
                "with Paillier keys"
            )
        _check_request_key(request, verification_keys.public_key.key_id)
        partial = partial_decrypt_paillier(verification_keys, key_share, chunks)
        values = ciphertexts_to_bytes(verification_keys.public_key, partial.values)
        logger.info(
            "Node %d: partially decrypted %d Paillier ciphertexts for round %d as "
            "party %d",
            kit.node_index,
            len(partial.values),
            server_round,
            partial.party_index,
        )
        records = partial_to_records(
            partial, values, verification_keys.public_key.key_id
        )
        return Message(content=RecordDict(records), reply_to=msg)

    raise ValueError(f"decryption request for unknown scheme {scheme!r}")


def handle_decrypt_scores(msg: Message, context: Context) -> Message:
    """Decrypt FLTrust's (inner product, squared norm) scalars of each node."""
    keys = set(valid_keys())
    config = load_config({k: v for k, v in msg.content["config"].items() if k in keys})
    kit = load_kit(context, config)
    request = msg.content[DECRYPT_RECORD]
    _check_request_key(request, kit.ckks_fingerprint)

    chunks = chunks_from_record(msg.content[CIPHERTEXT_RECORD])
    num_scores = int(request["num-scores"])
    # FLTrust sends an inner product and a squared norm per node, norm bounding
    # only the squared norm.
    per_node = int(request.get(SCALARS_PER_NODE_KEY, 2))
    if per_node < 1 or len(chunks) != per_node * num_scores:
        raise ValueError(
            f"score request carries {len(chunks)} ciphertexts for {num_scores}"
            f" nodes; expected {per_node} scalars per node"
        )

    # decrypt_scalars rejects any ciphertext that contains more than one value,
    # so this handler never returns update coordinates.
    scalars = fltrust.decrypt_scalars(kit.ckks_context, chunks)
    logger.info(
        "Node %d: decrypted %d scalars of %d nodes for round %d",
        kit.node_index,
        len(scalars),
        num_scores,
        int(request["server-round"]),
    )
    values = np.asarray(scalars, dtype=np.float64).reshape(num_scores, per_node)
    content = RecordDict(
        {PLAINTEXT_RECORD: ArrayRecord({SCORES_KEY: Array(values)})}
    )
    return Message(content=content, reply_to=msg)


def _check_request_key(request: ConfigRecord, fingerprint: str) -> None:
    requested = str(request["key-fingerprint"])
    if requested != fingerprint:
        raise ValueError(
            f"decryption request is for key {requested[:16]}..., but this node's kit "
            f"contains {fingerprint[:16]}...; node and server use different kits"
        )


def _paillier_public_key(kit: NodeKit):  # type: ignore[no-untyped-def]
    if kit.paillier_public_key is None:
        raise ValueError(
            f"kit {kit.path} contains no Paillier key; provision the kits with Paillier "
            "keys to use secure_aggregation.scheme=paillier"
        )
    return kit.paillier_public_key
