"""One federated run: set up data, tokenizer, model and ledger, then train.

The ServerApp (`flwr run`) and the Hydra sweep both call `run_server`. It
trains the public tokenizer, evaluates the global model on held-out text at
round 0 and after every round, commits each new global model to the ledger and
writes the run folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from tqdm import tqdm

from linguachain.client_app.app import (
    TOKENIZER_KEY,
    TOKENIZER_RECORD,
    arrays_to_weights,
    weights_to_arrays,
)
from linguachain.config import RunConfig, flatten
from linguachain.ledger.chain import Ledger, sqlite_url
from linguachain.ledger.hashing import hash_json, hash_weights
from linguachain.server_app.report import write_run_report
from linguachain.server_app.results import RunFolder
from linguachain.strategies.consensus import ConsensusDriver, gate_strategy
from linguachain.strategies.exchange import QuickPullGrid
from linguachain.strategies.recording import build_strategy
from linguachain.server_app.provisioning import prepare_kits
from linguachain.task.backdoor import (
    backdoor_prompts,
    backdoor_token_ids,
    measure_backdoor,
)
from linguachain.task.blocks import articles_to_blocks
from linguachain.task.data import load_text_pools, split_held_out
from linguachain.task.evaluate import evaluate
from linguachain.task.generate import generate_text
from linguachain.task.model import build_model, count_parameters, get_weights, set_weights
from linguachain.task.tokenizer import build_tokenizer, serialize_tokenizer
from linguachain.task.train import train_local

logger = logging.getLogger(__name__)


@dataclass
class ServerTask:
    """Server-side state of the language-model task."""

    tokenizer: Any
    model: torch.nn.Module
    eval_blocks: torch.Tensor
    data_source: str
    # Blocks of the public held-out text the tokenizer was trained on (FLTrust's
    # root set).
    public_blocks: torch.Tensor | None = None


def prepare_task(config: RunConfig, folder: RunFolder) -> ServerTask:
    """Load text, train the tokenizer on public text and build the initial model."""
    pools = load_text_pools(config.data)
    logger.info("Text: %s", pools.source)
    if config.data.path:
        logger.info(
            "Offline text pool in use: %s is the training pool partitioned across"
            " nodes, %s is held out",
            config.data.train_file,
            config.data.test_file,
        )
    public, evaluation = split_held_out(pools.test, config.tokenizer.public_fraction)
    tokenizer = build_tokenizer(config.tokenizer, [line for a in public for line in a])
    tokenizer.save_pretrained(folder.path / "tokenizer")

    blocks = articles_to_blocks(tokenizer, evaluation, config.data.block_size)
    if config.data.eval_blocks and len(blocks) > config.data.eval_blocks:
        # Evenly spaced blocks cover the whole evaluation text, not just its start.
        index = torch.linspace(0, len(blocks) - 1, config.data.eval_blocks).long()
        blocks = blocks[index]
    if len(blocks) == 0:
        raise ValueError(
            f"The evaluation text contains no full {config.data.block_size}-token block;"
            " lower data.block_size or add held-out text."
        )

    torch.manual_seed(config.train.seed)
    model = build_model(config.model, tokenizer, config.data.block_size)
    logger.info(
        "Model: GPT-2 preset '%s', %d parameters, vocabulary %d, block %d;"
        " evaluation on %d held-out blocks",
        config.model.preset,
        count_parameters(model),
        len(tokenizer),
        config.data.block_size,
        len(blocks),
    )
    public_blocks = articles_to_blocks(tokenizer, public, config.data.block_size)
    return ServerTask(tokenizer, model, blocks, pools.source, public_blocks)


class RoundCommitter:
    """Evaluates each global model, commits it to the ledger and logs metrics.

    Flower calls it as the strategy's `evaluate_fn` at round 0 and after every
    round.
    """

    def __init__(self, config, task, strategy, ledger, folder) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.task = task
        self.strategy = strategy
        self.ledger = ledger
        self.folder = folder
        self.model_hash = ""
        # Set when consensus gates commits: the driver appends the blocks.
        self.consensus: ConsensusDriver | None = None
        self.history: list[dict[str, Any]] = []
        self.progress = tqdm(total=config.train.rounds, desc="rounds", unit="round")
        # Backdoor runs measure the attack success rate on held-out prompts.
        self.backdoor: tuple[torch.Tensor, list[int]] | None = None
        if config.attack.kind == "backdoor":
            trigger_ids, target_ids = backdoor_token_ids(
                task.tokenizer, config.attack.trigger, config.attack.target
            )
            prompts = backdoor_prompts(
                task.eval_blocks, trigger_ids, config.attack.backdoor_prompts
            )
            self.backdoor = (prompts, target_ids)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        weights = arrays_to_weights(arrays)
        set_weights(self.task.model, weights)
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        started = time.perf_counter()
        result = evaluate(self.task.model, self.task.eval_blocks, self.task.tokenizer)
        evaluate_seconds = time.perf_counter() - started

        started = time.perf_counter()
        model_hash = hash_weights(weights)
        committed = server_round == 0 or model_hash != self.model_hash
        metrics = {
            "test_loss": result.loss,
            "test_perplexity": result.perplexity,
            "test_bits_per_byte": result.bits_per_byte,
        }
        if self.backdoor is not None:
            probe = measure_backdoor(self.task.model, *self.backdoor)
            metrics["backdoor_success"] = probe.success_rate
            metrics["backdoor_token_accuracy"] = probe.token_accuracy
        # Robustness scores and privacy spent go into the version block and the row.
        report = getattr(self.strategy, "round_reports", {}).get(server_round)
        if report is not None:
            metrics.update(report.as_metrics())
        outcome = None
        offset = self.consensus.round_offset if self.consensus else 0
        if self.consensus is not None:
            outcome = self.consensus.outcomes.get(server_round)
            committed = outcome is not None and outcome.status == "accepted"
            if server_round == 0 and offset:
                # Resumed run: round 0 is the last final model, logged before
                # unless the server was killed between its final blocks and its
                # metrics row. Then the row is written now, without timings.
                self.model_hash = model_hash
                row = {"round": offset, **metrics, "nodes": 0, "committed": False,
                       "model_hash": model_hash}
                logged = {logged_row.get("round") for logged_row in self.folder.read_metrics()}
                if offset not in logged:
                    logger.info("Resume: writing the missing metrics row of round %d", offset)
                    self.folder.append_metrics({**row, "committed": True, "resumed": True})
                self.history.append(row)
                return MetricRecord({"test-loss": result.loss})
        elif server_round == 0:
            self.ledger.append_block(
                "genesis",
                {
                    "model_hash": model_hash,
                    "config_hash": hash_json(flatten(self.config)),
                    "data_source": self.task.data_source,
                    "params": count_parameters(self.task.model),
                },
            )
        elif committed:
            self.ledger.commit_version(server_round, model_hash, self.model_hash, metrics)
        else:
            logger.warning("Round %d produced no new model; nothing committed", server_round)
        self.model_hash = model_hash
        ledger_seconds = time.perf_counter() - started

        if outcome is not None:
            ledger_seconds = outcome.seconds
        stats = self.strategy.round_stats.get(server_round)
        row = {
            "round": server_round + offset,
            **metrics,
            "train_loss": stats.train_loss if stats else None,
            "nodes": stats.replies if stats else 0,
            "tokens": stats.num_examples if stats else 0,
            "node_tokens": (
                {str(k): v for k, v in stats.node_examples.items()} if stats else {}
            ),
            "committed": committed,
            "model_hash": model_hash,
            "seconds": {
                "train": stats.train_seconds if stats else 0.0,
                "aggregate": stats.aggregate_seconds if stats else 0.0,
                "evaluate": evaluate_seconds,
                "ledger": ledger_seconds,
            },
            # Parts of the phases above, so not added to the round's time.
            "subphase_seconds": dict(stats.phase_seconds) if stats else {},
            **(stats.extra if stats else {}),
        }
        if outcome is not None:
            row["consensus"] = {
                "status": outcome.status,
                "reason": outcome.reason,
                "blocks": outcome.blocks,
                "vdf_seconds": outcome.vdf_seconds,
                "aggregate_checked": outcome.aggregate_checked,
            }
        self.folder.append_metrics(row)
        self.history.append(row)
        logger.info(
            "Round %d: held-out loss %.4f, perplexity %.1f, %.3f bits/byte (%d nodes,"
            " %d tokens)",
            server_round,
            result.loss,
            result.perplexity,
            result.bits_per_byte,
            row["nodes"],
            row["tokens"],
        )
        if server_round > 0:
            self.progress.update(1)
            self.progress.set_postfix(perplexity=f"{result.perplexity:.1f}")
        return MetricRecord({"test-loss": result.loss, "test-perplexity": result.perplexity})


def root_update_fn(config: RunConfig, task: ServerTask):  # type: ignore[no-untyped-def]
    """Return a function that trains the global model on the public root set."""
    if task.public_blocks is None or len(task.public_blocks) == 0:
        raise ValueError(
            "FLTrust needs public root-set text, but the public held-out slice"
            " contains no full block; raise tokenizer.public_fraction or lower"
            " data.block_size."
        )

    def root_update(global_weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = build_model(config.model, task.tokenizer, config.data.block_size)
        set_weights(model, global_weights)
        train_local(model, task.public_blocks, config.train, seed=config.train.seed)
        return OrderedDict(
            (name, p.detach().numpy() - global_weights[name])
            for name, p in model.named_parameters()
        )

    logger.info("FLTrust root set: %d public blocks", len(task.public_blocks))
    return root_update


def write_outputs(config: RunConfig, task: ServerTask, folder: RunFolder) -> list[dict]:
    """Save the final model with its tokenizer and sample generations."""
    if config.output.save_model:
        task.model.save_pretrained(folder.path / "model")
        task.tokenizer.save_pretrained(folder.path / "model")
    samples = []
    for prompt in filter(None, (p.strip() for p in config.output.prompts.split("|"))):
        for top_k in (0, 40):
            text = generate_text(
                task.model, task.tokenizer, prompt, config.output.max_new_tokens, top_k
            )
            samples.append({"prompt": prompt, "top_k": top_k, "text": text})
    folder.write_json("generations.json", samples)
    return samples


def run_server(grid: Grid, config: RunConfig, folder_path: Path | None = None) -> dict:
    """Run a whole federation on `grid` and return the summary it writes."""
    wall_started = time.perf_counter()
    grid = QuickPullGrid(grid)
    folder = RunFolder.create(config, folder_path)
    logger.info("Run folder: %s", folder.path)
    task = prepare_task(config, folder)
    ledger_url = config.ledger.url or sqlite_url(folder.path / "ledger.db")
    ledger = Ledger(ledger_url)

    config = prepare_kits(config, folder.path, grid)
    strategy = build_strategy(config)
    if hasattr(strategy, "reference_fn"):
        strategy.reference_fn = root_update_fn(config, task)
    committer = RoundCommitter(config, task, strategy, ledger, folder)
    strategy.extra_records[TOKENIZER_RECORD] = ConfigRecord(
        {TOKENIZER_KEY: serialize_tokenizer(task.tokenizer)}
    )
    node_config = ConfigRecord(flatten(config))
    num_rounds = config.train.rounds
    if config.consensus.enabled:
        driver = committer.consensus = ConsensusDriver(config, ledger, folder.path)
        gate_strategy(strategy, driver).consensus.extra_records = strategy.extra_records
        genesis_extra = {
            "config_hash": hash_json(flatten(config)),
            "data_source": task.data_source,
            "params": count_parameters(task.model),
        }
        # A restarted run resumes from the last final version block.
        set_weights(task.model, driver.start(grid, get_weights(task.model), genesis_extra))
        num_rounds -= driver.round_offset
    initial = weights_to_arrays(get_weights(task.model))
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=max(num_rounds, 0),
        timeout=config.federation.timeout,
        train_config=node_config,
        evaluate_config=ConfigRecord(dict(node_config)),
        evaluate_fn=committer,
    )
    committer.progress.close()
    if committer.consensus is not None:
        committer.consensus.finish()
    # The committer loaded every evaluated global model into task.model, so it
    # now contains the final one (result.arrays is empty when no round aggregated).
    del result

    samples = write_outputs(config, task, folder)
    report = ledger.verify()
    ledger.close()
    # A resumed run reports on all its rounds, from every server session.
    rows = folder.read_metrics() or committer.history
    summary = {
        "rounds": config.train.rounds,
        "num_nodes": max((row["nodes"] for row in rows), default=0),
        "params": count_parameters(task.model),
        "initial_test_perplexity": rows[0]["test_perplexity"],
        "final_test_perplexity": rows[-1]["test_perplexity"],
        "final_test_bits_per_byte": rows[-1]["test_bits_per_byte"],
        "final_model_hash": rows[-1]["model_hash"],
        "committed_rounds": sum(1 for row in rows[1:] if row["committed"]),
        "ledger": {"url": ledger_url, "valid": report.valid, "head": report.head_hash},
        "data_source": task.data_source,
        "wall_seconds": time.perf_counter() - wall_started,
        "sample": samples[0]["text"] if samples else "",
    }
    folder.write_json("summary.json", summary)
    folder.plot_perplexity()
    write_run_report(folder.path)
    logger.info(
        "Finished %d rounds (%d in this session) in %.0f s: held-out perplexity"
        " %.1f -> %.1f; results in %s",
        rows[-1]["round"],
        len(committer.history) - 1,
        summary["wall_seconds"],
        summary["initial_test_perplexity"],
        summary["final_test_perplexity"],
        folder.path,
    )
    return summary
