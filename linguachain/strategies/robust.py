"""Byzantine-robust aggregation rules on the plaintext path.

Flower's Krum, MultiKrum, FedMedian, FedTrimmedAvg and Bulyan are wrapped, not
rewritten: `RoundRecorder` drops error and empty replies and times the round,
`UpdateScreening` rejects non-finite and oversized updates before any sort,
checks each rule's precondition and scores nodes, and Flower's class aggregates.
The rules work on full weights, which is equivalent to working on updates
because every node starts from the same global model: distances, medians and
trimmed means all shift with it.

`norm_bound` is the cheaper rule: FedAvg over updates clipped to a norm bound
(fixed, or the median norm of the round). `fltrust` scores updates against the
server's own update on public text, here on plaintext updates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)

from linguachain.config import RunConfig, expected_train_nodes
from linguachain.privacy.codec import unflatten_update
from linguachain.privacy.fltrust import trust_weights
from linguachain.privacy.updates import (
    Weights,
    add_update,
    flat_vector,
    weights_difference,
)
from linguachain.strategies.recording import RoundRecorder
from linguachain.strategies.screening import UpdateScreening, reply_weights, node_key

logger = logging.getLogger(__name__)

ROBUST_RULES = frozenset(
    {"krum", "multikrum", "median", "trimmed_mean", "bulyan", "norm_bound", "fltrust"}
)


class LinguaChainKrum(RoundRecorder, UpdateScreening, Krum):
    """Flower's Krum: the single update closest to its n - f - 2 nearest neighbours."""


class LinguaChainMultiKrum(RoundRecorder, UpdateScreening, MultiKrum):
    """Flower's MultiKrum: the average of the updates with the best Krum scores."""


class LinguaChainFedMedian(RoundRecorder, UpdateScreening, FedMedian):
    """Flower's FedMedian: the coordinate-wise median of the updates."""


class LinguaChainFedTrimmedAvg(RoundRecorder, UpdateScreening, FedTrimmedAvg):
    """Flower's FedTrimmedAvg: the coordinate-wise trimmed mean of the updates."""


class LinguaChainBulyan(RoundRecorder, UpdateScreening, Bulyan):
    """Flower's Bulyan: MultiKrum selection, then a trimmed mean around the median."""


class LinguaChainNormBound(RoundRecorder, UpdateScreening, FedAvg):
    """FedAvg over updates clipped to `aggregation.norm_bound`."""


def build_robust_strategy(config: RunConfig, common: dict[str, Any]) -> RoundRecorder:
    """Build the robust rule named by `aggregation.name` with the shared options."""
    aggregation = config.aggregation
    name, f = aggregation.name, aggregation.num_malicious
    strategy: Any
    if name == "krum":
        strategy = LinguaChainKrum(**common, num_malicious_nodes=f)
    elif name == "multikrum":
        expected = expected_train_nodes(config.federation)
        select = aggregation.multikrum_select or expected - f
        strategy = LinguaChainMultiKrum(
            **common, num_malicious_nodes=f, num_nodes_to_select=select
        )
    elif name == "median":
        strategy = LinguaChainFedMedian(**common)
    elif name == "trimmed_mean":
        strategy = LinguaChainFedTrimmedAvg(**common, beta=aggregation.trim_fraction)
    elif name == "bulyan":
        strategy = LinguaChainBulyan(**common, num_malicious_nodes=f)
    elif name == "norm_bound":
        strategy = LinguaChainNormBound(**common)
    elif name == "fltrust":
        strategy = LinguaChainFLTrust(**common)
    else:
        raise ValueError(
            f"Unknown robust aggregation rule {name!r}; use one of"
            f" {sorted(ROBUST_RULES)}."
        )
    return strategy


class FLTrustAvg(FedAvg):
    """FLTrust on plaintext updates: trust = ReLU(cos(u_i, r)), rescaled to |r|.

    `reference_fn` maps the global weights to the server's own update r on the
    public root set. The encrypted path (`strategies.secure_fltrust`) runs the
    same math over CKKS. Place it after UpdateScreening, which keeps
    the global weights and rejects invalid updates first.
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.reference_fn: Callable[[Weights], Weights] | None = None
        self.trust: dict[int, dict[str, float]] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weight each update by its trust score after rescaling it to |r|."""
        replies = list(replies)
        base = getattr(self, "_global_weights", None)
        if self.reference_fn is None or base is None:
            raise RuntimeError(
                "FLTrust needs the server's root-set update: set reference_fn and"
                " run configure_train before aggregate_train."
            )
        # Replies carry plaintext weights here; strategies.secure_fltrust runs
        # the same math over CKKS ciphertexts.
        reference = flat_vector(self.reference_fn(base))
        reference_norm = float(np.linalg.norm(reference))
        vectors = [
            flat_vector(weights_difference(reply_weights(reply), base))
            for reply in replies
        ]
        scalars = [(float(v @ reference), float(v @ v)) for v in vectors]
        outcome = trust_weights(scalars, reference_norm)
        self.trust[server_round] = {
            node_key(reply): score
            for reply, score in zip(replies, outcome.trust, strict=True)
        }
        logger.info(
            "Round %d: FLTrust trust scores %s (reference norm %.4g)",
            server_round,
            self.trust[server_round],
            reference_norm,
        )
        if sum(outcome.trust) == 0:
            logger.warning(
                "Round %d: every FLTrust score is 0; the global model is unchanged",
                server_round,
            )
            return None, None

        aggregate = sum(w * v for w, v in zip(outcome.weights, vectors, strict=True))
        shapes = [value.shape for value in base.values()]
        arrays = unflatten_update(np.asarray(aggregate), shapes)
        new_weights = add_update(base, dict(zip(base, arrays, strict=True)))
        metrics = self.train_metrics_aggr_fn(
            [reply.content for reply in replies], self.weighted_by_key
        )
        record = ArrayRecord({k: Array(np.asarray(v)) for k, v in new_weights.items()})
        return record, metrics


class LinguaChainFLTrust(RoundRecorder, UpdateScreening, FLTrustAvg):
    """FLTrust with screening, timing and the trust scores as robustness scores."""

    def _score(self, arrays, updates, report) -> None:  # type: ignore[no-untyped-def]
        """Record the FLTrust trust scores as the robustness scores."""
        # _score runs right after this round's aggregate_train, so the latest
        # round's trust scores are this round's.
        latest = self.trust[max(self.trust)] if self.trust else {}
        for key in updates:
            report.scores[key] = latest.get(key, 0.0)
