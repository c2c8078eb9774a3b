"""The hash-chained ledger: storing blocks, appending checked blocks, verifying.

Each block's hash is the SHA-256 of the canonical JSON of its header (see
`rules.block_header`). Every block is written in one database transaction,
together with the rows derived from it (transactions, attestations, model
versions, accounts, chain state), so a crash never leaves half a block. Before a
block is written, `ledger.rules.process_block` checks it against the state after
the current head. `verify` replays every block from genesis with the same rules
and compares the derived rows.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, event, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linguachain.ledger import bls
from linguachain.ledger.hashing import canonical_json
from linguachain.ledger.models import (
    Account,
    Approval,
    AttestationRow,
    Base,
    Block,
    ChainState,
    MempoolEntry,
    ModelVersion,
    SignedHeight,
    TransactionRow,
)
from linguachain.ledger.rules import (
    BLOCK_KINDS,
    GENESIS_PARENT_HASH,
    ChainContext,
    ConsensusParams,
    InvalidBlockError,
    DeferredChecks,
    block_header,
    compute_block_hash,
    failure_order,
    genesis_seed,
    process_block,
)
from linguachain.ledger.vdf import vdf_output_seed
from linguachain.ledger.transactions import (
    AccountState,
    DoubleSignEvidence,
    Transaction,
    TransactionKind,
    deserialize_transaction,
)

__all__ = [
    "BLOCK_KINDS",
    "GENESIS_PARENT_HASH",
    "ChainConflictError",
    "InvalidBlockError",
    "Ledger",
    "VerifyReport",
    "block_header",
    "compute_block_hash",
    "sqlite_url",
]

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# `verify` hands deferred VDF and BLS checks to worker processes in chunks of this
# many. It starts workers only for chains this long, because a spawned worker
# imports the ledger modules first (an estimated second of start-up).
VERIFY_CHUNK_CHECKS = 512
PARALLEL_VERIFY_MIN_BLOCKS = 1000


class ChainConflictError(RuntimeError):
    """Another writer appended at the same height first; rebuild on the new head."""


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


def sqlite_url(path: str | Path) -> str:
    """Return the SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's BEGIN below start transactions, not pysqlite.
        connection.isolation_level = None
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        # IMMEDIATE takes the write lock at the start, so two appenders never
        # read the same head and then race (SQLite has no SELECT ... FOR UPDATE).
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _context_from_rows(
    head: Block | None, state: ChainState | None, accounts: list[Account]
) -> ChainContext:
    summary = json.loads(state.summary) if state else {}
    params = summary.get("params")
    nonces = {a.account: a.nonce for a in accounts if a.nonce}
    if summary.get("protocol_nonce"):
        nonces["protocol"] = summary["protocol_nonce"]
    return ChainContext(
        head=head,
        params=ConsensusParams(**{"vdf_interval": 1, **params}) if params else None,
        accounts=AccountState(
            balances={a.account: a.balance for a in accounts if a.balance},
            stakes={a.account: a.stake for a in accounts if a.stake or a.account in
                    summary.get("validators", [])},
            nonces=nonces,
            slashed=frozenset(tuple(item) for item in summary.get("slashed", [])),
            minted=summary.get("minted", 0),
            burned=summary.get("burned", 0),
        ),
        model_hash=summary.get("model_hash"),
        last_round=summary.get("last_round", 0),
        last_version=summary.get("last_version"),
        zero_score_streaks=summary.get("zero_score_streaks", {}),
        proposer_seed=_stored_proposer_seed(head, summary),
    )


