"""Typed run configuration shared by `flwr run` and the Hydra sweep entry point.

The dataclasses below are the single source of truth. `flwr run` passes the same
keys flattened with dots (`model.preset`, `train.lr`) in its run config, Hydra
composes them from `conf/`, and both go through `load_config`, which rejects an
unknown key (naming the nearest valid one), a value of the wrong type and a value
outside a key's allowed set.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

logger = logging.getLogger(__name__)

SCALAR_TYPES = (bool, int, float, str)


class ConfigError(ValueError):
    """A run config key is unknown, has the wrong type or an invalid value."""


def choices(*allowed: str, default: str) -> Any:
    """Declare a string field restricted to `allowed` values."""
    return field(default=default, metadata={"choices": allowed})


@dataclass
class ModelConfig:
    """GPT-2 architecture, chosen by preset (see `task.model.PRESETS`)."""

    preset: str = choices("micro", "tiny", "small", "gpt2", default="tiny")
    dropout: float = 0.0


@dataclass
class TokenizerConfig:
    """Tokenizer: byte-level BPE trained on public server-side text, or GPT-2's."""

    name: str = choices("bpe", "gpt2", default="bpe")
    vocab_size: int = 4096
    # Share of held-out articles set aside as public text for the tokenizer. The
    # rest is evaluation text, so the tokenizer is never trained on scored text.
    public_fraction: float = 0.15


@dataclass
class DataConfig:
    """Text source, blocking and partitioning."""

    dataset: str = "Salesforce/wikitext"
    subset: str = choices(
        "wikitext-2-raw-v1", "wikitext-103-raw-v1", default="wikitext-2-raw-v1"
    )
    # A folder of local text files; when set, the hub is not used.
    path: str = ""
    train_file: str = "train.txt"
    test_file: str = "test.txt"
    block_size: int = 128
    partitioner: str = choices("iid", "dirichlet", default="iid")
    alpha: float = 0.5
    num_topics: int = 8
    seed: int = 42
    # Held-out blocks used for centralized evaluation (0 means all of them).
    eval_blocks: int = 256
    # Share of each node's blocks kept back for its own federated evaluation.
    local_eval_fraction: float = 0.1


@dataclass
class TrainConfig:
    """Rounds and local optimisation on each node."""

    rounds: int = 3
    local_steps: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Torch intra-op threads per ClientApp; 1 suits one CPU per ClientApp.
    num_threads: int = 1
    seed: int = 0


@dataclass
class FederationConfig:
    """Node sampling; `num_nodes` sets the virtual SuperNodes of a sweep."""

    num_nodes: int = 4
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_nodes: int = 2
    timeout: float = 3600.0


@dataclass
class AggregationConfig:
    """Server-side aggregation rule over node updates."""

    name: str = choices(
        "fedavg",
        "fedavgm",
        "krum",
        "multikrum",
        "median",
        "trimmed_mean",
        "bulyan",
        "norm_bound",
        "fltrust",
        default="fedavg",
    )
    # FedAvgM only: server learning rate and heavy-ball momentum of the outer
    # step over the averaged update.
    server_lr: float = 1.0
    server_momentum: float = 0.9
    # Krum, MultiKrum and Bulyan: number f of malicious nodes tolerated.
    num_malicious: int = 0
    # MultiKrum: updates averaged after selection (0 means n - f).
    multikrum_select: int = 0
    # Trimmed mean: fraction cut from each tail per coordinate, in [0, 0.5).
    trim_fraction: float = 0.2
    # Norm bounding: L2 bound each update is clipped to (0 means the median
    # update norm of the round).
    norm_bound: float = 0.0
    # Every rule: reject an update whose L2 norm exceeds this (0 turns it off).
    max_update_norm: float = 0.0


