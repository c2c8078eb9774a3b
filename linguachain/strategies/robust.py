"""Byzantine-robust aggregation rules on the plaintext path.

Flower's Krum, MultiKrum, FedMedian, FedTrimmedAvg and Bulyan are wrapped, not
rewritten: `RoundRecorder` drops error and empty replies and times the round,
`UpdateScreening` rejects non-finite and oversized updates before any sort,
checks each rule's precondition and scores nodes, and Flower's class aggregates.
The rules work on full weights, which is equivalent to working on updates
because every node starts from the same global model: distances, medians and
trimmed means all shift with it.

`norm_bound` is the cheaper rule: FedAvg over updates clipped to a norm bound
(fixed, or the median norm of the round).
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)

from linguachain.config import RunConfig, expected_train_nodes
from linguachain.strategies.recording import RoundRecorder
from linguachain.strategies.screening import UpdateScreening

ROBUST_RULES = frozenset(
    {"krum", "multikrum", "median", "trimmed_mean", "bulyan", "norm_bound"}
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
    else:
        raise ValueError(
            f"Unknown robust aggregation rule {name!r}; use one of {sorted(ROBUST_RULES)}."
        )
    return strategy
