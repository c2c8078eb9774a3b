"""Norm bounding over CKKS: clip every encrypted update, then average, undecrypted.

`SecureNormBound` keeps SecureAggregator's round (validate, combine, decrypt,
apply) and replaces its plain sum:

1. For each node the server computes Enc(|x_i|^2) from its ciphertext Enc(x_i),
   where x_i = w_i * u_i is the update scaled by the node's training blocks
   (privacy.norm_bound).
2. `ckks_decryptors` nodes of the key committee decrypt only these scalars
   ("query.decrypt_scores" with one scalar per node). Their results must agree
   within ckks_tolerance, relative to each value.
3. |u_i| = |x_i| / w_i. An update above `aggregation.max_update_norm` (when set)
   is left out, as on the plaintext path. The bound C is `aggregation.norm_bound`,
   or the median norm of the round when it is 0.
4. Enc(sum_i min(1, C / |u_i|) x_i / sum_i w_i) is computed homomorphically: the
   FedAvg of the clipped updates.
5. The committee decrypts only that average ("query.decrypt" with ciphertext
   kind "scaled-sum"), and the new global model is the old one plus it.

The norms go to the round report as on the plaintext path. Norm bounding does
not score nodes, so a node's robustness score is 1.0, or 0 when its update was
left out.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any


from linguachain.privacy import fltrust, norm_bound
from linguachain.privacy.errors import InvalidCiphertextError
from linguachain.privacy.records import SCALED_SUM_KIND, update_from_content
from linguachain.privacy.secure_sum import CKKSAggregator
from linguachain.strategies.recording import RoundRecorder
from linguachain.strategies.screening import content_node_key
from linguachain.strategies.secure_fedavg import LoadedReply, RoundRejectedError
from linguachain.strategies.secure_scalars import SecureScalarAggregator

logger = logging.getLogger(__name__)


class SecureNormBound(SecureScalarAggregator):
    """FedAvg of norm-bounded updates over CKKS; see the module docstring."""

    ciphertext_kind = SCALED_SUM_KIND

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # aggregation.norm_bound (0: the round's median norm) and max_update_norm.
        self.norm_bound = 0.0
        self.max_update_norm = 0.0

    def sum_replies(self, server_round: int, loaded: list[LoadedReply]) -> list[bytes]:
        """Clip every encrypted update to the round's bound and return their average."""
        if not isinstance(self.cipher, CKKSAggregator):
            raise RuntimeError("norm bounding over ciphertexts needs the CKKS aggregator")
        started = time.perf_counter()
        chunk_lists = [update_from_content(reply.content).chunks for reply in loaded]
        try:
            squares = [
                norm_bound.encrypted_squared_norm(self.cipher.context, chunks)
                for chunks in chunk_lists
            ]
        except InvalidCiphertextError as error:
            raise RoundRejectedError(f"norm computation failed: {error}") from error
        self._stats(server_round).phase_seconds["aggregate.score"] = (
            time.perf_counter() - started
        )

        squared_norms = self._decrypt_squared_norms(server_round, squares)
        # The decrypted norms are functions of each node's noisy update, so the
        # accountant composes this round even if it is rejected later.
        self._released.add(server_round)
        norms = [
            math.sqrt(max(square, 0.0)) / reply.weight
            for square, reply in zip(squared_norms, loaded, strict=True)
        ]
        kept_indices = self._screen_norms(server_round, loaded, norms)
        if not kept_indices:
            raise RoundRejectedError(
                "every update norm exceeds aggregation.max_update_norm"
            )
        kept_norms = [norms[i] for i in kept_indices]
        bound = norm_bound.round_bound(kept_norms, self.norm_bound)
        weights = norm_bound.clip_weights(
            kept_norms, [loaded[i].weight for i in kept_indices], bound
        )
        report = self.round_reports[server_round]
        report.norm_bound = bound
        clipped = sum(1 for norm in kept_norms if norm > bound)
        logger.info(
            "Round %d: clipped %d of %d encrypted updates to norm %.4g",
            server_round,
            clipped,
            len(kept_indices),
            bound,
        )
        return fltrust.weighted_sum(
            self.cipher.context, [chunk_lists[i] for i in kept_indices], weights
        )

    def _screen_norms(
        self, server_round: int, loaded: list[LoadedReply], norms: list[float]
    ) -> list[int]:
        """Record every norm; return the indices of updates within max_update_norm."""
        report = self.round_reports[server_round]
        kept_indices = []
        for index, (reply, norm) in enumerate(zip(loaded, norms, strict=True)):
            key = content_node_key(reply.content, reply.node_id)
            report.norms[key] = norm
            if self.max_update_norm and norm > self.max_update_norm:
                reason = (
                    f"update norm {norm:.4g} exceeds aggregation.max_update_norm"
                    f" {self.max_update_norm:.4g}"
                )
                report.rejected[key] = reason
                report.scores[key] = 0.0
                logger.warning(
                    "Round %d: left out the encrypted update of %s: %s",
                    server_round,
                    key,
                    reason,
                )
                continue
            report.accepted.append(key)
            kept_indices.append(index)
        return kept_indices

    def _decrypt_squared_norms(
        self, server_round: int, squares: list[bytes]
    ) -> list[float]:
        """Have the key committee decrypt one squared norm per node."""
        values = self.decrypt_node_scalars(
            server_round,
            squares,
            per_node=1,
            description=f"the squared update norms of {len(squares)} nodes",
            noun="norm decryption",
        )
        return [float(value) for value in values[:, 0]]


class LinguaChainSecureNormBound(RoundRecorder, SecureNormBound):
    """Norm bounding over CKKS with empty-reply filtering and phase timing."""
