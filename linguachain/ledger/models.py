"""SQLAlchemy 2 typed ORM models of the ledger."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the ledger tables."""


class Block(Base):
    """One block of the hash chain; `hash` covers every column but `id`."""

    __tablename__ = "blocks"

    id: Mapped[int] = mapped_column(primary_key=True)
    height: Mapped[int] = mapped_column(Integer, unique=True, index=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    parent_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    timestamp: Mapped[int] = mapped_column(Integer)  # seconds since the Unix epoch
    proposer: Mapped[str] = mapped_column(String(128), default="")
    # Canonical JSON of the block's contents (see ledger.hashing.canonical_json).
    payload: Mapped[str] = mapped_column(Text)
    # Consensus evidence, filled once consensus runs; empty before.
    vdf_output: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    vdf_proof: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    pow_nonce: Mapped[int] = mapped_column(Integer, default=0)


class ModelVersion(Base):
    """A committed global model and the version block that committed it."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    round: Mapped[int] = mapped_column(Integer, unique=True)
    model_hash: Mapped[str] = mapped_column(String(64), index=True)
    parent_hash: Mapped[str] = mapped_column(String(64))
    block_height: Mapped[int] = mapped_column(ForeignKey("blocks.height"))
    metrics: Mapped[str] = mapped_column(Text)  # canonical JSON
    weights_path: Mapped[str] = mapped_column(String(1024), default="")
