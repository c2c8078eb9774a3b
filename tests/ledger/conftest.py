"""Fixtures of the chain tests (defined in chain_helpers)."""

from chain_helpers import chain_copy, chain_file, keys, postgres_db, postgres_url

__all__ = ["chain_copy", "chain_file", "keys", "postgres_db", "postgres_url"]
