"""Sweep summaries: a real multirun with one failing job, and job counting."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from linguachain.ledger.chain import Ledger
from linguachain.sweep_summary import (
    FAILED_FILE,
    FINAL_PERPLEXITY_PLOT,
    PERPLEXITY_PLOT,
    SUMMARY_CSV,
    SUMMARY_MARKDOWN,
    collect_jobs,
    count_jobs,
)


def test_failed_job_reported_and_sweep_goes_on(wikitext, tmp_path):
    missing = tmp_path / "no-such-text"
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "linguachain.sweep",
        "-m",
        "model=micro",
        f"data.path={missing},{wikitext}",
        "data.train_file=valid.txt",
        "train.rounds=1",
        "train.local_steps=2",
        "federation.num_nodes=2",
        "data.eval_blocks=16",
        "output.save_model=false",
        "output.max_new_tokens=4",
        "consensus.vdf_iterations=500",
        "consensus.pow_difficulty_bits=4",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    # The sweep runs to its end, then exits 1 for the failed job.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 sweep job(s) failed" in result.stderr

    # The failing job wrote its record; the next job still ran to the end.
    assert (sweep_dir / "0" / FAILED_FILE).is_file()
    assert (sweep_dir / "1" / "summary.json").is_file()
    assert Ledger.open(sweep_dir / "1" / "ledger.db").verify().valid
    for name in (SUMMARY_CSV, SUMMARY_MARKDOWN, PERPLEXITY_PLOT, FINAL_PERPLEXITY_PLOT):
        assert (sweep_dir / name).is_file(), name

    with open(sweep_dir / SUMMARY_CSV, encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["status"] for row in rows] == ["failed", "completed"]
    assert rows[0]["data.path"] == str(missing)
    assert "FileNotFoundError" in rows[0]["error"]
    assert rows[0]["final_test_perplexity"] == ""
    assert float(rows[1]["final_test_perplexity"]) < float(
        rows[1]["initial_test_perplexity"]
    )
    assert rows[1]["error"] == ""

    markdown = (sweep_dir / SUMMARY_MARKDOWN).read_text(encoding="utf-8")
    assert "2 jobs, 1 completed, 1 failed" in markdown
    assert "| data.path |" in markdown
    assert "`model=micro`" in markdown
    assert "Sweep job 0 FAILED" in result.stderr + result.stdout


def test_interrupted_job_is_incomplete(tmp_path):
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- train.lr=0.1\n")
    (job / "metrics.jsonl").write_text('{"round": 0, "test_perplexity": 4000.0}\n')
    [result] = collect_jobs(tmp_path)
    assert result.status == "incomplete"
    assert result.overrides == {"train.lr": "0.1"}
    assert result.perplexity == [(0, 4000.0)]
    assert "interrupted" in result.error


def test_count_jobs_multiplies_sweeps():
    assert count_jobs(["train.lr=0.1,0.01,0.001", "aggregation=fedavg,fedavgm"]) == 6
    assert count_jobs(["model=micro"]) == 1
    assert count_jobs(["train.lr=range(1,4)"]) == 3
    assert count_jobs(["train.lr=interval(0.1,1.0)"]) is None
