"""The run report, its headless-Chromium rendering and the analysis notebook."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO_ROOT
from linguachain.cli import app as cli
from linguachain.server_app.report import write_run_report
from linguachain.server_app.run_data import load_run

SECTION_HEADINGS = [
    "Summary",
    "Configuration",
    "Perplexity and loss",
    "Time per phase",
    "Node contributions",
    "Robustness scores",
    "Differential privacy (epsilon)",
    "LinguaCoin balances",
    "Ledger",
    "Sample generations",
]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]
# Chromium logs page console messages and failed loads with these markers.
CONSOLE_ERROR = re.compile(r"CONSOLE|Uncaught|net::ERR_|Failed to load resource")


@pytest.fixture(scope="module")
def finished_run(micro_run) -> Path:
    """The shared 2-node, 2-round micro run, which writes its report."""
    return micro_run[0]


def headings(html: str) -> list[str]:
    return [
        re.sub(r"<[^>]+>", "", h).strip()
        for h in re.findall(r"<h2[^>]*>(.*?)</h2>", html)
    ]


def section_text(html: str, heading: str) -> str:
    """Return the HTML between a section's h2 and the next h2."""
    start = html.index(f">{heading}</h2>")
    end = html.find("<h2", start)
    return html[start : end if end >= 0 else len(html)]