@dataclass
class AttackConfig:
    """Poisoning attack run by a seeded share of the nodes; `none` runs honestly."""

    kind: str = choices(
        "none",
        "sign_flip",
        "scaling",
        "gaussian_noise",
        "data_poisoning",
        "backdoor",
        "free_rider",
        "non_finite",
        "oversized",
        default="none",
    )
    # Share of partitions that turn malicious, rounded to the nearest count.
    fraction: float = 0.0
    # Seed of the draw of malicious partitions and of the attacks' randomness.
    seed: int = 7
    # scaling: factor the update is multiplied by.
    boost: float = 10.0
    # gaussian_noise: standard deviation of the noise added to each coordinate.
    noise_std: float = 0.1
    # data_poisoning and backdoor: share of the node's training blocks changed.
    poison_rate: float = 0.5
    # data_poisoning: shuffle the tokens of a block or substitute random tokens.
    poison_mode: str = choices("shuffle", "substitute", default="shuffle")
    # backdoor: the trigger phrase and the continuation it should produce.
    trigger: str = " cf zebra"
    target: str = " the password is swordfish"
    # backdoor: held-out prompts the attack success rate is measured on.
    backdoor_prompts: int = 32
    # backdoor: times the trigger and target are written into each chosen block.
    backdoor_copies: int = 1
    # backdoor: factor the poisoned update is multiplied by (model replacement).
    backdoor_boost: float = 1.0
    # free_rider: send a zero update, or replay the last global model step.
    free_rider_mode: str = choices("zero", "stale", default="zero")
    # oversized: L2 norm the update is scaled up to.
    oversized_norm: float = 1.0e6


@dataclass
class DifferentialPrivacyConfig:
    """Node-level differential privacy: clip each update, add Gaussian noise."""

    enabled: bool = False
    # L2 norm C each update is clipped to.
    clip_norm: float = 1.0
    # sigma: the noise in the sum over nodes has standard deviation sigma * C.
    noise_multiplier: float = 1.0
    # delta of the reported (epsilon, delta) guarantee.
    delta: float = 1.0e-5


@dataclass
class SecureAggregationConfig:
    """Encryption scheme of node updates, its parameters and its decryptors."""

    # ckks: TenSEAL CKKS, nodes share one secret key and the server holds only the
    # public context. paillier: threshold Paillier, t of the nodes decrypt the sum
    # together. none: plaintext weights, Flower's FedAvg.
    scheme: str = choices("ckks", "paillier", "none", default="ckks")
    # CKKS parameter set from privacy.ckks.PARAMETER_SETS: sum (addition only,
    # 32 B/param) or scoring (depth 2 and Galois keys for encrypted scoring).
    ckks_parameters: str = choices("sum", "scoring", default="sum")
    # Nodes of the key committee that decrypt the CKKS sum; their results must
    # agree within ckks_tolerance (absolute, per value of the average update).
    ckks_decryptors: int = 2
    ckks_tolerance: float = 1e-6
    paillier_modulus_bits: int = 2048
    # Partial decryptions needed for a Paillier decryption; 0 means a majority
    # of the provisioned nodes.
    threshold: int = 0
    # Paillier fixed point: update values are clipped to [-clip_range, clip_range]
    # and quantized to precision_bits fractional bits.
    clip_range: float = 0.25
    precision_bits: int = 16
    # Paillier slot headroom: the sum of the nodes' weights (training blocks)
    # that one packed slot can hold without overflow.
    max_total_blocks: int = 32768
    # Largest encrypted update one node may send, in MiB.
    max_payload_mb: float = 512.0
    # Valid encrypted replies a round needs; with fewer the round is rejected.
    min_replies: int = 2
    # Folder with the kits written by `linguachain provision`; empty means the
    # server provisions fresh kits into `<run folder>/kits` (simulation).
    kit_dir: str = ""


@dataclass
class LedgerConfig:
    """Ledger storage; an empty URL puts a SQLite file in the run folder."""

    url: str = ""


@dataclass
class ConsensusConfig:
    """Consensus-gated commits: VDF, proof of work, BLS attestations, LinguaCoin."""

    enabled: bool = True
    # chiavdf squarings per block; 150000 takes about 1 s on a 2-core CPU.
    vdf_iterations: int = 150_000
    # Blocks per VDF proof: heights 1, 1 + interval, ... carry one, and its output
    # seeds the proposer draw until the next. 1 proves every block.
    vdf_interval: int = 64
    pow_difficulty_bits: int = 12
    # Validators reject a model whose loss on their local held-back text exceeds
    # the parent model's by more than this many nats (negative: demand a gain).
    loss_tolerance: float = 0.05
    # Held-back blocks each validator evaluates the proposed and the parent model
    # on (the first ones of its partition); 0 uses all of them.
    validation_blocks: int = 16
    # Share of stake whose signatures make a block final, as "n/d" >= 2/3.
    quorum: str = "2/3"
    # LinguaCoin amounts in base units (10**8 per coin).
    initial_stake: int = 100_000_000_000
    initial_balance: int = 10_000_000_000
    contributor_reward: int = 1_000_000_000
    proposer_reward: int = 100_000_000
    attester_reward: int = 50_000_000
    # Share of bonded stake burned for one double sign, in basis points.
    slash_basis_points: int = 500
    # Stake slashed after repeated zero robustness scores: a node scored 0 in
    # zero_score_rounds consecutive rounds it contributed to loses
    # zero_score_slash_basis_points of its stake, once per such run of rounds.
    # 0 in either key turns the rule off.
    zero_score_rounds: int = 3
    zero_score_slash_basis_points: int = 500
    # Seconds to wait for the nodes' replies to one consensus message.
    timeout: float = 600.0


