"""FLTrust over CKKS: trust-weighted secure aggregation without decrypting updates.

`SecureFLTrust` keeps SecureAggregator's round (validate, combine, decrypt, apply)
and replaces its plain sum with FLTrust's trust-weighted sum:

1. The server trains the global model on the public root set to get its
   reference update r (`reference_fn`, the same one plaintext FLTrust uses).
2. For each node it computes Enc(<x_i, r>) and Enc(|x_i|^2) from the node's
   ciphertext Enc(x_i), where x_i = w_i * u_i is the update scaled by the
   node's training blocks (privacy.fltrust).
3. `ckks_decryptors` nodes of the key committee decrypt only these scalars
   ("query.decrypt_scores"); their results must agree within ckks_tolerance.
4. trust_i = ReLU(cos(x_i, r)); each update is rescaled to |r| and the
   trust-weighted sum Enc(sum_i trust_i |r| / |x_i| x_i / sum_i trust_i) is
   computed homomorphically. The block weight w_i cancels in both the cosine
   and the rescaling.
5. The committee decrypts only that sum ("query.decrypt" with ciphertext kind
   "fltrust-sum"), and the new global model is the old one plus it.

The trust scores are the round's robustness scores in `round_reports`, as on
the plaintext path. A round where every trust score is 0 is rejected and the
global model stays unchanged.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from linguachain.privacy import fltrust
from linguachain.privacy.errors import InvalidCiphertextError
from linguachain.privacy.records import (
    CIPHERTEXT_RECORD,
    DECRYPT_RECORD,
    DECRYPT_SCORES_MESSAGE_TYPE,
    FLTRUST_SUM_KIND,
    PLAINTEXT_RECORD,
    SCORES_KEY,
    chunks_to_record,
    update_from_content,
)
from linguachain.privacy.secure_sum import CKKSAggregator
from linguachain.privacy.updates import Weights, flat_vector
from linguachain.strategies.recording import RoundRecorder
from linguachain.strategies.screening import PARTITION_ID_KEY, RoundReport
from linguachain.strategies.secure_fedavg import (
    CONFIG_RECORD,
    LoadedReply,
    RoundRejectedError,
    SecureAggregator,
)

logger = logging.getLogger(__name__)

def content_node_key(content: RecordDict, node_id: int) -> str:
    """Name a reply's node by its partition id when it sends one, else its node id."""
    metrics = next(iter(content.metric_records.values()), None)
    if metrics is not None and PARTITION_ID_KEY in metrics:
        return f"partition-{int(metrics[PARTITION_ID_KEY])}"
    return f"node-{node_id}"