def chromium(*arguments: str, tmp_path: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip(
            "chromium is not installed: apt-get install -y chromium (see .ci/run)"
        )
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_run_writes_report_with_every_section(finished_run):
    html = (finished_run / "report.html").read_text(encoding="utf-8")
    assert headings(html) == SECTION_HEADINGS
    assert "linguachain run" in html


def test_report_is_self_contained(finished_run):
    html = (finished_run / "report.html").read_text(encoding="utf-8")
    references = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert references, "the report embeds no plots"
    assert all(ref.startswith(("data:image/png;base64,", "#")) for ref in references)
    assert "<script" not in html
    assert "<link" not in html
    assert "@import" not in html


def test_report_shows_chain_and_generation(finished_run):
    html = (finished_run / "report.html").read_text(encoding="utf-8")
    summary = json.loads((finished_run / "summary.json").read_text())
    ledger = section_text(html, "Ledger")
    # Genesis, then a version block and a data block per round.
    assert "valid: 5 blocks" in ledger
    assert summary["ledger"]["head"][:16] in ledger
    assert ledger.count("<td>version</td>") == 2
    generations = json.loads((finished_run / "generations.json").read_text())
    assert generations[0]["text"] in html


def test_report_names_metrics_not_recorded(finished_run):
    html = (finished_run / "report.html").read_text(encoding="utf-8")
    for heading in (
        "Robustness scores",
        "Differential privacy (epsilon)",
        "LinguaCoin balances",
    ):
        assert "not recorded in this run" in section_text(html, heading), heading
    contributions = section_text(html, "Node contributions")
    assert "not recorded in this run" not in contributions
    assert "data:image/png;base64," in contributions


def test_node_tokens_match_round_totals(finished_run):
    run = load_run(finished_run)
    node_tokens = run.node_tokens()
    assert sorted(node_tokens) == [1, 2]
    for row in run.metrics[1:]:
        assert len(node_tokens[row["round"]]) == 2
        assert sum(node_tokens[row["round"]].values()) == row["tokens"]


def test_report_shows_optional_metrics(finished_run, tmp_path):
    # Runs with robust aggregation, differential privacy and rewards add these
    # keys to metrics rows; the report must pick them up.
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    rows = [
        json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()
    ]
    for row in rows[1:]:
        nodes = list(row["node_tokens"])
        row["robustness_scores"] = {
            node: 0.25 * (i + 1) for i, node in enumerate(nodes)
        }
        row["epsilon"] = 0.5 * row["round"]
        row["balances"] = {node: 10.0 * row["round"] for node in nodes}
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    result = CliRunner().invoke(cli, ["report", "--run", str(copy)])
    assert result.exit_code == 0, result.output
    html = (copy / "report.html").read_text(encoding="utf-8")
    for heading in (
        "Robustness scores",
        "Differential privacy (epsilon)",
        "LinguaCoin balances",
    ):
        section = section_text(html, heading)
        assert "not recorded in this run" not in section, heading
        assert "data:image/png;base64," in section, heading
    assert ">0.5<" in section_text(html, "Robustness scores")
    assert ">20<" in section_text(html, "LinguaCoin balances")


def test_report_flags_tampered_ledger(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    summary = json.loads((copy / "summary.json").read_text())
    data = bytearray((copy / "ledger.db").read_bytes())
    offset = data.find(summary["final_model_hash"].encode())
    assert offset > 0
    data[offset] ^= 0x01
    (copy / "ledger.db").write_bytes(bytes(data))

    result = CliRunner().invoke(cli, ["report", "--run", str(copy)])
    assert result.exit_code == 0, result.output
    ledger = section_text((copy / "report.html").read_text(encoding="utf-8"), "Ledger")
    # The first copy of the final model hash sits in a late block of the chain.
    assert re.search(r"INVALID at block [1-9]", ledger)
    assert 'class="invalid"' in ledger


def test_report_command_rejects_missing_run(tmp_path):
    result = CliRunner().invoke(cli, ["report", "--run", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "No metrics.jsonl" in result.output


def test_report_renders_in_chromium(finished_run, tmp_path):
    url = (finished_run / "report.html").as_uri()
    dumped = chromium("--dump-dom", url, tmp_path=tmp_path)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert headings(dumped.stdout) == SECTION_HEADINGS
    errors = [line for line in dumped.stderr.splitlines() if CONSOLE_ERROR.search(line)]
    assert errors == []

    screenshot = tmp_path / "report.png"
    shot = chromium(
        f"--screenshot={screenshot}", "--window-size=1280,2400", url, tmp_path=tmp_path
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    image = Image.open(screenshot).convert("L")
    assert image.size == (1280, 2400)
    # A blank or failed page is one flat colour; a rendered report is not.
    low, high = image.getextrema()
    assert high - low > 100
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 16


def test_notebook_runs_on_finished_run(finished_run, monkeypatch):
    monkeypatch.setenv("LINGUACHAIN_RUN", str(finished_run))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    notebook = nbformat.read(REPO_ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    kernel = KernelManager(kernel_name="python3", ip="127.0.0.1")
    client = NotebookClient(
        notebook,
        km=kernel,
        timeout=300,
        startup_timeout=180,
        resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}},
    )
    try:
        client.execute()
    finally:
        # nbclient 0.11 does not shut down a kernel manager that the caller passed in.
        kernel.shutdown_kernel(now=True)
    outputs = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
    ]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "valid: 5 blocks" in text
    assert "The history of" in text


def test_run_report_failure_is_logged(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text("not json\n")
    (tmp_path / "config.yaml").write_text("model:\n  preset: micro\n")
    # linguachain's logger stops propagation once a run configured logging, so
    # caplog's handler is attached to it directly.
    package_logger = logging.getLogger("linguachain")
    package_logger.addHandler(caplog.handler)
    try:
        assert write_run_report(tmp_path) is None
    finally:
        package_logger.removeHandler(caplog.handler)
    assert "linguachain report --run" in caplog.text
    assert not (tmp_path / "report.html").exists()


def test_report_reads_ledger_accounts(finished_run):
    # The ledger keeps a LinguaCoin balance per account; the report lists them.
    with sqlite3.connect(finished_run / "ledger.db") as connection:
        accounts = connection.execute(
            "SELECT account, balance FROM accounts ORDER BY balance DESC"
        ).fetchall()
    assert accounts
    section = section_text(
        (finished_run / "report.html").read_text(), "LinguaCoin balances"
    )
    richest = accounts[0][0]
    assert richest[:16] in section
    assert "not recorded in this run" not in section.split("per round")[0]