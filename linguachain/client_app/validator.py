"""A node's consensus role: its own ledger copy, proposing, voting and signing.

Every query message carries the final blocks the node lacks. The node checks
each one against its own copy (all chain rules, BLS included) before appending
it, so a node never trusts the server's chain.

The node's BLS key is, in order: the node config's `bls-key`; the `bls_key.json`
of its kit (node config `kit-path`, else `<secure_aggregation.kit_dir>/node-<i>`);
else `<run>/nodes/node-<i>/bls_key.json` (simulation without kits). Its ledger
replica is the node config's `ledger-url` (a SQLite path or a database URL),
else `<run>/nodes/node-<i>/ledger.db`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict

from linguachain.client_app.model_check import (
    LOSS_CACHE,
    LossFn,
    ParentMissingError,
    cache_committed_loss,
    cached_models,
    check_model,
    proposal_weights_hash,
)
from linguachain.client_app.node_config import read_node_config
from linguachain.client_app.secure_update import decrypted_average_path
from linguachain.ledger.chain import ChainConflictError, InvalidBlockError, Ledger
from linguachain.ledger.consensus import (
    block_from_dict,
    block_to_dict,
    blocks_from_json,
    prove_block,
    sign_block,
    validate_proposal,
)
from linguachain.ledger.keys import BLS_KEY_FILE, ValidatorKey, read_validator_key
from linguachain.ledger.models import Block
from linguachain.strategies.consensus import (
    CONSENSUS_RECORD,
    NODE_DIR_PREFIX,
    PARENT_RECORD,
    node_dir,
)

logger = logging.getLogger(__name__)

KIT_DIR_KEY = "secure_aggregation.kit_dir"


def _paths(msg: Message, context: Context) -> tuple[Path, str]:
    """Return this node's BLS key file and the path or URL of its ledger replica."""
    node = read_node_config(context.node_config)
    record = msg.content[CONSENSUS_RECORD]
    folder = node_dir(Path(str(record["nodes-dir"])), node.partition_id)
    ledger_url = node.ledger_url or str(folder / "ledger.db")
    if "://" not in ledger_url:
        ledger_url = str(Path(ledger_url).expanduser())
    if node.bls_key:
        return Path(node.bls_key).expanduser(), ledger_url
    kit = _kit_folder(msg, context)
    if kit is not None and (kit / BLS_KEY_FILE).is_file():
        return kit / BLS_KEY_FILE, ledger_url
    return folder / BLS_KEY_FILE, ledger_url


def _kit_folder(msg: Message, context: Context) -> Path | None:
    """Return this node's kit folder: node config `kit-path`, else under the run's."""
    node = read_node_config(context.node_config)
    if node.kit_path:
        return Path(node.kit_path).expanduser()
    if "config" in msg.content:
        kit_dir = str(msg.content["config"].get(KIT_DIR_KEY, ""))
        if kit_dir:
            return Path(kit_dir) / f"{NODE_DIR_PREFIX}{node.partition_id}"
    return None


def sync_blocks(ledger: Ledger, blocks: list[Block]) -> None:
    """Append the blocks this copy lacks, each checked against the copy first."""
    head = ledger.head()
    for block in blocks:
        if head is not None and block.height <= head.height:
            stored = ledger.block_at(block.height)
            if stored is None or stored.hash != block.hash:
                raise InvalidBlockError(
                    block.height, "fork", "the server's block differs from this copy"
                )
            continue
        ledger.append(block)
        head = block


def handle_query(
    msg: Message, context: Context, action: str, model_loss: LossFn, tolerance: float
) -> Message:
    """Run one consensus action on this node and reply with its result."""
    key_path, ledger_url = _paths(msg, context)
    key = read_validator_key(key_path)
    if "://" not in ledger_url:
        Path(ledger_url).parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(ledger_url)
    try:
        record = msg.content[CONSENSUS_RECORD]
        sync_blocks(ledger, blocks_from_json(str(record["blocks"])))
        result: dict[str, object] = {}
        if action == "propose":
            result = _propose(ledger, key, record)
        elif action == "validate":
            result = _vote(
                ledger, key, ledger_url, msg, context, record, model_loss, tolerance
            )
        elif action == "sign":
            result = _sign(ledger, key, record)
        elif action == "append" and PARENT_RECORD in msg.content:
            cache_committed_loss(ledger, key, ledger_url, msg, context, model_loss)
        head = ledger.head()
        result.update({
            "account": key.account,
            "head": head.height if head else -1,
            "losses": json.dumps(cached_models(msg, ledger_url)),
            "weights": proposal_weights_hash(ledger_url),
        })
    finally:
        ledger.close()
    return Message(RecordDict({CONSENSUS_RECORD: ConfigRecord(result)}), reply_to=msg)


def _proposal(record: ConfigRecord) -> Block:
    return block_from_dict(json.loads(str(record["proposal"]))[0])


def _propose(ledger: Ledger, key: ValidatorKey, record: ConfigRecord) -> dict[str, object]:
    template = _proposal(record)
    if template.proposer != key.account:
        raise ValueError("this node is not the drawn proposer of the block")
    started = time.perf_counter()
    proved = prove_block(template, ledger.context())
    logger.info("Proved block %d in %.2f s", proved.height, time.perf_counter() - started)
    return {"block": json.dumps(block_to_dict(proved))}


def _vote(
    ledger: Ledger,
    key: ValidatorKey,
    ledger_url: str,
    msg: Message,
    context: Context,
    record: ConfigRecord,
    model_loss: LossFn,
    tolerance: float,
) -> dict[str, object]:
    block = _proposal(record)
    chain = ledger.context()
    try:
        validate_proposal(chain, block)
        if block.kind == "version":
            cache = None if "://" in ledger_url else Path(ledger_url).with_name(LOSS_CACHE)
            kit = _kit_folder(msg, context)
            decrypted = None if kit is None else decrypted_average_path(kit, context.run_id)
            check_model(
                msg, context, block, chain.model_hash, model_loss, tolerance, cache,
                decrypted,
            )
    except ParentMissingError as error:
        logger.info("Block %d: %s", block.height, error)
        return {"accept": False, "reason": str(error), "need-parent": True}
    except (InvalidBlockError, ValueError) as error:
        logger.warning("Rejected block %d: %s", block.height, error)
        return {"accept": False, "reason": str(error)}
    ledger.record_approval(block.height, block.hash)
    if record.get("sign") == "yes":
        # The server requests the signature with the vote for blocks that need
        # no judgement by validators (every kind but version blocks).
        try:
            signature = _sign_approved(ledger, key, block)
        except ValueError as error:
            logger.warning("Signing block %d failed: %s", block.height, error)
            return {"accept": False, "reason": str(error)}
        return {"accept": True, "reason": "", **signature}
    return {"accept": True, "reason": ""}


def _sign(ledger: Ledger, key: ValidatorKey, record: ConfigRecord) -> dict[str, object]:
    block = _proposal(record)
    validate_proposal(ledger.context(), block)
    return _sign_approved(ledger, key, block)


def _sign_approved(ledger: Ledger, key: ValidatorKey, block: Block) -> dict[str, object]:
    """Sign a block this node voted for, unless it signed another at that height."""
    if not ledger.is_approved(block.hash):
        raise ValueError(f"block {block.height} was not approved by this node's vote")
    if not ledger.record_signature(block.height, block.hash):
        raise ValueError(
            f"already signed another block at height {block.height}; refusing to"
            " double sign"
        )
    return {"signature": sign_block(key, block).hex()}


__all__ = ["ChainConflictError", "handle_query", "sync_blocks"]
