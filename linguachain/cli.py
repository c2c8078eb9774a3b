"""The `linguachain` command line: SuperLink, kits, ledger, reports, generation."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Federated GPT-2 training with a verifiable ledger.", no_args_is_help=True)
ledger_app = typer.Typer(help="Inspect and verify a ledger.", no_args_is_help=True)
superlink_app = typer.Typer(
    help="Manage the local simulation SuperLink that `flwr run .` reuses.",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")
app.add_typer(superlink_app, name="superlink")


@superlink_app.command("start")
def superlink_start(
    num_supernodes: int = typer.Option(4, min=1, help="Virtual SuperNodes."),
    cpus: int = typer.Option(1, min=1, help="CPUs reserved for each ClientApp."),
) -> None:
    """Start the local SuperLink with run-time dependency installation off."""
    from linguachain import superlink

    try:
        typer.echo(superlink.start(num_supernodes, cpus))
    except RuntimeError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from error


@superlink_app.command("stop")
def superlink_stop() -> None:
    """Stop the local SuperLink that `linguachain superlink start` started."""
    from linguachain import superlink

    typer.echo(superlink.stop())


@superlink_app.command("status")
def superlink_status() -> None:
    """Show whether the local SuperLink runs and who started it."""
    from linguachain import superlink

    pid = superlink.read_pid()
    if superlink.is_running():
        owner = f"started by linguachain, PID {pid}" if pid else "not started by linguachain"
        typer.echo(f"running ({owner})")
    else:
        typer.echo("not running")


def _open_ledger(db: str):  # type: ignore[no-untyped-def]
    from linguachain.ledger.chain import Ledger

    if "://" not in db and not Path(db).is_file():
        typer.echo(f"Error: ledger file not found: {db}", err=True)
        raise typer.Exit(2)
    return Ledger.open(db)


@ledger_app.command("show")
def ledger_show(db: str = typer.Option(..., help="Ledger SQLite file or database URL.")) -> None:
    """Print every block: height, kind, hash, parent and payload."""
    ledger = _open_ledger(db)
    for block in ledger.blocks():
        payload = json.loads(block.payload)
        typer.echo(
            f"{block.height:>5}  {block.kind:<11} {block.hash[:16]}  parent"
            f" {block.parent_hash[:16]}  {json.dumps(payload)[:160]}"
        )
    ledger.close()


@ledger_app.command("verify")
def ledger_verify(db: str = typer.Option(..., help="Ledger SQLite file or database URL.")) -> None:
    """Replay the chain; exit 1 and name the first invalid block if any."""
    ledger = _open_ledger(db)
    report = ledger.verify()
    ledger.close()
    typer.echo(str(report))
    if not report.valid:
        raise typer.Exit(1)


@app.command()
def provision(
    nodes: int = typer.Option(..., min=1, help="Number of node kits to write."),
    out: Path = typer.Option(..., help="Folder for the kits; must not hold kits yet."),
    ckks_parameters: str = typer.Option(
        "sum", help="CKKS parameter set: sum (addition only) or scoring (depth 2)."
    ),
    paillier_modulus_bits: int = typer.Option(
        2048, min=1024, help="Bits of the Paillier modulus n."
    ),
    threshold: int = typer.Option(
        0, min=0, help="Paillier partial decryptions needed; 0 means a majority."
    ),
    paillier: bool = typer.Option(
        True, help="Deal threshold Paillier keys (takes seconds for safe primes)."
    ),
) -> None:
    """Write one kit per node (node-<i>/, secret keys) and one for the server."""
    from linguachain.logs import configure_logging
    from linguachain.privacy.kits import provision as provision_kits

    configure_logging()
    try:
        paths = provision_kits(
            out,
            nodes,
            ckks_parameter_set=ckks_parameters,
            paillier_modulus_bits=paillier_modulus_bits,
            threshold=threshold or None,
            paillier=paillier,
        )
    except (ValueError, FileExistsError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"server kit: {paths.server}")
    for index, path in enumerate(paths.nodes):
        typer.echo(f"node {index} kit: {path}")
    typer.echo(
        "Copy each node folder to its host only and point its node-config key "
        "kit-path at it; set secure_aggregation.kit_dir to this folder on the server."
    )


@app.command()
def report(
    run: Path = typer.Option(..., help="Run folder (results/<run-id>/) to report on."),
) -> None:
    """Rebuild a run's self-contained report.html from its folder."""
    from linguachain.server_app.report import write_report

    try:
        path = write_report(run)
    except FileNotFoundError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(str(path))


@app.command()
def generate(
    model: Path = typer.Option(..., help="Folder written by save_pretrained."),
    prompt: str = typer.Option(..., help="Text to continue."),
    max_new_tokens: int = typer.Option(40, min=1, help="Tokens to generate."),
    top_k: int = typer.Option(0, min=0, help="Sample from the top k tokens; 0 is greedy."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Continue a prompt with a saved model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from linguachain.task.generate import generate_text

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()

    if not (model / "config.json").is_file():
        typer.echo(f"Error: no saved model in {model} (config.json missing).", err=True)
        raise typer.Exit(2)
    loaded = AutoModelForCausalLM.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    typer.echo(generate_text(loaded, tokenizer, prompt, max_new_tokens, top_k, seed))


if __name__ == "__main__":
    app()
