"""SQLAlchemy 2 typed ORM models of the ledger.

`blocks` is the chain itself. `transactions`, `attestations` and
`model_versions` are rows derived from a block's payload and evidence, written in
the same database transaction as the block. `accounts` and `chain_state` are the
LinguaCoin state after the head block. `verify` recomputes all of them from the
blocks and reports any row that differs. `mempool`, `signed_heights` and `approvals` are
local bookkeeping outside the chain.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the ledger tables."""


class Block(Base):
    """One block of the hash chain; `hash` covers every column but the evidence.

    The attestation aggregate and its signer list sign the hash, so they cannot
    be inside it; `verify` checks them with FastAggregateVerify instead.
    """

    __tablename__ = "blocks"

    id: Mapped[int] = mapped_column(primary_key=True)
    height: Mapped[int] = mapped_column(Integer, unique=True, index=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Unique, so two writers racing to extend one parent cannot both succeed.
    parent_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    timestamp: Mapped[int] = mapped_column(BigInteger)  # seconds since the Unix epoch
    proposer: Mapped[str] = mapped_column(String(128), default="")
    # Canonical JSON of the block's contents (see ledger.hashing.canonical_json).
    payload: Mapped[str] = mapped_column(Text)
    # Consensus evidence; empty on the genesis block and on unattested chains.
    vdf_output: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    vdf_proof: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    pow_nonce: Mapped[int] = mapped_column(BigInteger, default=0)
    attestation: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    signers: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of accounts


class TransactionRow(Base):
    """A LinguaCoin transaction included in a block, at its position."""

    __tablename__ = "transactions"

    id: Mapped[int] = mapped_column(primary_key=True)
    block_height: Mapped[int] = mapped_column(ForeignKey("blocks.height"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    tx_hash: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    sender: Mapped[str] = mapped_column(String(128), index=True)
    recipient: Mapped[str] = mapped_column(String(128), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    nonce: Mapped[int] = mapped_column(BigInteger)
    encoded: Mapped[str] = mapped_column(Text)  # serialize_transaction output


class AttestationRow(Base):
    """One validator's BLS signature on a block; the block stores the aggregate."""

    __tablename__ = "attestations"

    id: Mapped[int] = mapped_column(primary_key=True)
    block_height: Mapped[int] = mapped_column(ForeignKey("blocks.height"), index=True)
    validator: Mapped[str] = mapped_column(String(128))
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class Account(Base):
    """LinguaCoin balance, bonded stake and last used nonce of one account."""

    __tablename__ = "accounts"

    account: Mapped[str] = mapped_column(String(128), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    stake: Mapped[int] = mapped_column(BigInteger, default=0)
    nonce: Mapped[int] = mapped_column(BigInteger, default=0)


class ChainState(Base):
    """Chain-wide state after the head block (a single row, id 1)."""

    __tablename__ = "chain_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Canonical JSON of ledger.rules.ChainContext.summary(): supply counters,
    # slashed offences, committed model, last closed round.
    summary: Mapped[str] = mapped_column(Text)


class ModelVersion(Base):
    """A committed global model and the version block that committed it."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    round: Mapped[int] = mapped_column(Integer, unique=True)
    model_hash: Mapped[str] = mapped_column(String(64), index=True)
    parent_hash: Mapped[str] = mapped_column(String(64))
    block_height: Mapped[int] = mapped_column(ForeignKey("blocks.height"))
    metrics: Mapped[str] = mapped_column(Text)  # canonical JSON
    # Content-addressed weights file (ledger.store), empty when not stored.
    weights_path: Mapped[str] = mapped_column(String(1024), default="")


class MempoolEntry(Base):
    """A transaction or double-sign evidence waiting for a transaction block."""

    __tablename__ = "mempool"

    id: Mapped[int] = mapped_column(primary_key=True)
    entry_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # transfer, stake or evidence
    encoded: Mapped[str] = mapped_column(Text)


class SignedHeight(Base):
    """A block this node's validator key signed; it never signs another there."""

    __tablename__ = "signed_heights"

    height: Mapped[int] = mapped_column(Integer, primary_key=True)
    block_hash: Mapped[str] = mapped_column(String(64))


class Approval(Base):
    """A proposal this node voted for; it signs only blocks it approved."""

    __tablename__ = "approvals"

    block_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    height: Mapped[int] = mapped_column(Integer)