def _stored_proposer_seed(head: Block | None, summary: dict[str, Any]) -> bytes | None:
    if summary.get("proposer_seed"):
        return bytes.fromhex(summary["proposer_seed"])
    if head is None:
        return None
    # A state row written before VDF epochs existed: every block carried a VDF.
    if head.vdf_output:
        return vdf_output_seed(bytes(head.vdf_output))
    return genesis_seed(head)


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

    # --- Reading ---

    def head(self) -> Block | None:
        """Return the block with the greatest height, or None for an empty chain."""
        with self.sessions() as session:
            return _head(session)

    def block_at(self, height: int) -> Block | None:
        """Return the block at `height`, or None."""
        with self.sessions() as session:
            return session.scalars(select(Block).where(Block.height == height)).first()

    def blocks(self, since: int = 0) -> Iterator[Block]:
        """Yield every block from height `since` on, in height order."""
        with self.sessions() as session:
            yield from session.scalars(
                select(Block).where(Block.height >= since).order_by(Block.height)
            )

    def model_versions(self) -> list[ModelVersion]:
        """Return committed model versions in round order."""
        with self.sessions() as session:
            return list(
                session.scalars(select(ModelVersion).order_by(ModelVersion.round))
            )

    def model_version(self, model_hash: str) -> ModelVersion | None:
        """Return the committed version with `model_hash`, or None."""
        with self.sessions() as session:
            return session.scalars(
                select(ModelVersion).where(ModelVersion.model_hash == model_hash)
            ).first()

    def accounts(self) -> list[Account]:
        """Return every account row, sorted by account id."""
        with self.sessions() as session:
            return list(session.scalars(select(Account).order_by(Account.account)))

    def context(self) -> ChainContext:
        """Return the chain context after the head block, from the stored state."""
        with self.sessions() as session:
            return self._context(session)

    def _context(self, session: Session) -> ChainContext:
        head = _head(session)
        state = session.get(ChainState, 1)
        accounts = list(session.scalars(select(Account)))
        return _context_from_rows(head, state, accounts)

    # --- Writing ---

    def append(
        self,
        block: Block,
        check_signatures: bool = True,
        signatures: dict[str, bytes] | None = None,
        weights_path: str = "",
    ) -> ChainContext:
        """Check `block` against the head and append it, in one transaction.

        Raise InvalidBlockError when a rule is broken and ChainConflictError when
        another writer extended the head first; the chain is unchanged then.
        """
        try:
            with self.sessions.begin() as session:
                before = self._context(session)
                after = process_block(before, block, check_signatures)
                self._write(session, block, before, after, signatures or {}, weights_path)
        except IntegrityError as error:
            raise ChainConflictError(
                f"block {block.height} conflicts with a block written concurrently:"
                " rebuild it on the new head"
            ) from error
        logger.info("Appended %s block %d (%s)", block.kind, block.height, block.hash[:12])
        return after

    def _write(
        self,
        session: Session,
        block: Block,
        before: ChainContext,
        after: ChainContext,
        signatures: dict[str, bytes],
        weights_path: str,
    ) -> None:
        stored = Block(**{c: getattr(block, c) for c in _BLOCK_COLUMNS})
        session.add(stored)
        session.flush()
        payload = json.loads(block.payload)
        texts = payload.get("transactions", [])
        rows = [
            {
                "block_height": block.height,
                "position": position,
                "tx_hash": _sha256(text),
                "kind": str(tx.kind),
                "sender": tx.sender,
                "recipient": tx.recipient,
                "amount": tx.amount,
                "nonce": tx.nonce,
                "encoded": text,
            }
            for position, (text, tx) in enumerate(
                zip(texts, after.head_transactions, strict=True)
            )
        ]
        if rows:
            session.execute(insert(TransactionRow), rows)
        for validator, signature in sorted(signatures.items()):
            session.add(
                AttestationRow(
                    block_height=block.height, validator=validator, signature=signature
                )
            )
        if block.kind == "version":
            metrics = payload.get("metrics", {})
            session.add(
                ModelVersion(
                    round=payload["round"],
                    model_hash=payload["model_hash"],
                    parent_hash=payload["parent_model_hash"] or "",
                    block_height=block.height,
                    metrics=canonical_json(metrics).decode("ascii"),
                    weights_path=weights_path,
                )
            )
        _write_state(session, before, after)
        if block.kind == "transaction":
            # Included transactions leave the mempool in the same transaction.
            hashes = []
            for text, tx in zip(texts, after.head_transactions, strict=True):
                if tx.kind == TransactionKind.SLASH and tx.evidence is not None:
                    hashes.append(_sha256(evidence_to_json(tx.evidence)))
                hashes.append(_sha256(text))
            session.execute(delete(MempoolEntry).where(MempoolEntry.entry_hash.in_(hashes)))

    def append_block(
        self, kind: str, payload: dict[str, Any], proposer: str = ""
    ) -> Block:
        """Append a block without consensus evidence (unattested chains only)."""
        if kind not in BLOCK_KINDS:
            raise ValueError(f"Unknown block kind {kind!r}; use one of {BLOCK_KINDS}.")
        head = self.head()
        if head is None and kind != "genesis":
            raise ValueError("The chain is empty: append a genesis block first.")
        if head is not None and kind == "genesis":
            raise ValueError(f"The chain already has a genesis block ({head.hash}).")
        block = new_block(head, kind, payload, proposer)
        self.append(block)
        return block

    def commit_version(
        self,
        server_round: int,
        model_hash: str,
        parent_model_hash: str,
        metrics: dict[str, Any],
        weights_path: str = "",
    ) -> Block:
        """Append an unattested version block and its model version row."""
        payload = {
            "round": server_round,
            "model_hash": model_hash,
            "parent_model_hash": parent_model_hash,
            "metrics": metrics,
        }
        block = new_block(self.head(), "version", payload, "")
        self.append(block, weights_path=weights_path)
        logger.info(
            "Committed model %s of round %d in block %d",
            model_hash[:12],
            server_round,
            block.height,
        )
        return block

    # --- Mempool and signing record ---

    def submit(self, kind: str, encoded: str) -> str:
        """Queue a signed transaction or double-sign evidence; return its hash."""
        entry_hash = _sha256(encoded)
        with self.sessions.begin() as session:
            if session.scalars(
                select(MempoolEntry).where(MempoolEntry.entry_hash == entry_hash)
            ).first() is None:
                session.add(MempoolEntry(entry_hash=entry_hash, kind=kind, encoded=encoded))
        return entry_hash

    def mempool(self) -> list[MempoolEntry]:
        """Return queued entries in submission order."""
        with self.sessions() as session:
            return list(session.scalars(select(MempoolEntry).order_by(MempoolEntry.id)))

    def drop_from_mempool(self, entry_hash: str) -> None:
        """Remove one queued entry, for example one that no block can include."""
        with self.sessions.begin() as session:
            session.execute(delete(MempoolEntry).where(MempoolEntry.entry_hash == entry_hash))

    def record_approval(self, height: int, block_hash: str) -> None:
        """Record that this node voted for `block_hash` at `height`."""
        with self.sessions.begin() as session:
            if session.get(Approval, block_hash) is None:
                session.add(Approval(block_hash=block_hash, height=height))

    def is_approved(self, block_hash: str) -> bool:
        """Check that this node voted for `block_hash`."""
        with self.sessions() as session:
            return session.get(Approval, block_hash) is not None

    def record_signature(self, height: int, block_hash: str) -> bool:
        """Record that this node signs `block_hash` at `height`.

        Return False, recording nothing, when it already signed another block at
        that height, because a second signature there is a slashable double sign.
        """
        with self.sessions.begin() as session:
            existing = session.get(SignedHeight, height)
            if existing is not None:
                return existing.block_hash == block_hash
            session.add(SignedHeight(height=height, block_hash=block_hash))
        return True

    # --- Verification ---

    def verify(
        self, check_signatures: bool = True, workers: int | None = None
    ) -> VerifyReport:
        """Replay the chain and report the first block that breaks a rule.

        VDF proofs, attestations and transfer signatures are checked in chunks by
        `workers` processes while this process replays the state transitions,
        then the report names the lowest failing height. By default chains of
        `PARALLEL_VERIFY_MIN_BLOCKS` or more use one worker per CPU;
        `workers=0` checks everything in this process.
        """
        if workers is None:
            workers = self._default_verify_workers()
        pool = _verify_pool(workers) if workers > 0 else None
        pending: list[Any] = []
        deferred = DeferredChecks()

        def check_chunk() -> None:
            chunk = deferred.take()
            future = pool.submit(first_invalid_check, chunk) if pool is not None else None
            pending.append((chunk, future))

        count = 0
        head_hash = GENESIS_PARENT_HASH
        error: InvalidBlockError | None = None
        try:
            with self.sessions() as session:
                derived = _derived_rows(session)
                context = ChainContext()
                for block in session.scalars(select(Block).order_by(Block.height)):
                    context = process_block(context, block, check_signatures, deferred)
                    check_derived_rows(block, derived, context.head_transactions)
                    head_hash = block.hash
                    count += 1
                    if len(deferred) >= VERIFY_CHUNK_CHECKS:
                        check_chunk()
                if count == 0:
                    return VerifyReport(
                        False, 0, head_hash, 0, "genesis", "the chain is empty"
                    )
                check_chunk()
                check_orphans(derived)
                check_state_rows(session, context)
        except InvalidBlockError as replay_error:
            error = replay_error
            # Checks deferred from blocks below the failing one still count.
            deferred = deferred.before(replay_error.height)
            check_chunk()
        except DatabaseError as database_error:
            error = InvalidBlockError(count, "readable-database", str(database_error.orig))
        finally:
            failures = _chunk_results(pending)
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        failures = [f for f in failures if f is not None]
        if failures:
            height, rule, detail = min(failures, key=failure_order)
            if error is None or height < error.height:
                error = InvalidBlockError(height, rule, detail)
        if error is not None:
            return VerifyReport(
                False, count, head_hash, error.height, error.rule, error.detail
            )
        return VerifyReport(True, count, head_hash)

    def _default_verify_workers(self) -> int:
        with self.sessions() as session:
            head = _head(session)
        if head is None or head.height + 1 < PARALLEL_VERIFY_MIN_BLOCKS:
            return 0
        # The replay needs about a third of the CPU time of the checks, so one
        # worker per CPU keeps every core busy.
        return os.cpu_count() or 1


