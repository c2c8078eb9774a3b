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
from collections.abc import Callable
from typing import Any

import numpy as np

from linguachain.privacy import fltrust
from linguachain.privacy.errors import InvalidCiphertextError
from linguachain.privacy.records import FLTRUST_SUM_KIND, update_from_content
from linguachain.privacy.secure_sum import CKKSAggregator
from linguachain.privacy.updates import Weights, flat_vector
from linguachain.strategies.recording import RoundRecorder
from linguachain.strategies.screening import RoundReport, content_node_key
from linguachain.strategies.secure_fedavg import LoadedReply, RoundRejectedError
from linguachain.strategies.secure_scalars import SecureScalarAggregator

logger = logging.getLogger(__name__)


class SecureFLTrust(SecureScalarAggregator):
    """FLTrust over CKKS ciphertexts; see the module docstring."""

    ciphertext_kind = FLTRUST_SUM_KIND

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference_fn: Callable[[Weights], Weights] | None = None

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
        self._stats(server_round).phase_seconds["aggregate.score"] = (
            time.perf_counter() - started
        )

        scalars = self._decrypt_scores(server_round, scores)
        # The decrypted <x_i, r> and |x_i| are functions of each node's noisy
        # update, so the accountant composes this round even if it is rejected.
        self._released.add(server_round)
        outcome = fltrust.trust_weights(scalars, float(np.linalg.norm(reference)))
        self._record_trust(server_round, loaded, outcome)
        if sum(outcome.trust) == 0:
            raise RoundRejectedError("every FLTrust trust score is 0")
        return fltrust.weighted_sum(self.cipher.context, chunk_lists, outcome.weights)

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
        """Have the key committee decrypt <x_i, r> and |x_i|^2 of every node."""
        ciphertexts = [
            blob
            for score in scores
            for blob in (score.inner_product, score.squared_norm)
        ]
        values = self.decrypt_node_scalars(
            server_round,
            ciphertexts,
            per_node=2,
            description=f"the FLTrust scores of {len(scores)} nodes",
            noun="FLTrust score decryption",
        )
        return [(float(inner), float(square)) for inner, square in values]

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
