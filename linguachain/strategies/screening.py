"""Update screening, robustness scores and privacy accounting for every strategy.

Nodes reply with full weights on the plaintext path, so `UpdateScreening` keeps
the global model it sent and works on updates (reply minus global weights). Per
round it:

1. rejects an update with NaN or infinite values, arrays that do not match the
   model, or an L2 norm above `aggregation.max_update_norm`. This runs before any
   rule sorts or averages, and the round goes on without the rejected update.
2. checks the rule's precondition on the number of updates left (n >= 2f + 3
   for Krum and MultiKrum, n >= 4f + 3 for Bulyan) and keeps the old global
   model when it fails.
3. clips every update to the round's bound for the `norm_bound` rule.
4. after the base rule aggregated, scores each node: ReLU of the cosine between
   its update and the aggregated update (0 for a rejected node or a zero
   update).
5. composes the round's differential privacy release in the accountant.

Scores and privacy spent are kept in `round_reports` for metrics and the ledger,
whose update commitments carry each node's score and epsilon: rewards scale with
the score, and repeated zero scores slash stake (see `ledger.rules`).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
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

from linguachain.config import RunConfig
from linguachain.privacy.dp import LINEAR_RULES, PrivacyAccounting
from linguachain.privacy.updates import (
    Weights,
    add_update,
    clip_update,
    cosine_similarity,
    flat_vector,
    is_finite,
    update_norm,
    weights_difference,
)

logger = logging.getLogger(__name__)

PARTITION_ID_KEY = "partition-id"
SAMPLED_NODES_KEY = "sampled-nodes"


@dataclass
class RoundReport:
    """Per-node outcome of one round's screening, scoring and accounting."""

    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    norm_bound: float | None = None
    skipped: str = ""
    privacy: dict[str, Any] | None = None

    def as_metrics(self) -> dict[str, Any]:
        """Return the report as JSON-ready metrics."""
        metrics: dict[str, Any] = {
            "robustness_scores": dict(sorted(self.scores.items())),
            "rejected_updates": dict(sorted(self.rejected.items())),
            "update_norms": dict(sorted(self.norms.items())),
        }
        if self.norm_bound is not None:
            metrics["norm_bound"] = self.norm_bound
        if self.skipped:
            metrics["aggregation_skipped"] = self.skipped
        if self.privacy is not None:
            metrics["privacy"] = self.privacy
            # Per-node epsilon spent so far, under the key the run report reads.
            metrics["epsilon"] = {
                node: budget["epsilon"]
                for node, budget in self.privacy["per_node"].items()
            }
        return _finite_or_none(metrics)


def _finite_or_none(value: Any) -> Any:
    """Replace non-finite floats (an infinite epsilon) by None for canonical JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    return value


def node_key(reply: Message) -> str:
    """Name a reply's node by its partition id when it sends one, else its node id."""
    return content_node_key(reply.content, reply.metadata.src_node_id)


def content_node_key(content: RecordDict, node_id: int) -> str:
    """Name a node by the partition id its reply content carries, else its node id."""
    metrics = next(iter(content.metric_records.values()), None)
    if metrics is not None and PARTITION_ID_KEY in metrics:
        return f"partition-{int(metrics[PARTITION_ID_KEY])}"
    return f"node-{node_id}"


def minimum_updates(rule: str, num_malicious: int) -> int:
    """Return the fewest updates a rule needs to tolerate `num_malicious` attackers."""
    if rule in ("krum", "multikrum"):
        return 2 * num_malicious + 3
    if rule == "bulyan":
        return 4 * num_malicious + 3
    return 1


def reply_weights(reply: Message) -> Weights:
    """Return the weights a training reply carries, by parameter name."""
    record = next(iter(reply.content.array_records.values()))
    return OrderedDict((name, array.numpy()) for name, array in record.items())


def _num_examples(reply: Message) -> float:
    metrics = next(iter(reply.content.metric_records.values()))
    return float(metrics["num-examples"])