def first_invalid_check(chunk: DeferredChecks) -> tuple[int, str, str] | None:
    """Run a chunk of deferred checks; a worker-process entry point."""
    return chunk.first_invalid()


def _verify_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, because a forked copy of a process running Flower, Ray or SQLAlchemy
    # pools can deadlock on locks held by other threads at fork time.
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=bls.set_backend,
        initargs=(bls.get_backend(),),
    )


def _chunk_results(
    pending: list[tuple[DeferredChecks, Future | None]],
) -> list[tuple[int, str, str] | None]:
    results = []
    broken = False
    for chunk, future in pending:
        if future is not None and not broken:
            try:
                results.append(future.result())
                continue
            except BrokenProcessPool as error:
                # For example a script without `if __name__ == "__main__":`,
                # which spawned workers cannot import.
                broken = True
                logger.warning(
                    "Verify workers failed (%s); checking in this process", error
                )
        results.append(chunk.first_invalid())
    return results


_BLOCK_COLUMNS = (
    "height", "hash", "parent_hash", "kind", "timestamp", "proposer", "payload",
    "vdf_output", "vdf_proof", "pow_nonce", "attestation", "signers",
)


def new_block(
    parent: Block | None, kind: str, payload: dict[str, Any], proposer: str
) -> Block:
    """Build an unsealed block on top of `parent`, with its hash set."""
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
        attestation=b"",
        signers="[]",
    )
    block.hash = compute_block_hash(block)
    return block