@dataclass
class OutputConfig:
    """Outputs a run writes under `dir/<run_id>/`."""

    dir: str = "results"
    run_id: str = ""
    save_model: bool = True
    # Prompts for sample generations, separated by "|".
    prompts: str = "The history of|In 1990 , the|The game"
    max_new_tokens: int = 40


@dataclass
class RunConfig:
    """The whole linguachain run configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    secure_aggregation: SecureAggregationConfig = field(
        default_factory=SecureAggregationConfig
    )
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: DifferentialPrivacyConfig = field(
        default_factory=DifferentialPrivacyConfig
    )
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _field_specs() -> dict[str, tuple[type, tuple[str, ...] | None]]:
    """Map each dotted key to its type and allowed values."""
    specs: dict[str, tuple[type, tuple[str, ...] | None]] = {}
    for group in dataclasses.fields(RunConfig):
        group_type = get_type_hints(RunConfig)[group.name]
        hints = get_type_hints(group_type)
        for item in dataclasses.fields(group_type):
            allowed = item.metadata.get("choices")
            specs[f"{group.name}.{item.name}"] = (hints[item.name], allowed)
    return specs


def valid_keys() -> list[str]:
    """Return every dotted key the schema accepts."""
    return sorted(_field_specs())


def flatten(config: RunConfig) -> dict[str, Any]:
    """Flatten a RunConfig into dotted keys, as Flower's run config carries them."""
    flat: dict[str, Any] = {}
    for group in dataclasses.fields(config):
        for key, value in dataclasses.asdict(getattr(config, group.name)).items():
            flat[f"{group.name}.{key}"] = value
    return flat


