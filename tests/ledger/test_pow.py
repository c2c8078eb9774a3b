"""Tests for the hashcash-style proof of work."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from linguachain.ledger.constants import POW_DIFFICULTY_BITS, PowParameterError
from linguachain.ledger.pow import (
    MAX_POW_NONCE,
    check_pow,
    leading_zero_bits,
    pow_hash,
    solve_pow,
)

HEADER = (
    b'{"height":7,"parent":"' + hashlib.sha256(b"parent").hexdigest().encode() + b'"}'
)


@pytest.fixture(scope="module")
def nonce() -> int:
    return solve_pow(HEADER, POW_DIFFICULTY_BITS)


def test_solve_then_check(nonce: int) -> None:
    assert check_pow(HEADER, nonce, POW_DIFFICULTY_BITS)
    assert leading_zero_bits(pow_hash(HEADER, nonce)) >= POW_DIFFICULTY_BITS


def test_solution_meets_lower_difficulty(nonce: int) -> None:
    for difficulty_bits in range(1, POW_DIFFICULTY_BITS + 1):
        assert check_pow(HEADER, nonce, difficulty_bits)


def test_smaller_nonces_fail(nonce: int) -> None:
    # solve_pow returns the smallest valid nonce, so every smaller one must fail.
    for wrong_nonce in range(nonce):
        assert not check_pow(HEADER, wrong_nonce, POW_DIFFICULTY_BITS)


def test_nonce_bound_to_header(nonce: int) -> None:
    other_header = HEADER.replace(b'"height":7', b'"height":8')
    other_nonce = solve_pow(other_header, POW_DIFFICULTY_BITS)

    assert other_nonce != nonce
    assert not check_pow(other_header, nonce, POW_DIFFICULTY_BITS)


def test_pow_hash_layout() -> None:
    expected = hashlib.sha256(HEADER + (5).to_bytes(8, "big")).digest()

    assert pow_hash(HEADER, 5) == expected


@pytest.mark.parametrize(
    ("digest", "zero_bits"),
    [
        (b"\xff" + bytes(31), 0),
        (b"\x80" + bytes(31), 0),
        (b"\x01" + bytes(31), 7),
        (b"\x00\x0f" + bytes(30), 12),
        (bytes(32), 256),
    ],
)
def test_leading_zero_bits(digest: bytes, zero_bits: int) -> None:
    assert leading_zero_bits(digest) == zero_bits


@pytest.mark.parametrize("wrong_nonce", [-1, MAX_POW_NONCE + 1, "0", 1.0, None])
def test_check_rejects_invalid_nonce(wrong_nonce: Any) -> None:
    assert check_pow(HEADER, wrong_nonce, 1) is False


@pytest.mark.parametrize("difficulty_bits", [0, -1, 33, 256, True, 12.0, "12"])
def test_solve_rejects_bad_difficulty(difficulty_bits: Any) -> None:
    with pytest.raises(PowParameterError):
        solve_pow(HEADER, difficulty_bits)


@pytest.mark.parametrize("difficulty_bits", [0, 33])
def test_check_rejects_bad_difficulty(difficulty_bits: int) -> None:
    with pytest.raises(ValueError):
        check_pow(HEADER, 0, difficulty_bits)


@pytest.mark.parametrize("header", [b"", "header", None])
def test_rejects_bad_header(header: Any) -> None:
    with pytest.raises(PowParameterError):
        solve_pow(header, POW_DIFFICULTY_BITS)
    with pytest.raises(PowParameterError):
        check_pow(header, 0, POW_DIFFICULTY_BITS)
