"""FedAvg over encrypted updates: validate, sum ciphertexts, have key holders decrypt.

The server never has a secret key. Each round `SecureAggregator.aggregate_train`
runs four steps, each a method that subclasses can override (encrypted robust
aggregation, for example, scores the loaded replies before summing them):

1. `load_replies`: check every reply (commitment, scheme, key fingerprint, chunk
   count and sizes, token count) and deserialize its ciphertext; an invalid reply
   is left out with a logged reason naming the node. With fewer than
   `secure_aggregation.min_replies` valid replies the round is rejected.
2. `sum_replies`: add the ciphertexts homomorphically.
3. `decrypt_sum`: CKKS sends the sum as a "query.decrypt" message to
   `ckks_decryptors` nodes of the key committee, whose averages must agree within
   `ckks_tolerance`; Paillier sends it to every node holding a key share, verifies
   each partial decryption's proof and combines t of them. A failed decryption
   rejects the round.
4. `apply_update`: the new global model is the old one plus the decrypted
   weighted average update.

A rejected round returns no arrays, so Flower keeps the global model unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedAvgM

from linguachain.config import RunConfig, SecureAggregationConfig
from linguachain.ledger.hashing import hash_weights
from linguachain.privacy import paillier
from linguachain.privacy.dp import LINEAR_RULES, PrivacyAccounting
from linguachain.privacy.codec import add_flat_update
from linguachain.privacy.errors import (
    InsufficientSharesError,
    InvalidCiphertextError,
    InvalidPartialDecryptionError,
)
from linguachain.privacy.kits import SERVER_DIR, load_server_kit
from linguachain.privacy.records import (
    CIPHERTEXT_KIND_KEY,
    CIPHERTEXT_RECORD,
    DECRYPT_MESSAGE_TYPE,
    DECRYPT_RECORD,
    MODEL_HASH_KEY,
    PLAINTEXT_RECORD,
    SUM_KIND,
    chunks_to_record,
    partial_from_content,
    update_from_content,
)
from linguachain.privacy.secure_sum import (
    CKKS,
    CKKSAggregator,
    PaillierAggregator,
    PaillierSettings,
    aggregation_weight,
)
from linguachain.privacy.threshold import PartialDecryption, verify_partial_decryption
from linguachain.strategies.exchange import send_and_receive
from linguachain.strategies.recording import NUM_EXAMPLES_KEY, RoundRecorder, RoundStats
from linguachain.strategies.screening import (
    SAMPLED_NODES_KEY,
    RoundReport,
    content_node_key,
)

logger = logging.getLogger(__name__)

AVERAGE_KEY = "average"
CONFIG_RECORD = "config"


class RoundRejectedError(RuntimeError):
    """Secure aggregation cannot produce a trustworthy model for this round."""


@dataclass(frozen=True)
class CommitteeRequest:
    """Ciphertexts sent to key committee nodes and the plaintext expected back."""

    message_type: str
    fields: dict[str, Any]
    ciphertexts: list[bytes]
    description: str  # for the log, e.g. "the ckks sum of 3 replies"
    result_key: str = ""  # array of the reply's plaintext record
    shape: tuple[int, ...] = ()
    noun: str = "decryption"  # what the result is called in logs and errors
    # Compare decryptions relative to each value, for scalars such as squared
    # norms that exceed the absolute tolerance meant for update coordinates.
    relative: bool = False


@dataclass
class LoadedReply:
    """A validated encrypted reply with its deserialized ciphertext."""

    node_id: int
    token_count: int
    weight: int
    ciphertext: Any
    num_bytes: int
    commitment: str
    content: RecordDict


class SecureAggregator(FedAvg):
    """Flower FedAvg whose replies are ciphertexts; see the module docstring."""

    # What the ciphertext sent for CKKS decryption is; FLTrust sends its
    # trust-weighted sum, which is one level down the modulus chain.
    ciphertext_kind = SUM_KIND

    def __init__(
        self,
        *args: Any,
        cipher: CKKSAggregator | PaillierAggregator | None = None,
        settings: SecureAggregationConfig | None = None,
        block_size: int = 128,
        decrypt_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        # Flower's FedAvgM passes only FedAvg's arguments on to this class, so a
        # strategy built through it calls set_cipher after construction.
        super().__init__(*args, **kwargs)
        self.cipher: CKKSAggregator | PaillierAggregator | None = None
        self.settings = settings or SecureAggregationConfig()
        self.block_size = block_size
        self.decrypt_timeout = decrypt_timeout
        if cipher is not None:
            self.set_cipher(cipher, self.settings, block_size, decrypt_timeout)
        # SHA-256 commitments of the aggregated replies per round, by node id.
        self.commitments: dict[int, dict[int, str]] = {}
        # SHA-256 of the rejected replies' array bytes per round, by node id.
        self.rejected_updates: dict[int, dict[int, str]] = {}
        # The last round's decrypted average update, by round.
        self.decrypted_averages: dict[int, np.ndarray] = {}
        self._global_hash = ""
        # Robustness scores and privacy spent per round, for metrics and ledger.
        self.round_reports: dict[int, RoundReport] = {}
        self.privacy: PrivacyAccounting | None = None
        self._sampled: dict[int, int] = {}
        # Rounds whose per-node values (FLTrust scalars) were decrypted, so the
        # accountant composes them even when the round is rejected afterwards.
        self._released: set[int] = set()
        self._grid: Grid | None = None
        self._global_arrays: ArrayRecord | None = None
        self._train_config: ConfigRecord | None = None

    def set_cipher(
        self,
        cipher: CKKSAggregator | PaillierAggregator,
        settings: SecureAggregationConfig,
        block_size: int,
        decrypt_timeout: float | None,
    ) -> None:
        """Set the scheme's aggregator and the secure aggregation settings."""
        if settings.scheme != cipher.scheme:
            raise ValueError(
                f"secure_aggregation.scheme is {settings.scheme!r}, but the cipher "
                f"is for {cipher.scheme!r}"
            )
        self.cipher = cipher
        self.settings = settings
        self.block_size = block_size
        self.decrypt_timeout = decrypt_timeout

    def configure_privacy(self, config: RunConfig) -> None:
        """Run the RDP accountant when nodes clip and add noise before encrypting."""
        if not config.privacy.enabled:
            self.privacy = None
            return
        self.privacy = PrivacyAccounting(
            noise_multiplier=config.privacy.noise_multiplier,
            delta=config.privacy.delta,
            population=config.federation.num_nodes,
            linear=config.aggregation.name in LINEAR_RULES,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model and grid, sample nodes, tell them the count.

        Each node's share of the DP noise depends on how many nodes were sampled.
        """
        self._grid = grid
        self._global_arrays = arrays
        self._global_hash = hash_weights({n: a.numpy() for n, a in arrays.items()})
        self._train_config = config
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sampled[server_round] = len(messages)
        for message in messages:
            message.content[CONFIG_RECORD][SAMPLED_NODES_KEY] = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, sum and decrypt the encrypted updates into a new global model."""
        if self._global_arrays is None or self.cipher is None:
            raise RuntimeError(
                "aggregate_train called before set_cipher and configure_train"
            )
        stats = self._stats(server_round)
        replies = [reply for reply in replies if not reply.has_error()]

        # Validate every reply and keep the valid ones.
        loaded = self.load_replies(server_round, replies)
        stats.extra["rejected_replies"] = len(replies) - len(loaded)
        stats.replies = len(loaded)
        stats.num_examples = sum(reply.token_count for reply in loaded)
        stats.node_examples = {reply.node_id: reply.token_count for reply in loaded}
        if loaded:
            self._record_node_costs(stats, loaded)
        if len(loaded) < self.settings.min_replies:
            return self._reject(
                server_round,
                f"{len(loaded)} valid encrypted replies, fewer than "
                f"secure_aggregation.min_replies={self.settings.min_replies}",
            )

        # Sum the ciphertexts, then have key holders decrypt the sum.
        try:
            started = time.perf_counter()
            summed = self.sum_replies(server_round, loaded)
            stats.phase_seconds["aggregate.sum"] = time.perf_counter() - started

            started = time.perf_counter()
            total_weight = sum(reply.weight for reply in loaded)
            average = self.decrypt_sum(server_round, summed, total_weight, len(loaded))
            stats.phase_seconds["aggregate.decrypt"] = time.perf_counter() - started
        except RoundRejectedError as error:
            if server_round in self._released:
                self.account_privacy(server_round, loaded)
            return self._reject(server_round, str(error))
        self.account_privacy(server_round, loaded)

        self.commitments[server_round] = {
            reply.node_id: reply.commitment for reply in loaded
        }
        # Validators check the new model against the decrypted average. For
        # float32 weights it goes in float32: half the bytes, and the new model
        # adds exactly that.
        dtypes = {array.dtype for array in self._global_arrays.values()}
        if dtypes == {"float32"}:
            average = np.asarray(average, dtype=np.float32)
        self.decrypted_averages = {server_round: average}
        arrays = self.apply_update(average)
        metrics = self.train_metrics_aggr_fn(
            [reply.content for reply in loaded], self.weighted_by_key
        )
        logger.info(
            "Round %d: securely aggregated %d replies (%s, %.1f B/param): sum %.2f s, "
            "decryption %.2f s",
            server_round,
            len(loaded),
            self.cipher.scheme,
            stats.extra.get("bytes_per_param", 0.0),
            stats.phase_seconds["aggregate.sum"],
            stats.phase_seconds["aggregate.decrypt"],
        )
        return arrays, metrics

    def account_privacy(self, server_round: int, loaded: list[LoadedReply]) -> None:
        """Compose this round's release for each summed node in the accountant.

        Nodes clip to C and add noise of std sigma * C / sqrt(n) before encrypting.
        The accountant therefore needs only sigma, the number n of sampled nodes
        and each node's weight in the sum (its training blocks), never an update.
        """
        if self.privacy is None or not loaded:
            return
        weights = {
            content_node_key(reply.content, reply.node_id): float(reply.weight)
            for reply in loaded
        }
        noisy = self._sampled.get(server_round, len(loaded))
        report = self.round_reports.setdefault(server_round, RoundReport())
        report.privacy = self.privacy.record_round(noisy, weights)
        logger.info(
            "Round %d: differential privacy spent so far epsilon=%.3f (vs. server"
            " %.3f) at delta=%g over %d encrypted updates",
            server_round,
            report.privacy["epsilon"],
            report.privacy["epsilon_vs_server"],
            self.privacy.delta,
            len(loaded),
        )

    def load_replies(
        self, server_round: int, replies: Iterable[Message]
    ) -> list[LoadedReply]:
        """Validate and deserialize each reply; log and drop the invalid ones."""
        length = self._model_length()
        loaded = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            try:
                loaded.append(self._load_reply(reply, length))
            except (InvalidCiphertextError, ValueError) as error:
                reason = f"node {node_id}: {error}"
                self._stats(server_round).error_reasons.append(reason)
                # A rejected update scores 0: it earns no reward and extends the
                # node's zero-score streak, as a screened-out plaintext update does.
                key = content_node_key(reply.content, node_id)
                report = self.round_reports.setdefault(server_round, RoundReport())
                report.rejected[key] = str(error)
                report.scores[key] = 0.0
                rejected = self.rejected_updates.setdefault(server_round, {})
                rejected[node_id] = reply_arrays_hash(reply)
                logger.warning(
                    "Round %d: rejected the encrypted reply of node %d: %s",
                    server_round,
                    node_id,
                    error,
                )
        return loaded

    def sum_replies(self, server_round: int, loaded: list[LoadedReply]) -> list[bytes]:
        """Add the loaded ciphertexts homomorphically and serialize the sum."""
        if isinstance(self.cipher, PaillierAggregator):
            total_weight = sum(reply.weight for reply in loaded)
            if total_weight > self.settings.max_total_blocks:
                raise RoundRejectedError(
                    f"the replies' total weight of {total_weight} blocks exceeds "
                    "the Paillier slot headroom secure_aggregation.max_total_blocks="
                    f"{self.settings.max_total_blocks}; raise it"
                )
        return self.cipher.add([reply.ciphertext for reply in loaded])

    def decrypt_sum(
        self,
        server_round: int,
        summed: list[bytes],
        total_weight: int,
        num_replies: int,
    ) -> np.ndarray:
        """Have key holders decrypt the sum; return the weighted average update."""
        if isinstance(self.cipher, CKKSAggregator):
            return self._decrypt_ckks(server_round, summed, total_weight, num_replies)
        return self._decrypt_paillier(server_round, summed, total_weight, num_replies)

    def apply_update(self, average: np.ndarray) -> ArrayRecord:
        """Return the global model plus the average update, in the global dtypes."""
        assert self._global_arrays is not None
        weights = {name: array.numpy() for name, array in self._global_arrays.items()}
        updated = add_flat_update(weights, average)
        return ArrayRecord(OrderedDict((name, Array(new)) for name, new in updated.items()))

    # Decryption protocols.

    def _decrypt_ckks(
        self,
        server_round: int,
        summed: list[bytes],
        total_weight: int,
        num_replies: int,
    ) -> np.ndarray:
        request = self._decrypt_request(server_round, total_weight, num_replies)
        return self.committee_decrypt(
            server_round,
            CommitteeRequest(
                message_type=DECRYPT_MESSAGE_TYPE,
                fields=request,
                ciphertexts=summed,
                result_key=AVERAGE_KEY,
                shape=(self._model_length(),),
                description=f"the {self.cipher.scheme} sum of {num_replies} replies",
                noun="decryption",
            ),
        )

    def committee_decrypt(
        self, server_round: int, request: CommitteeRequest
    ) -> np.ndarray:
        """Have `ckks_decryptors` committee nodes decrypt and return the result.

        Each node must return a finite array of `request.shape` under
        `request.result_key`. The round is rejected when fewer nodes do so than
        `ckks_decryptors`, or when two results differ by more than `ckks_tolerance`.
        """
        required = self.settings.ckks_decryptors
        committee = self._committee(required)
        if len(committee) < required:
            raise RoundRejectedError(
                f"CKKS {request.noun} needs {required} nodes of the key committee,"
                f" but only {len(committee)} are connected; lower"
                " secure_aggregation.ckks_decryptors"
            )
        replies = self._send_to_committee(server_round, committee, request)

        results: dict[int, np.ndarray] = {}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                logger.warning(
                    "Round %d: node %d failed the %s: %s",
                    server_round,
                    node_id,
                    request.noun,
                    reply.error.reason,
                )
                continue
            try:
                values = reply.content[PLAINTEXT_RECORD][request.result_key].numpy()
            except (KeyError, TypeError, ValueError) as error:
                logger.warning(
                    "Round %d: node %d sent an unreadable %s: %s",
                    server_round,
                    node_id,
                    request.noun,
                    error,
                )
                continue
            if values.shape != request.shape or not np.all(np.isfinite(values)):
                logger.warning(
                    "Round %d: node %d sent a %s of shape %s (expected %s) or with"
                    " non-finite values",
                    server_round,
                    node_id,
                    request.noun,
                    values.shape,
                    request.shape,
                )
                continue
            results[node_id] = np.asarray(values, dtype=np.float64)

        if len(results) < required:
            raise RoundRejectedError(
                f"only {len(results)} of the {required} CKKS decryptors "
                f"{sorted(committee)} returned a valid {request.noun}"
            )
        # Honest key holders decrypt the same ciphertext to the same values, so
        # a larger difference means a faulty or dishonest decryptor.
        node_ids = sorted(results)
        reference = results[node_ids[0]]
        for node_id in node_ids[1:]:
            gaps = np.abs(results[node_id] - reference)
            if request.relative:
                gaps = gaps / np.maximum(1.0, np.abs(reference))
            difference = float(np.max(gaps, initial=0.0))
            if difference > self.settings.ckks_tolerance:
                scale = " (relative)" if request.relative else ""
                raise RoundRejectedError(
                    f"CKKS {request.noun}s of nodes {node_ids[0]} and {node_id} differ"
                    f" by up to {difference:.3g}{scale}, above"
                    " secure_aggregation.ckks_tolerance="
                    f"{self.settings.ckks_tolerance:g}"
                )
        return reference

    def _decrypt_paillier(
        self,
        server_round: int,
        summed: list[bytes],
        total_weight: int,
        num_replies: int,
    ) -> np.ndarray:
        assert isinstance(self.cipher, PaillierAggregator)
        verification_keys = self.cipher.verification_keys
        threshold = verification_keys.threshold
        committee = self._committee(None)
        request = CommitteeRequest(
            message_type=DECRYPT_MESSAGE_TYPE,
            fields=self._decrypt_request(server_round, total_weight, num_replies),
            ciphertexts=summed,
            description=f"the {self.cipher.scheme} sum of {num_replies} replies",
        )
        replies = self._send_to_committee(server_round, committee, request)
        ciphertexts = self.cipher.parse_sum(summed)

        partials: dict[int, PartialDecryption] = {}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                logger.warning(
                    "Round %d: node %d sent no partial decryption: %s",
                    server_round,
                    node_id,
                    reply.error.reason,
                )
                continue
            try:
                partial = self._read_partial(reply, len(ciphertexts))
                verify_partial_decryption(verification_keys, ciphertexts, partial)
            except (
                InvalidPartialDecryptionError,
                InvalidCiphertextError,
                ValueError,
            ) as error:
                logger.warning(
                    "Round %d: rejected the partial decryption of node %d: %s",
                    server_round,
                    node_id,
                    error,
                )
                self._stats(server_round).error_reasons.append(
                    f"node {node_id}: {error}"
                )
                continue
            if partial.party_index in partials:
                logger.warning(
                    "Round %d: node %d sent a second share of party %d; ignored",
                    server_round,
                    node_id,
                    partial.party_index,
                )
                continue
            partials[partial.party_index] = partial

        if len(partials) < threshold:
            error = InsufficientSharesError(
                f"{len(partials)} valid Paillier partial decryptions (parties "
                f"{sorted(partials)}) from {len(committee)} nodes asked, but the "
                f"threshold is {threshold}"
            )
            raise RoundRejectedError(str(error))
        try:
            return self.cipher.combine(
                ciphertexts, list(partials.values()), total_weight, self._model_length()
            )
        except ValueError as error:
            # Unpacking fails when a slot overflowed, which verified shares of
            # honest replies never cause.
            raise RoundRejectedError(
                f"the combined Paillier plaintexts do not unpack: {error}"
            ) from error

    def _read_partial(self, reply: Message, count: int) -> PartialDecryption:
        assert isinstance(self.cipher, PaillierAggregator)
        party_index, key_id, values_bytes, proof = partial_from_content(reply.content)
        public_key = self.cipher.public_key
        if key_id != public_key.key_id:
            raise ValueError(
                f"partial decryption is for key {key_id[:16]}..., not "
                f"{public_key.key_id[:16]}..."
            )
        values = paillier.ciphertexts_from_bytes(public_key, values_bytes)
        if len(values) != count:
            raise ValueError(f"{len(values)} partial values for {count} ciphertexts")
        return PartialDecryption(
            party_index=party_index, values=tuple(values), proof=proof
        )

    def _decrypt_request(
        self, server_round: int, total_weight: int, num_replies: int
    ) -> dict[str, Any]:
        assert self.cipher is not None
        return {
            "scheme": self.cipher.scheme,
            "server-round": server_round,
            "key-fingerprint": self.cipher.fingerprint,
            "total-weight": total_weight,
            "length": self._model_length(),
            "num-replies": num_replies,
            CIPHERTEXT_KIND_KEY: self.ciphertext_kind,
            # Decryptors keep their result under this parent model for their vote.
            MODEL_HASH_KEY: self._global_hash,
        }

    def _send_to_committee(
        self, server_round: int, node_ids: list[int], request: CommitteeRequest
    ) -> list[Message]:
        """Send the request's ciphertexts to each node and return the replies."""
        assert self._grid is not None and self._train_config is not None
        assert self.cipher is not None
        fields = ConfigRecord(request.fields)
        ciphertext = chunks_to_record(request.ciphertexts, self.cipher.scheme)
        messages = [
            Message(
                RecordDict(
                    {
                        DECRYPT_RECORD: fields,
                        CIPHERTEXT_RECORD: ciphertext,
                        CONFIG_RECORD: self._train_config,
                    }
                ),
                dst_node_id=node_id,
                message_type=request.message_type,
            )
            for node_id in node_ids
        ]
        logger.info(
            "Round %d: sent %s to nodes %s for decryption",
            server_round,
            request.description,
            node_ids,
        )
        return send_and_receive(self._grid, messages, self.decrypt_timeout)

    def _committee(self, size: int | None) -> list[int]:
        """Return the first `size` connected nodes (all of them for None)."""
        assert self._grid is not None
        node_ids = sorted(self._grid.get_node_ids())
        return node_ids if size is None else node_ids[:size]

    # Bookkeeping.

    def _load_reply(self, reply: Message, length: int) -> LoadedReply:
        update = update_from_content(reply.content)
        ciphertext = self.cipher.load(update, length)
        token_count = int(update.token_count or 0)
        metrics = next(iter(reply.content.metric_records.values()), None)
        reported = None if metrics is None else metrics.get(NUM_EXAMPLES_KEY)
        if reported != token_count:
            raise InvalidCiphertextError(
                f"token count {token_count} differs from the {NUM_EXAMPLES_KEY!r} "
                f"metric {reported!r}"
            )
        return LoadedReply(
            node_id=reply.metadata.src_node_id,
            token_count=token_count,
            weight=aggregation_weight(token_count, self.block_size),
            ciphertext=ciphertext,
            num_bytes=update.num_bytes,
            commitment=update.commitment,
            content=reply.content,
        )

    def _model_length(self) -> int:
        assert self._global_arrays is not None
        return sum(int(array.numpy().size) for array in self._global_arrays.values())

    def _stats(self, server_round: int) -> RoundStats:
        round_stats = getattr(self, "round_stats", None)
        if round_stats is None:
            round_stats = self.round_stats = {}
        return round_stats.setdefault(server_round, RoundStats())

    def _record_node_costs(self, stats: RoundStats, loaded: list[LoadedReply]) -> None:
        length = self._model_length()
        seconds = [
            float(
                next(iter(r.content.metric_records.values())).get(
                    "encrypt-seconds", 0.0
                )
            )
            for r in loaded
        ]
        stats.phase_seconds["train.encrypt"] = float(np.mean(seconds))
        stats.extra["bytes_per_param"] = float(
            np.mean([reply.num_bytes for reply in loaded]) / length
        )

    def _reject(
        self, server_round: int, reason: str
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._stats(server_round).extra["rejected"] = reason
        logger.error(
            "Round %d rejected: %s; the global model is unchanged", server_round, reason
        )
        return None, None


class LinguaChainSecureFedAvg(RoundRecorder, SecureAggregator):
    """Secure aggregation with empty-reply filtering and phase timing."""


class LinguaChainSecureFedAvgM(RoundRecorder, FedAvgM, SecureAggregator):
    """Secure aggregation followed by FedAvgM's server momentum step."""


def build_secure_strategy(config: RunConfig, common: dict[str, Any]) -> RoundRecorder:
    """Build the secure strategy from the server kit in secure_aggregation.kit_dir."""
    secure = config.secure_aggregation
    if not secure.kit_dir:
        raise ValueError(
            "secure_aggregation.kit_dir is empty; call prepare_kits before building "
            "the strategy, or run `linguachain provision` and set the key"
        )
    kit = load_server_kit(Path(secure.kit_dir) / SERVER_DIR)
    if secure.scheme == CKKS and kit.ckks_parameter_set != secure.ckks_parameters:
        raise ValueError(
            f"server kit {kit.path} uses CKKS parameter set "
            f"{kit.ckks_parameter_set!r}, but secure_aggregation.ckks_parameters is "
            f"{secure.ckks_parameters!r}; set it to match or re-provision the kits"
        )
    cipher: CKKSAggregator | PaillierAggregator
    if secure.scheme == CKKS:
        cipher = CKKSAggregator(kit.ckks_context)
    else:
        if kit.paillier_verification_keys is None:
            raise ValueError(
                f"server kit {kit.path} contains no Paillier keys; provision kits with "
                "Paillier keys for secure_aggregation.scheme=paillier"
            )
        cipher = PaillierAggregator(
            kit.paillier_verification_keys,
            PaillierSettings(
                clip_range=secure.clip_range,
                precision_bits=secure.precision_bits,
                max_total_weight=secure.max_total_blocks,
            ),
        )
    strategy: SecureAggregator
    if config.aggregation.name == "fltrust":
        from linguachain.strategies.secure_fltrust import LinguaChainSecureFLTrust

        if not isinstance(cipher, CKKSAggregator):
            raise ValueError(
                "aggregation.name=fltrust with encryption needs "
                "secure_aggregation.scheme=ckks"
            )
        strategy = LinguaChainSecureFLTrust(**common)
    elif config.aggregation.name == "norm_bound":
        from linguachain.strategies.secure_norm_bound import (
            LinguaChainSecureNormBound,
        )

        if not isinstance(cipher, CKKSAggregator):
            raise ValueError(
                "aggregation.name=norm_bound with encryption needs"
                " secure_aggregation.scheme=ckks"
            )
        bounded = LinguaChainSecureNormBound(**common)
        bounded.norm_bound = config.aggregation.norm_bound
        bounded.max_update_norm = config.aggregation.max_update_norm
        strategy = bounded
    elif config.aggregation.name == "fedavgm":
        strategy = LinguaChainSecureFedAvgM(
            **common,
            server_learning_rate=config.aggregation.server_lr,
            server_momentum=config.aggregation.server_momentum,
        )
    else:
        strategy = LinguaChainSecureFedAvg(**common)
    strategy.set_cipher(
        cipher, secure, config.data.block_size, config.federation.timeout
    )
    strategy.configure_privacy(config)
    return strategy


def reply_arrays_hash(reply: Message) -> str:
    """Return the SHA-256 over the names and bytes of every array in a reply."""
    digest = hashlib.sha256()
    for record_name, record in sorted(reply.content.array_records.items()):
        for array_name, array in record.items():
            digest.update(f"{record_name}/{array_name}".encode())
            digest.update(array.data)
    return digest.hexdigest()