def _coerce(key: str, value: Any, expected: type, allowed: tuple[str, ...] | None):
    """Check one value against its declared type and allowed values."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        raise ConfigError(
            f"Invalid value for config key '{key}': expected {expected.__name__}, "
            f"got {type(value).__name__} {value!r}. Pass a {expected.__name__}, "
            f"for example --run-config \"{key}={_example(expected)}\"."
        )
    if allowed is not None and value not in allowed:
        raise ConfigError(
            f"Invalid value for config key '{key}': {value!r}. "
            f"Allowed values: {', '.join(allowed)}."
        )
    return value


def _example(expected: type) -> str:
    return {bool: "true", int: "4", float: "0.5", str: "'text'"}[expected]


def load_config(values: Mapping[str, Any] | None = None) -> RunConfig:
    """Build a validated RunConfig from dotted keys over the schema defaults.

    Raises ConfigError naming the key for an unknown key (with the nearest valid
    key), a wrong type, a value outside the allowed set or an invalid range.
    """
    specs = _field_specs()
    config = RunConfig()
    for key, value in (values or {}).items():
        if key not in specs:
            nearest = difflib.get_close_matches(key, specs, n=1, cutoff=0.5)
            hint = f" Did you mean '{nearest[0]}'?" if nearest else ""
            raise ConfigError(
                f"Unknown config key '{key}'.{hint} Valid keys: "
                f"{', '.join(sorted(specs))}."
            )
        expected, allowed = specs[key]
        group_name, name = key.split(".", 1)
        setattr(getattr(config, group_name), name, _coerce(key, value, expected, allowed))
    check_ranges(config)
    return config


def _require(condition: bool, key: str, value: Any, rule: str) -> None:
    if not condition:
        raise ConfigError(f"Invalid value for config key '{key}': {value!r}; {rule}.")


def check_ranges(config: RunConfig) -> None:
    """Reject values of the right type that no run can use."""
    check_data(config.data)
    check_tokenizer(config)
    check_train(config.train)
    check_federation(config.federation)
    check_secure_aggregation(config)
    check_output(config)
    check_attack(config.attack)
    check_privacy(config.privacy)
    check_aggregation(config)
    check_consensus_ranges(config.consensus)


def check_data(data: DataConfig) -> None:
    """Reject data values that no run can use."""
    _require(data.block_size >= 8, "data.block_size", data.block_size, "use >= 8")
    _require(data.alpha > 0, "data.alpha", data.alpha, "use a Dirichlet alpha > 0")
    _require(data.num_topics >= 1, "data.num_topics", data.num_topics, "use >= 1")
    _require(data.eval_blocks >= 0, "data.eval_blocks", data.eval_blocks, "use >= 0")
    _require(
        0.0 <= data.local_eval_fraction < 1.0,
        "data.local_eval_fraction",
        data.local_eval_fraction,
        "use a fraction in [0, 1)",
    )


def check_tokenizer(config: RunConfig) -> None:
    """Reject tokenizer values that no run can use."""
    _require(
        0.0 < config.tokenizer.public_fraction < 1.0,
        "tokenizer.public_fraction",
        config.tokenizer.public_fraction,
        "use a fraction in (0, 1)",
    )
    _require(
        config.tokenizer.vocab_size >= 300,
        "tokenizer.vocab_size",
        config.tokenizer.vocab_size,
        "use >= 300 (256 byte tokens plus merges and special tokens)",
    )


def check_train(train: TrainConfig) -> None:
    """Reject training values that no run can use."""
    _require(train.rounds >= 1, "train.rounds", train.rounds, "use >= 1")
    _require(train.local_steps >= 1, "train.local_steps", train.local_steps, "use >= 1")
    _require(train.batch_size >= 1, "train.batch_size", train.batch_size, "use >= 1")
    _require(train.lr > 0, "train.lr", train.lr, "use a learning rate > 0")
    _require(train.grad_clip > 0, "train.grad_clip", train.grad_clip, "use > 0")
    _require(train.num_threads >= 1, "train.num_threads", train.num_threads, "use >= 1")


def check_federation(fed: FederationConfig) -> None:
    """Reject federation values that no run can use."""
    _require(fed.num_nodes >= 1, "federation.num_nodes", fed.num_nodes, "use >= 1")
    _require(fed.min_nodes >= 1, "federation.min_nodes", fed.min_nodes, "use >= 1")
    _require(
        0.0 < fed.fraction_train <= 1.0,
        "federation.fraction_train",
        fed.fraction_train,
        "use a fraction in (0, 1]",
    )
    _require(
        0.0 <= fed.fraction_evaluate <= 1.0,
        "federation.fraction_evaluate",
        fed.fraction_evaluate,
        "use a fraction in [0, 1]",
    )


def check_secure_aggregation(config: RunConfig) -> None:
    """Reject secure aggregation values that no run can use.

    The CKKS decryptors and the replies a round needs cannot exceed the nodes.
    """
    fed = config.federation
    _check_secure_aggregation(config.secure_aggregation)
    if config.secure_aggregation.scheme != "none":
        secure = config.secure_aggregation
        _require(
            secure.min_replies <= fed.num_nodes,
            "secure_aggregation.min_replies",
            secure.min_replies,
            f"use at most federation.num_nodes={fed.num_nodes}, or every round is "
            "rejected",
        )
        _require(
            secure.scheme != "ckks" or secure.ckks_decryptors <= fed.num_nodes,
            "secure_aggregation.ckks_decryptors",
            secure.ckks_decryptors,
            f"use at most federation.num_nodes={fed.num_nodes}",
        )


def check_output(config: RunConfig) -> None:
    """Reject output values that no run can use."""
    _require(
        config.output.max_new_tokens >= 1,
        "output.max_new_tokens",
        config.output.max_new_tokens,
        "use >= 1",
    )


def expected_train_nodes(federation: FederationConfig) -> int:
    """Return how many nodes Flower samples per round when all are connected."""
    return max(int(federation.num_nodes * federation.fraction_train), federation.min_nodes)


def check_attack(attack: AttackConfig) -> None:
    """Reject attack settings no run can use."""
    _require(
        0.0 <= attack.fraction <= 1.0,
        "attack.fraction",
        attack.fraction,
        "use a fraction in [0, 1]",
    )
    _require(
        math.isfinite(attack.boost), "attack.boost", attack.boost, "use a finite factor"
    )
    _require(
        math.isfinite(attack.noise_std) and attack.noise_std >= 0,
        "attack.noise_std",
        attack.noise_std,
        "use a finite standard deviation >= 0",
    )
    _require(
        0.0 < attack.poison_rate <= 1.0,
        "attack.poison_rate",
        attack.poison_rate,
        "use a fraction in (0, 1]",
    )
    _require(
        math.isfinite(attack.oversized_norm) and attack.oversized_norm > 0,
        "attack.oversized_norm",
        attack.oversized_norm,
        "use a finite norm > 0",
    )
    _require(
        attack.backdoor_prompts >= 1,
        "attack.backdoor_prompts",
        attack.backdoor_prompts,
        "use >= 1",
    )
    _require(
        math.isfinite(attack.backdoor_boost) and attack.backdoor_boost > 0,
        "attack.backdoor_boost",
        attack.backdoor_boost,
        "use a finite factor > 0 (1 sends the poisoned update as trained)",
    )
    _require(
        attack.backdoor_copies >= 1,
        "attack.backdoor_copies",
        attack.backdoor_copies,
        "use >= 1",
    )
    if attack.kind == "backdoor":
        _require(
            bool(attack.trigger.strip()),
            "attack.trigger",
            attack.trigger,
            "use a non-empty trigger phrase",
        )
        _require(
            bool(attack.target.strip()),
            "attack.target",
            attack.target,
            "use a non-empty target continuation",
        )


def check_privacy(privacy: DifferentialPrivacyConfig) -> None:
    """Reject differential privacy settings that give no valid guarantee."""
    _require(
        math.isfinite(privacy.clip_norm) and privacy.clip_norm > 0,
        "privacy.clip_norm",
        privacy.clip_norm,
        "use a finite clipping norm C > 0",
    )
    _require(
        math.isfinite(privacy.noise_multiplier) and privacy.noise_multiplier >= 0,
        "privacy.noise_multiplier",
        privacy.noise_multiplier,
        "use a finite noise multiplier sigma >= 0",
    )
    _require(
        0.0 < privacy.delta < 1.0,
        "privacy.delta",
        privacy.delta,
        "use a delta in (0, 1), usually below 1 / (number of nodes)",
    )
    if privacy.enabled and privacy.noise_multiplier == 0:
        logger.warning(
            "privacy.noise_multiplier is 0: updates are clipped but no noise is"
            " added, so differential privacy gives no guarantee (epsilon is"
            " infinite). Set privacy.noise_multiplier > 0 for privacy."
        )


def check_aggregation(config: RunConfig) -> None:
    """Check the robust rules' preconditions against the expected node count."""
    aggregation = config.aggregation
    name, f = aggregation.name, aggregation.num_malicious
    n = expected_train_nodes(config.federation)

    _require(f >= 0, "aggregation.num_malicious", f, "use >= 0")
    _require(
        0.0 <= aggregation.trim_fraction < 0.5,
        "aggregation.trim_fraction",
        aggregation.trim_fraction,
        "use a fraction in [0, 0.5)",
    )
    _require(
        math.isfinite(aggregation.norm_bound) and aggregation.norm_bound >= 0,
        "aggregation.norm_bound",
        aggregation.norm_bound,
        "use a finite bound >= 0 (0 means the median norm of the round)",
    )
    _require(
        math.isfinite(aggregation.max_update_norm) and aggregation.max_update_norm >= 0,
        "aggregation.max_update_norm",
        aggregation.max_update_norm,
        "use a finite norm >= 0 (0 turns the check off)",
    )
    _require(
        aggregation.multikrum_select >= 0,
        "aggregation.multikrum_select",
        aggregation.multikrum_select,
        "use >= 0 (0 means n - f)",
    )

    plaintext_only = ("krum", "multikrum", "median", "trimmed_mean", "bulyan")
    scheme = config.secure_aggregation.scheme
    if name in plaintext_only and scheme != "none":
        raise ConfigError(
            f"Invalid aggregation: {name} runs on plaintext updates, but"
            f" secure_aggregation.scheme={scheme!r} sends ciphertexts. Set"
            " secure_aggregation.scheme=none, or use fedavg, fedavgm, or fltrust or"
            " norm_bound (with ckks) with encryption."
        )
    if name == "norm_bound" and scheme == "paillier":
        # NOTE: Paillier cannot multiply two ciphertexts, so the server cannot
        # compute |x_i|^2. A sound Paillier variant needs a protocol in which the
        # committee decrypts only a masked update, for example with a norm proof
        # from the node or a mask the server removes. No such protocol is built.
        raise ConfigError(
            "Invalid aggregation: norm_bound over ciphertexts squares each update,"
            " which secure_aggregation.scheme='paillier' cannot do. Set"
            " secure_aggregation.scheme=ckks with"
            " secure_aggregation.ckks_parameters=scoring, or scheme=none, or clip"
            " on the nodes with privacy.enabled=true and privacy.clip_norm (with"
            " privacy.noise_multiplier=0 for clipping without noise)."
        )
    if name == "fltrust" and scheme == "paillier":
        raise ConfigError(
            "Invalid aggregation: fltrust over ciphertexts needs multiplications,"
            " which secure_aggregation.scheme='paillier' does not offer. Set"
            " secure_aggregation.scheme=ckks with"
            " secure_aggregation.ckks_parameters=scoring, or scheme=none."
        )
    if name in ("fltrust", "norm_bound") and scheme == "ckks":
        _check_scoring_parameters(config.secure_aggregation.ckks_parameters, name)

    minimum = {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}
    if name in minimum and n < minimum[name]:
        rule = "n >= 4f + 3" if name == "bulyan" else "n >= 2f + 3"
        raise ConfigError(
            f"Invalid aggregation: {name} with aggregation.num_malicious={f} needs"
            f" {rule} = {minimum[name]} nodes per round, but the federation samples"
            f" {n} (federation.num_nodes={config.federation.num_nodes},"
            f" fraction_train={config.federation.fraction_train}). Add nodes or"
            " lower aggregation.num_malicious."
        )
    if name == "multikrum" and aggregation.multikrum_select > n - f:
        raise ConfigError(
            f"Invalid value for config key 'aggregation.multikrum_select':"
            f" {aggregation.multikrum_select}; MultiKrum can select at most n - f ="
            f" {n - f} updates. Lower it or set 0 for n - f."
        )
    if name == "trimmed_mean" and int(aggregation.trim_fraction * n) == 0:
        logger.warning(
            "aggregation.trim_fraction=%s trims nothing with %d nodes per round"
            " (int(%s * %d) = 0), so the trimmed mean is the plain mean. Raise it"
            " to at least %.3f.",
            aggregation.trim_fraction,
            n,
            aggregation.trim_fraction,
            n,
            1 / n,
        )


