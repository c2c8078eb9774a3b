"""FedAvg-family strategies that drop empty replies and time each round's phases.

`RoundRecorder` wraps Flower's strategies rather than rewriting them. It drops
replies that carry no training examples (a node whose partition has no full
block), so a weighted average never divides by zero. It also records how long
the nodes and the aggregation took. Later steps of the round protocol
(encrypted aggregation, consensus) hook in by overriding `aggregate_train`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedAvgM

from linguachain.config import RunConfig
from linguachain.strategies.screening import PARTITION_ID_KEY, UpdateScreening

logger = logging.getLogger(__name__)

NUM_EXAMPLES_KEY = "num-examples"


@dataclass
class RoundStats:
    """Counts and timings of one training round."""

    sampled: int = 0
    replies: int = 0
    errors: int = 0
    empty: int = 0
    num_examples: int = 0
    train_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    train_loss: float | None = None
    # Training examples (tokens) each kept reply reported, by node id.
    node_examples: dict[int, int] = field(default_factory=dict)
    error_reasons: list[str] = field(default_factory=list)
    # Seconds of parts of the train and aggregate phases, named "<phase>.<part>"
    # ("train.encrypt" is the mean over nodes), written into the metrics line's
    # "subphase_seconds".
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # Further values for the round's metrics line (bytes_per_param, ...).
    extra: dict[str, Any] = field(default_factory=dict)


def weighted_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Average metrics weighted by `weight_key`; all-zero weights give plain means."""
    weights = [float(next(iter(r.metric_records.values()))[weight_key]) for r in records]
    total = sum(weights)
    factors = [w / total for w in weights] if total > 0 else [1 / len(records)] * len(records)
    merged = MetricRecord()
    for record, factor in zip(records, factors, strict=True):
        for metrics in record.metric_records.values():
            for key, value in metrics.items():
                if key in (weight_key, PARTITION_ID_KEY) or isinstance(value, list):
                    continue
                merged[key] = float(merged.get(key, 0.0)) + float(value) * factor
    merged[weight_key] = int(total)
    return merged


class RoundRecorder:
    """Mixin for Flower's FedAvg family; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.round_stats: dict[int, RoundStats] = {}
        self._round_started = 0.0
        # Records added to every message the strategy sends, next to "arrays"
        # and "config" (for example the serialized tokenizer). Kept out of the
        # config record because Flower logs that record in full.
        self.extra_records: dict[str, ConfigRecord] = {}

    def _attach_extra_records(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for message in messages:
            for key, record in self.extra_records.items():
                message.content[key] = record
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send them the global model, starting the round clock."""
        messages = self._attach_extra_records(
            super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]
        )
        self.round_stats[server_round] = RoundStats(sampled=len(messages))
        self._round_started = time.perf_counter()
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes for federated evaluation of the global model."""
        return self._attach_extra_records(
            super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop error and empty replies, then aggregate the rest with the base rule."""
        stats = self.round_stats.setdefault(server_round, RoundStats())
        stats.train_seconds = time.perf_counter() - self._round_started
        replies = list(replies)
        kept: list[Message] = []
        for reply in replies:
            if reply.has_error():
                stats.errors += 1
                stats.error_reasons.append(reply.error.reason)
                logger.warning(
                    "Round %d: node %d replied with an error: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            metrics = next(iter(reply.content.metric_records.values()), None)
            if metrics is None or int(metrics.get(NUM_EXAMPLES_KEY, 0)) <= 0:
                stats.empty += 1
                logger.warning(
                    "Round %d: node %d trained on 0 examples; its reply is left out",
                    server_round,
                    reply.metadata.src_node_id,
                )
                continue
            kept.append(reply)
            examples = int(metrics[NUM_EXAMPLES_KEY])
            stats.num_examples += examples
            stats.node_examples[reply.metadata.src_node_id] = examples
        stats.replies = len(kept)

        started = time.perf_counter()
        if not kept:
            logger.warning(
                "Round %d: no usable replies out of %d; the global model is unchanged",
                server_round,
                len(replies),
            )
            return None, None
        arrays, metrics = super().aggregate_train(server_round, kept)  # type: ignore[misc]
        stats.aggregate_seconds = time.perf_counter() - started
        if metrics is not None and "train-loss" in metrics:
            stats.train_loss = float(metrics["train-loss"])
        logger.info(
            "Round %d: aggregated %d of %d sampled nodes (%d tokens) in %.2f s",
            server_round,
            len(kept),
            stats.sampled,
            stats.num_examples,
            stats.aggregate_seconds,
        )
        return arrays, metrics


class LinguaChainFedAvg(RoundRecorder, UpdateScreening, FedAvg):
    """Flower's FedAvg with empty-reply filtering and phase timing."""


class LinguaChainFedAvgM(RoundRecorder, UpdateScreening, FedAvgM):
    """Flower's FedAvgM (server momentum) with empty-reply filtering and timing."""


def build_strategy(config: RunConfig) -> RoundRecorder:
    """Build the configured strategy."""
    federation = config.federation
    common = dict(
        fraction_train=federation.fraction_train,
        fraction_evaluate=federation.fraction_evaluate,
        min_train_nodes=federation.min_nodes,
        min_evaluate_nodes=federation.min_nodes if federation.fraction_evaluate else 0,
        min_available_nodes=federation.min_nodes,
        train_metrics_aggr_fn=weighted_metrics,
        evaluate_metrics_aggr_fn=weighted_metrics,
    )
    if config.secure_aggregation.scheme != "none":
        from linguachain.strategies.secure_fedavg import build_secure_strategy

        return build_secure_strategy(config, common)
    from linguachain.strategies.robust import ROBUST_RULES, build_robust_strategy

    strategy: RoundRecorder
    if config.aggregation.name in ROBUST_RULES:
        strategy = build_robust_strategy(config, common)
    elif config.aggregation.name == "fedavgm":
        strategy = LinguaChainFedAvgM(
            **common,
            server_learning_rate=config.aggregation.server_lr,
            server_momentum=config.aggregation.server_momentum,
        )
    else:
        strategy = LinguaChainFedAvg(**common)
    strategy.configure_screening(config)  # type: ignore[attr-defined]
    return strategy
