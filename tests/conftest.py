"""Shared fixtures: the WikiText-2 test data and small run configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linguachain.config import nest_dotted_keys
from linguachain.sweep import run_job

REPO_ROOT = Path(__file__).resolve().parents[1]


def wikitext_folder() -> Path:
    """Return the WikiText-2 folder: $LINGUACHAIN_TEST_DATA or ../shared/data/wikitext-2."""
    default = REPO_ROOT.parent / "shared" / "data" / "wikitext-2"
    return Path(os.environ.get("LINGUACHAIN_TEST_DATA", default))


@pytest.fixture(scope="session")
def wikitext() -> Path:
    """WikiText-2 validation (training pool) and test (held out) files."""
    folder = wikitext_folder()
    if not (folder / "valid.txt").is_file() or not (folder / "test.txt").is_file():
        pytest.fail(
            f"WikiText-2 test data not found in {folder}: set LINGUACHAIN_TEST_DATA to a"
            " folder holding valid.txt and test.txt."
        )
    return folder


@pytest.fixture(scope="session")
def micro_overrides(wikitext: Path) -> dict:
    """Dotted-key overrides for a fast micro run on the local WikiText-2 files."""
    return {
        "model.preset": "micro",
        "data.path": str(wikitext),
        "data.train_file": "valid.txt",
        "data.test_file": "test.txt",
        "data.eval_blocks": 64,
        "train.rounds": 2,
        "train.local_steps": 8,
        "train.batch_size": 8,
        "federation.num_nodes": 2,
        "output.max_new_tokens": 8,
        "output.prompts": "The history of",
        # A light VDF and proof of work run the same consensus code faster.
        # tests/ledger/ covers those primitives.
        "consensus.vdf_iterations": 500,
        "consensus.pow_difficulty_bits": 4,
    }


@pytest.fixture(scope="session")
def micro_run(micro_overrides: dict, tmp_path_factory) -> tuple[Path, dict]:
    """Run 2 nodes x 2 rounds of the micro preset (CKKS, consensus) once per session.

    Tests that share this run only read its folder, and a test that edits a file
    edits a copy.
    """
    folder = tmp_path_factory.mktemp("micro-run")
    summary = run_job(nest_dotted_keys(micro_overrides), folder)
    return folder, summary