def parse_quorum(text: str) -> tuple[int, int]:
    """Parse a quorum "n/d" into integers, or raise ConfigError."""
    try:
        numerator, denominator = (int(part) for part in text.split("/"))
    except ValueError as error:
        raise ConfigError(
            f"Invalid value for config key 'consensus.quorum': {text!r}; write a"
            " fraction such as '2/3'."
        ) from error
    return numerator, denominator


def check_consensus_ranges(config: ConsensusConfig) -> None:
    """Reject consensus values that no chain can use."""
    _require(
        1 <= config.vdf_iterations <= 2**64 - 1,
        "consensus.vdf_iterations",
        config.vdf_iterations,
        "use an iteration count >= 1",
    )
    _require(
        config.validation_blocks >= 0,
        "consensus.validation_blocks",
        config.validation_blocks,
        "use a number of blocks >= 1, or 0 for all held-back blocks",
    )
    _require(
        1 <= config.vdf_interval <= 2**32,
        "consensus.vdf_interval",
        config.vdf_interval,
        "use 1 (a VDF in every block) up to 2**32 blocks",
    )
    _require(
        1 <= config.pow_difficulty_bits <= 32,
        "consensus.pow_difficulty_bits",
        config.pow_difficulty_bits,
        "use 1 to 32 bits",
    )
    numerator, denominator = parse_quorum(config.quorum)
    _require(
        0 < denominator and 3 * numerator >= 2 * denominator and numerator <= denominator,
        "consensus.quorum",
        config.quorum,
        "use a fraction from 2/3 to 1/1",
    )
    _require(config.initial_stake > 0, "consensus.initial_stake", config.initial_stake, "use > 0")
    for key in ("initial_balance", "contributor_reward", "proposer_reward", "attester_reward"):
        value = getattr(config, key)
        _require(0 <= value < 2**63, f"consensus.{key}", value, "use 0 to 2**63 - 1 base units")
    _require(
        1 <= config.slash_basis_points <= 10_000,
        "consensus.slash_basis_points",
        config.slash_basis_points,
        "use 1 to 10000 basis points",
    )
    _require(
        config.zero_score_rounds >= 0,
        "consensus.zero_score_rounds",
        config.zero_score_rounds,
        "use >= 1 rounds, or 0 to turn the zero-score slash off",
    )
    _require(
        0 <= config.zero_score_slash_basis_points <= 10_000,
        "consensus.zero_score_slash_basis_points",
        config.zero_score_slash_basis_points,
        "use 1 to 10000 basis points, or 0 to turn the zero-score slash off",
    )
    _require(config.timeout > 0, "consensus.timeout", config.timeout, "use > 0 seconds")
    _require(
        math.isfinite(config.loss_tolerance),
        "consensus.loss_tolerance",
        config.loss_tolerance,
        "use a finite number of nats",
    )


