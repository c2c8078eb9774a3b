"""Node-level differential privacy: clipping, distributed Gaussian noise, accounting.

Each of the n nodes sampled in a round clips its update to L2 norm C and adds
Gaussian noise of standard deviation sigma * C / sqrt(n) to every coordinate.
The sum of the n noise terms then has standard deviation sigma * C, the noise of
the central Gaussian mechanism with noise multiplier sigma, while no single node
adds that much noise. This holds only when every sampled node adds its share.

Accounting uses Flower's RDP accountant (`flwr.serverapp.RdpAccountant`, which
wraps Google's dp-accounting) with node-level add-or-remove neighbours and no
amplification by sampling. Two guarantees are reported per node:

- `epsilon`: for anyone who observes only the aggregated models. With a linear rule
  (FedAvg, FedAvgM) node i enters the average with weight p_i, so its effective
  noise multiplier is sigma / sqrt(n) * sqrt(sum_j p_j^2) / p_i. With equal
  weights and all n nodes kept this is sigma. Other rules (Krum, median, ...)
  are not linear, so they fall back to the guarantee below.
- `epsilon_vs_server`: for a server that sees each node's noisy update, as on
  the plaintext path. Each update carries only its own noise share, so the
  multiplier is sigma / sqrt(n).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from linguachain.privacy.updates import Weights, clip_update

logger = logging.getLogger(__name__)

# Aggregation rules whose output is a fixed weighted average of the updates.
LINEAR_RULES = frozenset({"fedavg", "fedavgm"})


def node_noise_std(clip_norm: float, noise_multiplier: float, num_nodes: int) -> float:
    """Return each node's noise standard deviation sigma * C / sqrt(n)."""
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1 to share the noise, got {num_nodes}")
    return noise_multiplier * clip_norm / math.sqrt(num_nodes)


def privatize_update(
    update: Mapping[str, np.ndarray],
    clip_norm: float,
    noise_multiplier: float,
    num_nodes: int,
    rng: np.random.Generator,
) -> tuple[Weights, float]:
    """Clip the update to norm C and add this node's share of Gaussian noise.

    Returns the noisy update and the norm before clipping. Pass an rng seeded
    from the operating system (`np.random.default_rng()`): noise that the server
    can predict protects nothing.
    """
    clipped, norm = clip_update(update, clip_norm)
    std = node_noise_std(clip_norm, noise_multiplier, num_nodes)
    if std > 0:
        for name, value in clipped.items():
            noise = rng.normal(0.0, std, value.shape)
            clipped[name] = (value + noise).astype(value.dtype)
    return clipped, norm


def effective_noise_multipliers(
    noise_multiplier: float,
    num_noisy_nodes: int,
    weights: Mapping[str, float],
    linear: bool,
) -> dict[str, float]:
    """Return each kept node's noise multiplier in the released aggregate.

    `weights` maps each kept node to its weight in the average (any positive
    scale). `num_noisy_nodes` is n, the number of nodes that split the noise.
    """
    local = noise_multiplier / math.sqrt(num_noisy_nodes)
    if not linear:
        return {node: local for node in weights}
    total = sum(weights.values())
    shares = {node: w / total for node, w in weights.items()}
    spread = math.sqrt(sum(p * p for p in shares.values()))
    return {node: local * spread / p for node, p in shares.items()}


@dataclass
class NodeBudget:
    """Privacy spent by one node so far."""

    rounds: int = 0
    epsilon: float = 0.0
    epsilon_vs_server: float = 0.0


@dataclass
class PrivacyAccounting:
    """Per-node RDP accountants for a run, composed once per round a node is kept."""

    noise_multiplier: float
    delta: float
    population: int
    linear: bool
    budgets: dict[str, NodeBudget] = field(default_factory=dict)
    _accountants: dict[str, tuple[object, object]] = field(default_factory=dict)

    def record_round(
        self, num_noisy_nodes: int, weights: Mapping[str, float]
    ) -> dict[str, object]:
        """Compose this round's release for every kept node; return the round report."""
        multipliers = effective_noise_multipliers(
            self.noise_multiplier, num_noisy_nodes, weights, self.linear
        )
        local = self.noise_multiplier / math.sqrt(num_noisy_nodes)
        for node, multiplier in multipliers.items():
            budget = self.budgets.setdefault(node, NodeBudget())
            budget.rounds += 1
            if self.noise_multiplier <= 0:
                budget.epsilon = budget.epsilon_vs_server = math.inf
                continue
            model, server = self._node_accountants(node)
            model.compose(self._event(multiplier))  # type: ignore[attr-defined]
            server.compose(self._event(local))  # type: ignore[attr-defined]
            budget.epsilon = model.get_epsilon(self.delta)  # type: ignore[attr-defined]
            budget.epsilon_vs_server = server.get_epsilon(  # type: ignore[attr-defined]
                self.delta
            )

        worst = max((b.epsilon for b in self.budgets.values()), default=0.0)
        worst_server = max(
            (b.epsilon_vs_server for b in self.budgets.values()), default=0.0
        )
        return {
            "epsilon": worst,
            "epsilon_vs_server": worst_server,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "noisy_nodes": num_noisy_nodes,
            "per_node": {
                node: {
                    "epsilon": b.epsilon,
                    "epsilon_vs_server": b.epsilon_vs_server,
                    "rounds": b.rounds,
                    "noise_multiplier": multipliers.get(node),
                }
                for node, b in sorted(self.budgets.items())
            },
        }

    def _event(self, multiplier: float) -> object:
        from flwr.serverapp import GaussianPrivacyEvent

        # Without amplification the accountant ignores the sample size.
        return GaussianPrivacyEvent(
            noise_multiplier=multiplier, sample_size=1, population_size=self.population
        )

    def _node_accountants(self, node: str) -> tuple[object, object]:
        if node not in self._accountants:
            from flwr.serverapp import (
                NeighboringRelation,
                PrivacyConfig,
                RdpAccountant,
                SamplingMethod,
            )

            # NOTE: no amplification by sampling is claimed, so the epsilon is an
            # upper bound when federation.fraction_train < 1.
            config = PrivacyConfig(
                target_delta=self.delta,
                population_size=self.population,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
            self._accountants[node] = (RdpAccountant(config), RdpAccountant(config))
        return self._accountants[node]
