"""Sweep summary: one table and comparison plots over the jobs of a Hydra multirun.

Each job of `linguachain-sweep -m` writes its run folder (`summary.json` and
`metrics.jsonl`) or, if it failed, `failed.json`. After the last job,
`SweepSummaryCallback.on_multirun_end` reads every job folder under the sweep
folder and writes `sweep_summary.csv`, `sweep_summary.md`,
`sweep_perplexity.png` and `sweep_final_perplexity.png` there.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tqdm import tqdm

logger = logging.getLogger(__name__)

FAILED_FILE = "failed.json"
SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MARKDOWN = "sweep_summary.md"
PERPLEXITY_PLOT = "sweep_perplexity.png"
FINAL_PERPLEXITY_PLOT = "sweep_final_perplexity.png"

# Summary numbers shown first, in this order; other numeric keys of
# summary.json follow in alphabetical order.
LEADING_NUMBERS = (
    "initial_test_perplexity",
    "final_test_perplexity",
    "final_test_bits_per_byte",
    "committed_rounds",
    "wall_seconds",
)


@dataclass
class JobResult:
    """One sweep job as read back from its folder."""

    number: int
    folder: Path
    overrides: dict[str, str]
    status: str  # "completed", "failed" or "incomplete"
    numbers: dict[str, int | float] = field(default_factory=dict)
    perplexity: list[tuple[int, float]] = field(default_factory=list)
    error: str = ""


def write_failed_job(output_dir: Path, error: BaseException) -> Path:
    """Record a job's exception in `failed.json` of its folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / FAILED_FILE
    record = {
        "error_type": type(error).__name__,
        "error": str(error),
        "traceback": "".join(traceback.format_exception(error)),
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def _job_number(folder: Path) -> int:
    hydra_file = folder / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        hydra = yaml.safe_load(hydra_file.read_text(encoding="utf-8")) or {}
        number = hydra.get("hydra", {}).get("job", {}).get("num")
        if isinstance(number, int):
            return number
    return int(folder.name) if folder.name.isdigit() else -1


def read_job(folder: Path) -> JobResult:
    """Read one job folder: overrides, status, summary numbers and perplexity."""
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides: dict[str, str] = {}
    for item in yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    job = JobResult(_job_number(folder), folder, overrides, "incomplete")

    summary_file = folder / "summary.json"
    failed_file = folder / FAILED_FILE
    if failed_file.is_file():
        record = json.loads(failed_file.read_text(encoding="utf-8"))
        job.status = "failed"
        job.error = f"{record['error_type']}: {record['error']}"
    elif summary_file.is_file():
        job.status = "completed"
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        job.numbers = {
            key: value
            for key, value in summary.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
    else:
        job.error = "no summary.json and no failed.json: the job was interrupted"

    metrics_file = folder / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("test_perplexity") is not None:
                    job.perplexity.append(
                        (int(row["round"]), float(row["test_perplexity"]))
                    )
    return job


def collect_jobs(sweep_dir: Path) -> list[JobResult]:
    """Read every job folder under `sweep_dir`, in job order."""
    folders = [path.parent.parent for path in sweep_dir.rglob(".hydra/overrides.yaml")]
    return sorted((read_job(folder) for folder in folders), key=lambda job: job.number)


def varying_keys(jobs: list[JobResult]) -> list[str]:
    """Return the override keys whose values differ between jobs (all if one job)."""
    keys: list[str] = []
    for job in jobs:
        keys += [key for key in job.overrides if key not in keys]
    if len(jobs) <= 1:
        return keys
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


def job_label(job: JobResult, keys: list[str]) -> str:
    """Label a job by its number and the overrides that tell it apart."""
    varying = " ".join(f"{key}={job.overrides.get(key, '')}" for key in keys)
    return f"job {job.number}: {varying}" if varying else f"job {job.number}"


def _format(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value)


def summary_table(
    jobs: list[JobResult], override_keys: list[str] | None = None
) -> tuple[list[str], list[list[Any]]]:
    """Return the header and rows of the sweep table (all override keys if None)."""
    if override_keys is None:
        override_keys = []
        for job in jobs:
            override_keys += [key for key in job.overrides if key not in override_keys]
    other_numbers = sorted(
        {key for job in jobs for key in job.numbers} - set(LEADING_NUMBERS)
    )
    numbers = [key for key in LEADING_NUMBERS if any(key in j.numbers for j in jobs)]
    numbers += other_numbers
    header = ["job", "status", *override_keys, *numbers, "error", "folder"]
    rows = []
    for job in jobs:
        rows.append(
            [
                job.number,
                job.status,
                *(job.overrides.get(key, "") for key in override_keys),
                *(job.numbers.get(key, "") for key in numbers),
                job.error,
                str(job.folder),
            ]
        )
    return header, rows


def write_csv(path: Path, jobs: list[JobResult]) -> None:
    """Write the sweep table with every override key as CSV."""
    header, rows = summary_table(jobs)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)


def _markdown_cell(value: Any) -> str:
    return _format(value).replace("|", "\\|").replace("\n", " ")


def write_markdown(path: Path, sweep_dir: Path, jobs: list[JobResult]) -> None:
    """Write the sweep table as Markdown: one column per override that varies."""
    keys = varying_keys(jobs)
    shared = {
        key: value
        for key, value in jobs[0].overrides.items()
        if key not in keys and all(job.overrides.get(key) == value for job in jobs)
    }
    header, rows = summary_table(jobs, keys)
    failed = sum(1 for job in jobs if job.status != "completed")
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{len(jobs)} jobs, {len(jobs) - failed} completed, {failed} failed or"
        " incomplete. Perplexity is measured on held-out text.",
        "",
    ]
    if shared:
        common = " ".join(f"`{key}={value}`" for key, value in shared.items())
        lines += [f"Overrides shared by every job: {common}.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        folder = Path(row[-1])
        if folder.is_relative_to(sweep_dir):
            row[-1] = str(folder.relative_to(sweep_dir))
        lines.append("| " + " | ".join(_markdown_cell(value) for value in row) + " |")
    lines += [
        "",
        f"![held-out perplexity per round]({PERPLEXITY_PLOT})",
        "",
        f"![final held-out perplexity per job]({FINAL_PERPLEXITY_PLOT})",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def plot_sweep(sweep_dir: Path, jobs: list[JobResult]) -> list[Path]:
    """Plot perplexity per round per job and the final perplexity of each job."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    keys = varying_keys(jobs)
    figure = Figure(figsize=(7, 4), layout="tight")
    axis = figure.subplots()
    for job in jobs:
        if job.perplexity:
            rounds, values = zip(*job.perplexity, strict=True)
            style = "-" if job.status == "completed" else ":"
            axis.plot(rounds, values, style, marker="o", label=job_label(job, keys))
    axis.set_xlabel("round")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("held-out perplexity")
    axis.set_yscale("log")
    axis.grid(True, which="both", alpha=0.3)
    if any(job.perplexity for job in jobs):
        axis.legend(fontsize="small")
    perplexity_path = sweep_dir / PERPLEXITY_PLOT
    figure.savefig(perplexity_path, dpi=100)

    figure = Figure(figsize=(7, 4), layout="tight")
    axis = figure.subplots()
    finished = [job for job in jobs if "final_test_perplexity" in job.numbers]
    axis.barh(
        [job_label(job, keys) for job in finished],
        [job.numbers["final_test_perplexity"] for job in finished],
    )
    axis.set_xlabel("final held-out perplexity")
    axis.invert_yaxis()
    final_path = sweep_dir / FINAL_PERPLEXITY_PLOT
    figure.savefig(final_path, dpi=100)
    return [perplexity_path, final_path]


def write_sweep_summary(sweep_dir: str | Path) -> list[Path]:
    """Write the CSV, Markdown table and plots of a sweep; return their paths."""
    sweep_dir = Path(sweep_dir).resolve()
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        logger.warning("No sweep jobs found under %s; no summary written", sweep_dir)
        return []
    write_csv(sweep_dir / SUMMARY_CSV, jobs)
    write_markdown(sweep_dir / SUMMARY_MARKDOWN, sweep_dir, jobs)
    plots = plot_sweep(sweep_dir, jobs)
    failed = [job for job in jobs if job.status != "completed"]
    logger.info(
        "Sweep summary of %d jobs (%d failed or incomplete) written to %s",
        len(jobs),
        len(failed),
        sweep_dir / SUMMARY_MARKDOWN,
    )
    return [sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MARKDOWN, *plots]


def count_jobs(task_overrides: list[str]) -> int | None:
    """Return how many jobs Hydra's basic sweeper makes of these overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides(task_overrides)
        batches = BasicSweeper.split_arguments(overrides, None)
    except Exception as error:  # noqa: BLE001 - the count only sizes a progress bar
        logger.info("Could not count the sweep's jobs (%s); no total shown", error)
        return None
    return len(batches[0])


# Failed jobs of each sweep this process ran, for linguachain-sweep's exit code.
FAILED_JOBS: list[int] = []


class SweepSummaryCallback(Callback):
    """Show sweep progress and write the sweep summary once every job has ended."""

    def __init__(self) -> None:
        self.progress: tqdm | None = None
        self.finished = 0
        self.failed = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the progress bar over the sweep's jobs."""
        total = count_jobs(list(config.hydra.overrides.task))
        logger.info("Sweep of %s jobs into %s", total or "?", config.hydra.sweep.dir)
        self.progress = tqdm(total=total, desc="sweep jobs", unit="job")

    def on_job_end(
        self, config: DictConfig, job_return: JobReturn, **kwargs: Any
    ) -> None:
        """Log the job's outcome and advance the progress bar."""
        if self.progress is None:
            return  # a single run, not a sweep
        self.finished += 1
        folder = Path(config.hydra.runtime.output_dir)
        failed = (folder / FAILED_FILE).is_file()
        self.failed += int(failed)
        # Hydra numbers job folders from 0, so the log names jobs the same way.
        logger.info(
            "Sweep job %d %s (%s); folder %s",
            self.finished - 1,
            "FAILED" if failed else "finished",
            " ".join(job_return.overrides or []),
            folder,
        )
        self.progress.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the sweep summary into the sweep folder."""
        if self.progress is not None:
            self.progress.close()
        write_sweep_summary(Path(config.hydra.sweep.dir))
        FAILED_JOBS.append(self.failed)