def evidence_to_json(evidence: DoubleSignEvidence) -> str:
    """Encode double-sign evidence for the mempool."""
    return json.dumps(
        {
            name: {
                "validator": a.validator,
                "height": a.height,
                "block_hash": a.block_hash.hex(),
                "signature": a.signature.hex(),
            }
            for name, a in (("first", evidence.first), ("second", evidence.second))
        },
        sort_keys=True,
    )


def _head(session: Session) -> Block | None:
    return session.scalars(select(Block).order_by(Block.height.desc()).limit(1)).first()


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_state(session: Session, before: ChainContext, after: ChainContext) -> None:
    old, new = before.accounts, after.accounts
    touched = set(new.balances) | set(new.stakes) | set(new.nonces)
    touched.discard("protocol")
    for account in touched:
        values = (
            new.balances.get(account, 0),
            new.stakes.get(account, 0),
            new.nonces.get(account, 0),
        )
        previous = (
            old.balances.get(account, 0),
            old.stakes.get(account, 0),
            old.nonces.get(account, 0),
        )
        if values != previous or before.head is None:
            session.merge(
                Account(account=account, balance=values[0], stake=values[1],
                        nonce=values[2])
            )
    summary = after.summary()
    summary["validators"] = sorted(new.stakes)
    session.merge(ChainState(id=1, summary=canonical_json(summary).decode("ascii")))


def _derived_rows(session: Session) -> dict[str, dict[int, list[Any]]]:
    rows: dict[str, dict[int, list[Any]]] = {
        "transactions": defaultdict(list),
        "attestations": defaultdict(list),
        "versions": defaultdict(list),
    }
    # Plain rows rather than ORM objects: a long chain has many of them.
    table = TransactionRow.__table__
    for tx in session.execute(select(table).order_by(table.c.position)):
        rows["transactions"][tx.block_height].append(tx)
    for row in session.execute(select(AttestationRow.__table__)):
        rows["attestations"][row.block_height].append(row)
    for version in session.scalars(select(ModelVersion)):
        rows["versions"][version.block_height].append(version)
    rows["seen"] = {}
    return rows