class UpdateScreening:
    """Mixin between RoundRecorder and a Flower strategy; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.rule_name = "fedavg"
        self.num_malicious = getattr(self, "num_malicious_nodes", 0)
        self.max_update_norm = 0.0
        self.norm_bound: float | None = None
        self.trim_fraction: float | None = None
        self.privacy: PrivacyAccounting | None = None
        self.round_reports: dict[int, RoundReport] = {}
        self._global_weights: Weights | None = None
        self._sampled: dict[int, int] = {}

    def configure_screening(self, config: RunConfig) -> None:
        """Set the screening and accounting options from the run config."""
        aggregation = config.aggregation
        self.rule_name = aggregation.name
        self.num_malicious = aggregation.num_malicious
        self.max_update_norm = aggregation.max_update_norm
        if aggregation.name == "norm_bound":
            self.norm_bound = aggregation.norm_bound
        if aggregation.name == "trimmed_mean":
            self.trim_fraction = aggregation.trim_fraction
        if config.privacy.enabled:
            self.privacy = PrivacyAccounting(
                noise_multiplier=config.privacy.noise_multiplier,
                delta=config.privacy.delta,
                population=config.federation.num_nodes,
                linear=aggregation.name in LINEAR_RULES,
            )

    def set_global_weights(self, arrays: ArrayRecord) -> None:
        """Keep the global model sent this round; updates are replies minus it."""
        self._global_weights = OrderedDict(
            (name, array.numpy()) for name, array in arrays.items()
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Keep the global weights and tell each node how many nodes share the noise."""
        self.set_global_weights(arrays)
        parent = super().configure_train  # type: ignore[misc]
        messages = list(parent(server_round, arrays, config, grid))
        self._sampled[server_round] = len(messages)
        for message in messages:
            message.content["config"][SAMPLED_NODES_KEY] = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen updates, check the rule's precondition, aggregate and score."""
        if self._global_weights is None:
            raise RuntimeError(
                "No global model to compute updates from: configure_train (or"
                " set_global_weights) must run before aggregate_train."
            )
        report = RoundReport()
        self.round_reports[server_round] = report
        accepted_replies, updates = self._screen(server_round, list(replies), report)

        required = minimum_updates(self.rule_name, self.num_malicious)
        if len(accepted_replies) < required:
            report.skipped = (
                f"{self.rule_name} with f={self.num_malicious} needs {required} valid"
                f" updates, got {len(accepted_replies)}"
            )
            logger.warning(
                "Round %d: %s; the global model is unchanged",
                server_round,
                report.skipped,
            )
            return None, None
        if (
            self.trim_fraction is not None
            and int(self.trim_fraction * len(accepted_replies)) == 0
        ):
            logger.warning(
                "Round %d: trim_fraction %.3f trims nothing from %d updates; the"
                " trimmed mean is the plain mean this round",
                server_round,
                self.trim_fraction,
                len(accepted_replies),
            )
        if self.norm_bound is not None:
            self._bound_norms(server_round, accepted_replies, updates, report)

        base_rule = super().aggregate_train  # type: ignore[misc]
        arrays, metrics = base_rule(server_round, accepted_replies)
        if arrays is not None:
            self._score(arrays, updates, report)
        if self.privacy is not None and arrays is not None:
            weights = {
                node_key(reply): _num_examples(reply) for reply in accepted_replies
            }
            noisy = self._sampled.get(server_round, len(accepted_replies))
            report.privacy = self.privacy.record_round(noisy, weights)
            logger.info(
                "Round %d: differential privacy spent so far epsilon=%.3f"
                " (vs. server %.3f) at delta=%g",
                server_round,
                report.privacy["epsilon"],
                report.privacy["epsilon_vs_server"],
                self.privacy.delta,
            )
        return arrays, metrics

    def _screen(
        self, server_round: int, replies: list[Message], report: RoundReport
    ) -> tuple[list[Message], dict[str, Weights]]:
        """Reject non-finite, mismatched and oversized updates before aggregation."""
        accepted_replies: list[Message] = []
        updates: dict[str, Weights] = {}
        for reply in replies:
            key = node_key(reply)
            reason = ""
            try:
                update = weights_difference(reply_weights(reply), self._global_weights)
            except (ValueError, StopIteration) as error:
                reason = f"invalid arrays: {error}"
            else:
                if not is_finite(update):
                    reason = "update contains NaN or infinite values"
                else:
                    norm = update_norm(update)
                    report.norms[key] = norm
                    if self.max_update_norm and norm > self.max_update_norm:
                        reason = (
                            f"update norm {norm:.4g} exceeds"
                            " aggregation.max_update_norm"
                            f" {self.max_update_norm:.4g}"
                        )
            if reason:
                report.rejected[key] = reason
                report.scores[key] = 0.0
                logger.warning(
                    "Round %d: rejected the update of %s: %s", server_round, key, reason
                )
                continue
            accepted_replies.append(reply)
            updates[key] = update
            report.accepted.append(key)

        stats = getattr(self, "round_stats", {}).get(server_round)
        if stats is not None and report.rejected:
            stats.replies = len(accepted_replies)
            stats.num_examples = int(
                sum(_num_examples(reply) for reply in accepted_replies)
            )
        return accepted_replies, updates

    def _bound_norms(
        self,
        server_round: int,
        accepted_replies: list[Message],
        updates: dict[str, Weights],
        report: RoundReport,
    ) -> None:
        """Clip each update to the bound and write the clipped weights back."""
        norms = [report.norms[node_key(reply)] for reply in accepted_replies]
        bound = self.norm_bound or statistics.median(norms)
        report.norm_bound = bound
        clipped = 0
        for reply in accepted_replies:
            key = node_key(reply)
            if report.norms[key] <= bound:
                continue
            updates[key], _ = clip_update(updates[key], bound)
            weights = add_update(self._global_weights, updates[key])
            record_key = next(iter(reply.content.array_records))
            reply.content[record_key] = ArrayRecord(
                {name: Array(np.asarray(value)) for name, value in weights.items()}
            )
            clipped += 1
        logger.info(
            "Round %d: clipped %d of %d updates to norm %.4g",
            server_round,
            clipped,
            len(accepted_replies),
            bound,
        )

    def _score(
        self, arrays: ArrayRecord, updates: dict[str, Weights], report: RoundReport
    ) -> None:
        aggregate = weights_difference(
            OrderedDict((name, array.numpy()) for name, array in arrays.items()),
            self._global_weights,
        )
        direction = flat_vector(aggregate)
        for key, update in updates.items():
            report.scores[key] = max(
                0.0, cosine_similarity(flat_vector(update), direction)
            )