class SecureFLTrust(SecureAggregator):
    """FLTrust over CKKS ciphertexts; see the module docstring."""

    ciphertext_kind = FLTRUST_SUM_KIND

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference_fn: Callable[[Weights], Weights] | None = None
        self.round_reports: dict[int, RoundReport] = {}

    def load_replies(
        self, server_round: int, replies: Iterable[Message]
    ) -> list[LoadedReply]:
        """Validate the replies and give each rejected node a trust score of 0."""
        replies = list(replies)
        loaded = super().load_replies(server_round, replies)
        report = self.round_reports[server_round] = RoundReport()
        valid = {reply.node_id for reply in loaded}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if node_id not in valid:
                key = content_node_key(reply.content, node_id)
                report.rejected[key] = "invalid encrypted reply"
                report.scores[key] = 0.0
        return loaded

    def sum_replies(self, server_round: int, loaded: list[LoadedReply]) -> list[bytes]:
        """Score each encrypted update against r and return the trust-weighted sum."""
        if not isinstance(self.cipher, CKKSAggregator):
            raise RuntimeError("FLTrust over ciphertexts needs the CKKS aggregator")
        started = time.perf_counter()
        reference = self._reference()
        chunk_lists = [update_from_content(reply.content).chunks for reply in loaded]
        try:
            scores = [
                fltrust.encrypted_scores(self.cipher.context, chunks, reference)
                for chunks in chunk_lists
            ]
        except InvalidCiphertextError as error:
            raise RoundRejectedError(f"FLTrust scoring failed: {error}") from error
        self._stats(server_round).phase_seconds["score"] = (
            time.perf_counter() - started
        )

        scalars = self._decrypt_scores(server_round, scores)
        outcome = fltrust.trust_weights(scalars, float(np.linalg.norm(reference)))
        self._record_trust(server_round, loaded, outcome)
        if sum(outcome.trust) == 0:
            raise RoundRejectedError("every FLTrust trust score is 0")
        return fltrust.weighted_sum(self.cipher.context, chunk_lists, outcome.weights)

    def decrypt_sum(
        self,
        server_round: int,
        summed: list[bytes],
        total_weight: int,
        num_replies: int,
    ) -> np.ndarray:
        """Have the key committee decrypt the trust-weighted sum, already an average."""
        # The trust weights divide by the sum of trust scores, so the decrypted
        # sum is the update and the divisor is 1, not the total block weight.
        return super().decrypt_sum(server_round, summed, 1, num_replies)

    def _reference(self) -> np.ndarray:
        """Return the server's root-set update r, flat in the global model's order."""
        if self.reference_fn is None or self._global_arrays is None:
            raise RuntimeError(
                "FLTrust needs the server's root-set update: set reference_fn and"
                " run configure_train before aggregate_train."
            )
        base = OrderedDict(
            (name, array.numpy()) for name, array in self._global_arrays.items()
        )
        update = self.reference_fn(base)
        return flat_vector(OrderedDict((name, update[name]) for name in base))

    def _decrypt_scores(
        self, server_round: int, scores: list[fltrust.EncryptedScore]
    ) -> list[tuple[float, float]]:
        """Have the key committee decrypt the scalars and check that they agree."""
        assert self._grid is not None and self._train_config is not None
        assert self.cipher is not None
        required = self.settings.ckks_decryptors
        committee = self._committee(required)
        if len(committee) < required:
            raise RoundRejectedError(
                f"FLTrust score decryption needs {required} nodes of the key"
                f" committee, but only {len(committee)} are connected; lower"
                " secure_aggregation.ckks_decryptors"
            )
        request = ConfigRecord(
            {
                "scheme": self.cipher.scheme,
                "server-round": server_round,
                "key-fingerprint": self.cipher.fingerprint,
                "num-scores": len(scores),
            }
        )
        ciphertexts = [
            blob
            for score in scores
            for blob in (score.inner_product, score.squared_norm)
        ]
        messages = [
            Message(
                RecordDict(
                    {
                        DECRYPT_RECORD: request,
                        CIPHERTEXT_RECORD: chunks_to_record(
                            ciphertexts, self.cipher.scheme
                        ),
                        CONFIG_RECORD: self._train_config,
                    }
                ),
                dst_node_id=node_id,
                message_type=DECRYPT_SCORES_MESSAGE_TYPE,
            )
            for node_id in committee
        ]
        logger.info(
            "Round %d: sent the FLTrust scores of %d nodes to nodes %s for"
            " decryption",
            server_round,
            len(scores),
            committee,
        )
        replies = self._grid.send_and_receive(messages, timeout=self.decrypt_timeout)

        results: dict[int, np.ndarray] = {}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                logger.warning(
                    "Round %d: node %d failed to decrypt the FLTrust scores: %s",
                    server_round,
                    node_id,
                    reply.error.reason,
                )
                continue
            try:
                values = reply.content[PLAINTEXT_RECORD][SCORES_KEY].numpy()
            except (KeyError, TypeError, ValueError) as error:
                logger.warning(
                    "Round %d: node %d sent unreadable FLTrust scores: %s",
                    server_round,
                    node_id,
                    error,
                )
                continue
            if values.shape != (len(scores), 2) or not np.all(np.isfinite(values)):
                logger.warning(
                    "Round %d: node %d sent FLTrust scores of shape %s (expected"
                    " %s) or with non-finite values",
                    server_round,
                    node_id,
                    values.shape,
                    (len(scores), 2),
                )
                continue
            results[node_id] = np.asarray(values, dtype=np.float64)

        if len(results) < required:
            raise RoundRejectedError(
                f"only {len(results)} of the {required} CKKS decryptors"
                f" {sorted(committee)} returned valid FLTrust scores"
            )
        node_ids = sorted(results)
        first = results[node_ids[0]]
        for node_id in node_ids[1:]:
            # Relative to each scalar, because squared norms of large updates
            # exceed the absolute tolerance meant for update coordinates.
            gaps = np.abs(results[node_id] - first) / np.maximum(1.0, np.abs(first))
            difference = float(np.max(gaps))
            if difference > self.settings.ckks_tolerance:
                raise RoundRejectedError(
                    f"FLTrust score decryptions of nodes {node_ids[0]} and"
                    f" {node_id} differ by up to {difference:.3g} (relative), above"
                    f" secure_aggregation.ckks_tolerance="
                    f"{self.settings.ckks_tolerance:g}"
                )
        return [(float(inner), float(square)) for inner, square in first]

    def _record_trust(
        self,
        server_round: int,
        loaded: list[LoadedReply],
        outcome: fltrust.TrustWeights,
    ) -> None:
        """Store trust scores and update norms as the round's robustness report."""
        report = self.round_reports.setdefault(server_round, RoundReport())
        for reply, trust, norm in zip(
            loaded, outcome.trust, outcome.norms, strict=True
        ):
            key = content_node_key(reply.content, reply.node_id)
            report.accepted.append(key)
            report.scores[key] = trust
            # The ciphertext holds the update times the node's block weight.
            report.norms[key] = norm / reply.weight
        logger.info(
            "Round %d: FLTrust trust scores over ciphertexts %s",
            server_round,
            {key: round(score, 4) for key, score in sorted(report.scores.items())},
        )


class LinguaChainSecureFLTrust(RoundRecorder, SecureFLTrust):
    """FLTrust over CKKS with empty-reply filtering and phase timing."""