def check_derived_rows(
    block: Block, derived: dict[str, Any], decoded: list[Transaction] | None = None
) -> None:
    """Check the transaction, attestation and model version rows of one block.

    `decoded` are the block's transactions as the replay decoded them, if known.
    """
    height = block.height
    derived["seen"][height] = block.kind
    payload = json.loads(block.payload)
    stored_txs = [
        (tx.position, tx.encoded, tx.tx_hash, tx.kind, tx.sender, tx.recipient,
         tx.amount, tx.nonce)
        for tx in derived["transactions"].get(height, [])
    ]
    expected_txs = []
    texts = payload.get("transactions", [])
    if decoded is None or len(decoded) != len(texts):
        decoded = [deserialize_transaction(text.encode("ascii")) for text in texts]
    for position, (text, tx) in enumerate(zip(texts, decoded)):
        expected_txs.append(
            (position, text, _sha256(text), str(tx.kind), tx.sender, tx.recipient,
             tx.amount, tx.nonce)
        )
    if stored_txs != expected_txs:
        raise InvalidBlockError(height, "transaction-rows", "rows differ from the block")

    attesters = sorted(row.validator for row in derived["attestations"].get(height, []))
    if attesters and attesters != json.loads(block.signers or "[]"):
        raise InvalidBlockError(height, "attestation-rows", "rows differ from signers")

    versions = derived["versions"].get(height, [])
    if block.kind != "version":
        return
    if len(versions) != 1:
        raise InvalidBlockError(height, "model-version", "no model version row")
    version = versions[0]
    stored = {
        "round": version.round,
        "model_hash": version.model_hash,
        "parent_model_hash": version.parent_hash,
        "metrics": json.loads(version.metrics),
    }
    expected = {key: payload.get(key) for key in stored}
    expected["parent_model_hash"] = expected["parent_model_hash"] or ""
    if canonical_json(stored) != canonical_json(expected):
        raise InvalidBlockError(
            height, "model-version", "model version row differs from the block"
        )
    # The store names each weights file after its hash.
    if version.weights_path and not version.weights_path.endswith(
        f"/{version.model_hash}.npz"
    ):
        raise InvalidBlockError(
            height, "model-version", f"weights path {version.weights_path} is not"
            " content-addressed by the model hash"
        )


def check_orphans(derived: dict[str, Any]) -> None:
    """Reject derived rows that point at no block of the right kind."""
    seen = derived["seen"]
    for table in ("transactions", "attestations"):
        orphans = set(derived[table]) - set(seen)
        if orphans:
            raise InvalidBlockError(min(orphans), f"{table[:-1]}-rows", "row without block")
    orphans = {h for h in derived["versions"] if seen.get(h) != "version"}
    if orphans:
        raise InvalidBlockError(
            min(orphans),
            "model-version",
            "a model version row points at a block that is not a version block",
        )


def check_state_rows(session: Session, context: ChainContext) -> None:
    """Compare the stored accounts and chain state with the replayed ones."""
    if context.head is None:
        return
    height = context.head.height
    state = context.accounts
    replayed = {
        account: (
            state.balances.get(account, 0),
            state.stakes.get(account, 0),
            state.nonces.get(account, 0),
        )
        for account in (set(state.balances) | set(state.stakes) | set(state.nonces))
        if account != "protocol"
    }
    stored = {
        row.account: (row.balance, row.stake, row.nonce)
        for row in session.scalars(select(Account))
    }
    for account in set(replayed) | set(stored):
        if replayed.get(account, (0, 0, 0)) != stored.get(account, (0, 0, 0)):
            raise InvalidBlockError(
                height, "balances", f"account {account[:16]} differs from the replay"
            )
    row = session.get(ChainState, 1)
    summary = context.summary()
    summary["validators"] = sorted(state.stakes)
    stored_summary = json.loads(row.summary) if row is not None else None
    if stored_summary is not None and "proposer_seed" not in stored_summary:
        # State rows written before VDF epochs existed do not store the seed.
        del summary["proposer_seed"]
    if stored_summary != json.loads(canonical_json(summary)):
        raise InvalidBlockError(height, "supply", "chain state differs from the replay")