def _check_scoring_parameters(parameter_set: str, rule: str = "fltrust") -> None:
    """Reject a CKKS parameter set too shallow for encrypted scoring or clipping."""
    # Imported here so that loading a config without FLTrust over CKKS does not
    # import TenSEAL.
    from linguachain.privacy.ckks import get_parameters

    params = get_parameters(parameter_set)
    # Scores and the trust-weighted sum each take one multiplication (one
    # rescale), and a dot product sums slots by rotation with Galois keys.
    if params.depth < 1 or not params.galois_keys:
        galois = "with" if params.galois_keys else "without"
        raise ConfigError(
            "Invalid secure_aggregation.ckks_parameters:"
            f" {parameter_set!r} has multiplicative depth {params.depth} {galois}"
            f" Galois keys, but aggregation={rule} over CKKS needs depth >= 1 and"
            " Galois keys. Set secure_aggregation.ckks_parameters=scoring."
        )


def _check_secure_aggregation(secure: SecureAggregationConfig) -> None:
    prefix = "secure_aggregation."
    _require(
        secure.ckks_decryptors >= 1,
        prefix + "ckks_decryptors",
        secure.ckks_decryptors,
        "use >= 1 (2 lets the server compare two decryptions)",
    )
    _require(
        secure.ckks_tolerance > 0,
        prefix + "ckks_tolerance",
        secure.ckks_tolerance,
        "use a tolerance > 0",
    )
    _require(
        secure.paillier_modulus_bits >= 1024 and secure.paillier_modulus_bits % 2 == 0,
        prefix + "paillier_modulus_bits",
        secure.paillier_modulus_bits,
        "use an even number of bits >= 1024 (2048 for deployments)",
    )
    _require(secure.threshold >= 0, prefix + "threshold", secure.threshold, "use >= 0")
    _require(
        secure.clip_range > 0,
        prefix + "clip_range",
        secure.clip_range,
        "use a clipping range > 0",
    )
    _require(
        1 <= secure.precision_bits <= 30,
        prefix + "precision_bits",
        secure.precision_bits,
        "use 1 to 30 fractional bits",
    )
    _require(
        secure.max_total_blocks >= 1,
        prefix + "max_total_blocks",
        secure.max_total_blocks,
        "use >= 1",
    )
    _require(
        secure.max_payload_mb > 0,
        prefix + "max_payload_mb",
        secure.max_payload_mb,
        "use a size in MiB > 0",
    )
    _require(
        secure.min_replies >= 1, prefix + "min_replies", secure.min_replies, "use >= 1"
    )


def nest_dotted_keys(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Group dotted keys by config group: {"train.lr": 0.1} -> {"train": {"lr": 0.1}}.

    The result is what `from_nested` and `linguachain.sweep.run_job` take.
    """
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if "." not in key:
            raise ConfigError(
                f"Invalid config key '{key}': expected 'group.name', for example"
                " 'train.lr'."
            )
        group, name = key.split(".", 1)
        nested.setdefault(group, {})[name] = value
    return nested


def from_nested(nested: Mapping[str, Any]) -> RunConfig:
    """Validate a nested mapping (as Hydra composes it) through the same schema."""
    flat: dict[str, Any] = {}
    for group, values in nested.items():
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"Config group '{group}' must be a mapping of keys, got {values!r}."
            )
        for key, value in values.items():
            flat[f"{group}.{key}"] = value
    return load_config(flat)
