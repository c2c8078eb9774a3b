"""The hash-chained ledger: appending blocks and verifying the whole chain.

Each block's hash is the SHA-256 of the canonical JSON of its header (height,
parent hash, kind, timestamp, proposer, SHA-256 of the payload, consensus
evidence). Every block is written in one database transaction, together with
any rows derived from it, so a crash never leaves half a block.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from linguachain.ledger.hashing import canonical_json, hash_json
from linguachain.ledger.models import Base, Block, ModelVersion

logger = logging.getLogger(__name__)

GENESIS_PARENT_HASH = "0" * 64
BLOCK_KINDS = ("genesis", "data", "version", "transaction")
SQLITE_BUSY_TIMEOUT_MS = 30_000


class InvalidBlockError(ValueError):
    """A block breaks a chain rule; names the height and the rule."""

    def __init__(self, height: int, rule: str, detail: str) -> None:
        super().__init__(f"Block {height} breaks rule '{rule}': {detail}")
        self.height = height
        self.rule = rule
        self.detail = detail


@dataclass
class VerifyReport:
    """Outcome of replaying the chain: valid, or the first invalid block."""

    valid: bool
    num_blocks: int
    head_hash: str
    height: int | None = None
    rule: str | None = None
    detail: str | None = None

    def __str__(self) -> str:
        if self.valid:
            return f"valid: {self.num_blocks} blocks, head {self.head_hash}"
        return (
            f"INVALID at block {self.height}: rule '{self.rule}' broken: {self.detail}"
        )


def block_header(block: Block) -> dict[str, Any]:
    """Return the fields a block's hash covers."""
    return {
        "height": block.height,
        "parent_hash": block.parent_hash,
        "kind": block.kind,
        "timestamp": block.timestamp,
        "proposer": block.proposer or "",
        "payload_sha256": hashlib.sha256(block.payload.encode("utf-8")).hexdigest(),
        "vdf_output": (block.vdf_output or b"").hex(),
        "vdf_proof": (block.vdf_proof or b"").hex(),
        "pow_nonce": block.pow_nonce or 0,
    }


def compute_block_hash(block: Block) -> str:
    """Return the SHA-256 hex digest of the block's canonical header."""
    return hash_json(block_header(block))


