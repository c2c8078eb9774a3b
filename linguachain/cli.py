"""The `linguachain` command line: SuperLinks, kits, deployment, ledger, reports."""

from __future__ import annotations

import json
from pathlib import Path

import typer

# Tracebacks leave out local variables, because those include secret keys.
app = typer.Typer(
    help="Federated GPT-2 training with a verifiable ledger.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
ledger_app = typer.Typer(help="Inspect and verify a ledger.", no_args_is_help=True)
superlink_app = typer.Typer(
    help="Manage the local simulation SuperLink that `flwr run .` reuses.",
    no_args_is_help=True,
)
connection_app = typer.Typer(
    help="Write SuperLink connections to Flower's config file.", no_args_is_help=True
)
cluster_app = typer.Typer(
    help="Run a SuperLink and SuperNodes with TLS on this machine.",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")
app.add_typer(superlink_app, name="superlink")
app.add_typer(connection_app, name="connection")
app.add_typer(cluster_app, name="cluster")


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
        # Like `systemctl status`, a stopped service is a non-zero exit.
        raise typer.Exit(3)


@app.command("provision-deploy")
def provision_deploy(
    nodes: int = typer.Option(..., min=1, help="Number of SuperNodes."),
    out: Path = typer.Option(..., help="Output folder (server/, node-<i>/, ca/)."),
    superlink_host: list[str] = typer.Option(
        [],
        help="DNS name or IP address the SuperLink is reached at; repeat for several."
        " 127.0.0.1 and localhost are always included.",
    ),
    valid_days: int = typer.Option(365, min=1, help="Certificate lifetime in days."),
) -> None:
    """Write only the CA, SuperLink TLS certificate and SuperNode key pairs.

    `linguachain provision` writes these too; this command adds them to kits
    provisioned without them, or renews them in a fresh folder.
    """
    from linguachain.deploy.tls import provision_deployment

    try:
        paths = provision_deployment(out, nodes, superlink_host, valid_days)
    except (FileExistsError, ValueError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"SuperLink certificate: {paths.superlink_certificate}")
    typer.echo(f"SuperNode kits: {', '.join(str(f) for f in paths.node_folders)}")
    typer.echo(f"Keep {paths.ca_private_key} offline; no host needs it to run.")


@connection_app.command("add")
def connection_add(
    name: str = typer.Argument(..., help="Connection name used by `flwr run . NAME`."),
    address: str = typer.Option(..., help="SuperLink address as host:port."),
    root_certificates: Path | None = typer.Option(
        None, help="CA certificate that signed the SuperLink certificate (ca.pem)."
    ),
    insecure: bool = typer.Option(False, help="Connect without TLS."),
) -> None:
    """Add or replace a SuperLink connection in $FLWR_HOME/config.toml."""
    from linguachain.deploy.connection import add_connection

    try:
        config_file = add_connection(name, address, root_certificates, insecure)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"Wrote connection '{name}' ({address}) to {config_file}")


@cluster_app.command("up")
def cluster_up(
    kits: Path = typer.Option(
        ..., help="Folder written by `linguachain provision-deploy`."
    ),
    logs: Path = typer.Option(
        Path("results/cluster-logs"),
        help="Folder for the SuperLink and SuperNode logs.",
    ),
    data_path: Path | None = typer.Option(
        None, help="Text folder every node reads (node config `data-path`)."
    ),
    connection: str = typer.Option(
        "linguachain-local", help="Connection name to write."
    ),
) -> None:
    """Start a SuperLink and one SuperNode per kit on 127.0.0.1 until Ctrl-C."""
    import signal
    import time

    from flwr.supercore.utils import get_flwr_home

    from linguachain.deploy.local_cluster import LocalCluster
    from linguachain.deploy.tls import NODE_DIR_PREFIX, deployment_paths

    num_nodes = len(list(kits.glob(f"{NODE_DIR_PREFIX}*")))
    paths = deployment_paths(kits, num_nodes)
    if num_nodes == 0 or not paths.superlink_certificate.is_file():
        typer.echo(
            f"Error: no deployment kits in {kits}; run `linguachain provision-deploy"
            f" --nodes 2 --out {kits}` first.",
            err=True,
        )
        raise typer.Exit(2)
    node_config: dict[int, dict[str, str | int]] = {}
    if data_path is not None:
        folder = str(data_path.resolve())
        node_config = {i: {"data-path": folder} for i in range(num_nodes)}
    cluster = LocalCluster(
        paths, logs.resolve(), get_flwr_home(), connection, node_config=node_config
    )
    # SIGTERM ends the wait below the same way Ctrl-C does, so the finally runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cluster.start()
        typer.echo(
            f"SuperLink at {cluster.superlink_address}, {num_nodes} SuperNodes online;"
            f" logs in {logs}. Run `flwr run . {connection} --stream` from the"
            " project folder; press Ctrl-C to stop every process."
        )
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        typer.echo("Stopping the cluster")
    except (RuntimeError, TimeoutError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from error
    finally:
        cluster.stop()


def _open_ledger(db: str):  # type: ignore[no-untyped-def]
    """Open an existing ledger, never creating tables in a file without one."""
    import sqlite3

    from linguachain.ledger.chain import Ledger

    if "://" not in db:
        if not Path(db).is_file():
            typer.echo(f"Error: ledger file not found: {db}", err=True)
            raise typer.Exit(2)
        try:
            with sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True) as probe:
                query = "SELECT name FROM sqlite_master WHERE type='table'"
                tables = {row[0] for row in probe.execute(query)}
        except sqlite3.DatabaseError as error:
            typer.echo(f"Error: {db} is not a SQLite database ({error}).", err=True)
            raise typer.Exit(2) from error
        if "blocks" not in tables:
            typer.echo(
                f"Error: {db} contains no ledger (no blocks table); pass a run's ledger.db.",
                err=True,
            )
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


@ledger_app.command("balances")
def ledger_balances(
    db: str = typer.Option(..., help="Ledger SQLite file or database URL."),
    full: bool = typer.Option(
        False, "--full", help="Print whole account ids, as `transfer --to` takes them."
    ),
) -> None:
    """Print each account's LinguaCoin balance, stake and nonce, and the supply."""
    from linguachain.ledger.constants import BASE_UNITS_PER_LINGUACOIN as UNIT

    ledger = _open_ledger(db)
    context = ledger.context()
    width = 96 if full else 20
    typer.echo(f"{'account':<{width}} {'balance':>18} {'stake':>18} {'nonce':>6}")
    total = 0
    for account in ledger.accounts():
        total += account.balance + account.stake
        typer.echo(
            f"{account.account[:width]} {account.balance / UNIT:>18.8f}"
            f" {account.stake / UNIT:>18.8f} {account.nonce:>6}"
        )
    minted, burned = context.accounts.minted, context.accounts.burned
    typer.echo(
        f"total supply {total / UNIT:.8f} LinguaCoin (minted {minted / UNIT:.8f},"
        f" burned {burned / UNIT:.8f})"
    )
    ledger.close()


@ledger_app.command("attestation")
def ledger_attestation(
    db: str = typer.Option(..., help="Ledger SQLite file or database URL."),
    height: int = typer.Option(..., min=1, help="Block height."),
    validator: str = typer.Option(..., help="Validator account id (96 hex characters)."),
) -> None:
    """Print a validator's stored signature on the block at a height, as JSON.

    Two of these for one validator and height, taken from ledgers that hold
    different blocks there, are the evidence that `ledger slash` submits.
    """
    from sqlalchemy import select

    from linguachain.ledger.models import AttestationRow, Block

    ledger = _open_ledger(db)
    with ledger.sessions() as session:
        block = session.scalars(select(Block).where(Block.height == height)).first()
        row = session.scalars(
            select(AttestationRow).where(
                AttestationRow.block_height == height,
                AttestationRow.validator == validator,
            )
        ).first()
    ledger.close()
    if block is None or row is None:
        typer.echo(
            f"Error: no signature of validator {validator[:16]} on a block at height"
            f" {height} in {db}: check the height and the account id with"
            " `linguachain ledger show`",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(
        json.dumps(
            {
                "validator": validator,
                "height": height,
                "block_hash": block.hash,
                "signature": bytes(row.signature).hex(),
            },
            indent=2,
        )
    )


@ledger_app.command("slash")
def ledger_slash(
    first: Path = typer.Option(..., help="JSON attestation from `ledger attestation`."),
    second: Path = typer.Option(..., help="A conflicting attestation at that height."),
    db: str = typer.Option(..., help="The server's ledger SQLite file or database URL."),
) -> None:
    """Check double-sign evidence and queue it; the next transaction block slashes."""
    from linguachain.ledger.chain import evidence_to_json
    from linguachain.ledger.consensus import evidence_from_json
    from linguachain.ledger.constants import TransactionError
    from linguachain.ledger.transactions import check_double_sign_evidence

    try:
        attestations = {
            "first": json.loads(first.read_text()),
            "second": json.loads(second.read_text()),
        }
        evidence = evidence_from_json(json.dumps(attestations))
        check_double_sign_evidence(evidence)
    except (OSError, ValueError, KeyError, TypeError) as error:
        # TransactionError is a ValueError: invalid or non-conflicting evidence.
        kind = "invalid" if isinstance(error, TransactionError) else "unreadable"
        typer.echo(f"Error: {kind} evidence: {error}", err=True)
        raise typer.Exit(1) from error
    ledger = _open_ledger(db)
    offender = evidence.first.validator
    stake = ledger.context().accounts.stakes.get(offender, 0)
    if stake <= 0:
        ledger.close()
        typer.echo(
            f"Error: validator {offender[:16]} has no stake in {db}, so there is"
            " nothing to slash",
            err=True,
        )
        raise typer.Exit(1)
    entry_hash = ledger.submit("evidence", evidence_to_json(evidence))
    ledger.close()
    typer.echo(
        f"queued double-sign evidence {entry_hash} against {offender[:16]} (stake"
        f" {stake}); the next round's transaction block slashes it"
    )


@app.command()
def transfer(
    kit: Path = typer.Option(..., help="Node kit folder or BLS key file of the sender."),
    to: str = typer.Option(..., help="Recipient account id (96 hex characters)."),
    amount: int = typer.Option(..., min=1, help="Amount in base units (1e-8 coin)."),
    db: str = typer.Option(..., help="The server's ledger SQLite file or database URL."),
) -> None:
    """Sign a transfer with the kit's BLS key and queue it for the next block."""
    from linguachain.ledger.constants import TransactionError
    from linguachain.ledger.keys import read_validator_key
    from linguachain.ledger.transactions import (
        Transaction,
        apply_transaction,
        deserialize_transaction,
        serialize_transaction,
        sign_transaction,
    )

    from linguachain.ledger import bls
    from linguachain.ledger.transactions import is_account_id

    key = read_validator_key(kit)
    if not is_account_id(to) or not bls.key_validate(bytes.fromhex(to)):
        typer.echo(
            f"Error: --to {to!r} is not an account id: use the 96-hex-character BLS"
            " public key of the recipient (`public_key` in its kit's bls_key.json, or"
            " `linguachain ledger balances --full`).",
            err=True,
        )
        raise typer.Exit(2)
    if to == key.account:
        typer.echo("Error: --to is the sender's own account; a transfer needs another.",
                   err=True)
        raise typer.Exit(2)
    ledger = _open_ledger(db)
    state = ledger.context().accounts
    try:
        # Queued transfers of this sender come first, so nonces follow them.
        for entry in ledger.mempool():
            queued = deserialize_transaction(entry.encoded.encode("ascii"))
            if entry.kind == "transfer" and queued.sender == key.account:
                state = apply_transaction(state, queued)
        tx = Transaction(
            "transfer", key.account, to, amount, state.nonces.get(key.account, 0) + 1
        )
        apply_transaction(state, tx)
        tx = sign_transaction(tx, key.secret_key)
    except TransactionError as error:
        typer.echo(f"Error: {error}", err=True)
        ledger.close()
        raise typer.Exit(1) from error
    entry_hash = ledger.submit("transfer", serialize_transaction(tx).decode("ascii"))
    ledger.close()
    typer.echo(
        f"queued transfer {entry_hash} (nonce {tx.nonce}); the next round's"
        " transaction block includes it"
    )


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
    superlink_host: list[str] = typer.Option(
        [],
        help="DNS name or IP address the SuperLink is reached at, for its TLS"
        " certificate; repeat for several. 127.0.0.1 and localhost are included.",
    ),
) -> None:
    """Write one kit per node (node-<i>/, secret keys) and one for the server.

    The kits also get the deployment material: a CA (ca/), the SuperLink's TLS
    certificate (server/) and one SuperNode authentication key pair per node.
    """
    from linguachain.deploy.tls import provision_deployment
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
        deployment = provision_deployment(out, nodes, superlink_host)
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
    typer.echo(
        f"Keep {deployment.ca_private_key} offline; no host needs it to run."
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
    model: Path = typer.Option(None, help="Folder written by save_pretrained."),
    version: str = typer.Option(
        None, help="Model hash of a final version block; needs --run."
    ),
    run: Path = typer.Option(
        None, help="Run folder holding ledger.db, weights/, tokenizer/, config.yaml."
    ),
    prompt: str = typer.Option(..., help="Text to continue."),
    max_new_tokens: int = typer.Option(40, min=1, help="Tokens to generate."),
    top_k: int = typer.Option(0, min=0, help="Sample from the top k tokens; 0 is greedy."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Continue a prompt with a saved model."""
    if not prompt:
        typer.echo("Error: --prompt is empty; pass the text to continue.", err=True)
        raise typer.Exit(2)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from linguachain.task.generate import generate_text

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()

    if version is not None:
        loaded, tokenizer = _load_version(version, run)
    elif model is None:
        typer.echo("Error: pass --model DIR or --version HASH --run DIR.", err=True)
        raise typer.Exit(2)
    elif not (model / "config.json").is_file():
        typer.echo(f"Error: no saved model in {model} (config.json missing).", err=True)
        raise typer.Exit(2)
    else:
        loaded = AutoModelForCausalLM.from_pretrained(model)
        tokenizer = AutoTokenizer.from_pretrained(model)
    typer.echo(generate_text(loaded, tokenizer, prompt, max_new_tokens, top_k, seed))


def _load_version(version: str, run: Path | None):  # type: ignore[no-untyped-def]
    """Load a committed model after checking it against a final version block."""
    import yaml
    from transformers import AutoTokenizer

    from linguachain.config import from_nested
    from linguachain.ledger.store import load_weights
    from linguachain.task.model import build_model, set_weights

    if run is None or not (run / "ledger.db").is_file():
        typer.echo("Error: --version needs --run with the run folder's ledger.db.", err=True)
        raise typer.Exit(2)
    ledger = _open_ledger(str(run / "ledger.db"))
    report = ledger.verify()
    committed = ledger.model_version(version)
    ledger.close()
    if not report.valid:
        typer.echo(f"Error: the ledger does not verify: {report}", err=True)
        raise typer.Exit(1)
    if committed is None:
        typer.echo(f"Error: no final version block commits model {version}.", err=True)
        raise typer.Exit(1)
    try:
        # The store recomputes the hash of what it read.
        weights = load_weights(run / "weights", version)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from error
    config = from_nested(yaml.safe_load((run / "config.yaml").read_text()))
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    model = build_model(config.model, tokenizer, config.data.block_size)
    set_weights(model, weights)
    return model, tokenizer


def main() -> None:
    """Run the command line, printing an expected failure as one error line."""
    from zipfile import BadZipFile

    from sqlalchemy.exc import DatabaseError

    try:
        app()
    except (OSError, ValueError, DatabaseError, BadZipFile) as error:
        typer.echo(f"Error: {error}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