def sqlite_url(path: str | Path) -> str:
    """Return the SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


class Ledger:
    """One node's copy of the chain in a SQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            _configure_sqlite(self.engine)
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, path_or_url: str | Path) -> "Ledger":
        """Open a ledger from a database URL or a SQLite file path."""
        text = str(path_or_url)
        return cls(text if "://" in text else sqlite_url(text))

    def close(self) -> None:
        """Release connections; SQLite checkpoints its write-ahead log here."""
        self.engine.dispose()

    def head(self) -> Block | None:
        """Return the block with the greatest height, or None for an empty chain."""
        with self.sessions() as session:
            return session.scalars(
                select(Block).order_by(Block.height.desc()).limit(1)
            ).first()

    def blocks(self) -> Iterator[Block]:
        """Yield every block in height order."""
        with self.sessions() as session:
            yield from session.scalars(select(Block).order_by(Block.height))

    def model_versions(self) -> list[ModelVersion]:
        """Return committed model versions in round order."""
        with self.sessions() as session:
            return list(
                session.scalars(select(ModelVersion).order_by(ModelVersion.round))
            )

    def _new_block(
        self, session: Session, kind: str, payload: dict[str, Any], proposer: str
    ) -> Block:
        if kind not in BLOCK_KINDS:
            raise ValueError(f"Unknown block kind {kind!r}; use one of {BLOCK_KINDS}.")
        parent = session.scalars(
            select(Block).order_by(Block.height.desc()).limit(1)
        ).first()
        if parent is None and kind != "genesis":
            raise ValueError("The chain is empty: append a genesis block first.")
        if parent is not None and kind == "genesis":
            raise ValueError(f"The chain already has a genesis block ({parent.hash}).")
        block = Block(
            height=0 if parent is None else parent.height + 1,
            parent_hash=GENESIS_PARENT_HASH if parent is None else parent.hash,
            kind=kind,
            timestamp=int(time.time()),
            proposer=proposer,
            payload=canonical_json(payload).decode("ascii"),
            vdf_output=b"",
            vdf_proof=b"",
            pow_nonce=0,
        )
        block.hash = compute_block_hash(block)
        session.add(block)
        return block

    def append_block(
        self, kind: str, payload: dict[str, Any], proposer: str = ""
    ) -> Block:
        """Append one block on top of the head, in one transaction."""
        with self.sessions.begin() as session:
            block = self._new_block(session, kind, payload, proposer)
        logger.info("Appended %s block %d (%s)", kind, block.height, block.hash[:12])
        return block

    def commit_version(
        self,
        server_round: int,
        model_hash: str,
        parent_model_hash: str,
        metrics: dict[str, Any],
        weights_path: str = "",
    ) -> Block:
        """Append a version block and its model version row in one transaction."""
        payload = {
            "round": server_round,
            "model_hash": model_hash,
            "parent_model_hash": parent_model_hash,
            "metrics": metrics,
        }
        with self.sessions.begin() as session:
            block = self._new_block(session, "version", payload, proposer="")
            session.flush()
            session.add(
                ModelVersion(
                    round=server_round,
                    model_hash=model_hash,
                    parent_hash=parent_model_hash,
                    block_height=block.height,
                    metrics=canonical_json(metrics).decode("ascii"),
                    weights_path=weights_path,
                )
            )
        logger.info(
            "Committed model %s of round %d in block %d",
            model_hash[:12],
            server_round,
            block.height,
        )
        return block

    def verify(self) -> VerifyReport:
        """Replay the chain and report the first block that breaks a rule."""
        count = 0
        head_hash = GENESIS_PARENT_HASH
        try:
            versions = {v.block_height: v for v in self.model_versions()}
            previous: Block | None = None
            last_model_hash: str | None = None
            version_heights: set[int] = set()
            for block in self.blocks():
                last_model_hash = check_block(
                    block, previous, versions, last_model_hash
                )
                if block.kind == "version":
                    version_heights.add(block.height)
                previous = block
                head_hash = block.hash
                count += 1
        except InvalidBlockError as error:
            return VerifyReport(
                False, count, head_hash, error.height, error.rule, error.detail
            )
        except DatabaseError as error:
            return VerifyReport(
                False, count, head_hash, count, "readable-database", str(error.orig)
            )
        if count == 0:
            return VerifyReport(False, 0, head_hash, 0, "genesis", "the chain is empty")
        orphans = set(versions) - version_heights
        if orphans:
            return VerifyReport(
                False,
                count,
                head_hash,
                min(orphans),
                "model-version",
                "a model version row points at a block that is not a version block",
            )
        return VerifyReport(True, count, head_hash)


def check_block(
    block: Block,
    previous: Block | None,
    versions: dict[int, ModelVersion],
    last_model_hash: str | None,
) -> str | None:
    """Check one block against its parent; return the model hash now committed."""
    height = block.height
    expected_height = 0 if previous is None else previous.height + 1
    if height != expected_height:
        raise InvalidBlockError(height, "height", f"expected height {expected_height}")
    expected_parent = GENESIS_PARENT_HASH if previous is None else previous.hash
    if block.parent_hash != expected_parent:
        raise InvalidBlockError(
            height, "parent-link", f"parent {block.parent_hash} != {expected_parent}"
        )
    if block.kind not in BLOCK_KINDS or (block.kind == "genesis") != (previous is None):
        raise InvalidBlockError(height, "block-kind", f"kind {block.kind!r} here")
    recomputed = compute_block_hash(block)
    if block.hash != recomputed:
        raise InvalidBlockError(
            height, "block-hash", f"stored {block.hash}, recomputed {recomputed}"
        )
    try:
        payload = json.loads(block.payload)
    except json.JSONDecodeError as error:
        raise InvalidBlockError(height, "payload-json", str(error)) from error

    if block.kind == "genesis":
        return payload.get("model_hash")
    if block.kind != "version":
        return last_model_hash
    version = versions.get(height)
    if version is None:
        raise InvalidBlockError(height, "model-version", "no model version row")
    stored = {
        "round": version.round,
        "model_hash": version.model_hash,
        "parent_model_hash": version.parent_hash,
        "metrics": json.loads(version.metrics),
    }
    if canonical_json(stored) != canonical_json(payload):
        raise InvalidBlockError(
            height, "model-version", "model version row differs from the block"
        )
    if payload["parent_model_hash"] != last_model_hash:
        raise InvalidBlockError(
            height,
            "model-parent",
            f"parent model {payload['parent_model_hash']} != committed"
            f" {last_model_hash}",
        )
    return payload["model_hash"]
