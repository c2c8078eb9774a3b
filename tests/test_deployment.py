"""Flower's deployment engine: a SuperLink and three SuperNodes as real processes.

The test provisions CKKS kits with TLS material and SuperNode keys. It starts
`flower-superlink` with TLS and SuperNode authentication and three
authenticated `flower-supernode` processes. Then it runs two rounds of the micro
preset with CKKS secure aggregation and consensus (light VDF and proof of work)
through `flwr run <repo> <connection> --stream` from a throwaway FLWR_HOME.
Every node votes and signs with the BLS key of its kit and keeps its own SQLite
ledger replica. A fourth SuperNode with an unregistered key must be rejected,
and one SuperNode is killed after round 1 so that round 2 completes with the
other two, whose replicas must end at the server's head.

The cluster puts every host in its own network namespace and address where
namespaces can be created (root and iproute2), and otherwise runs every host on
127.0.0.1 with a warning. The server's ledger is SQLite, because a PostgreSQL
server on the machine's 127.0.0.1 cannot be reached from inside a namespace.
A simulation run in tests/test_consensus_run.py keeps its ledger in PostgreSQL.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import pytest

from typer.testing import CliRunner

from conftest import REPO_ROOT
from linguachain.cli import app as cli
from linguachain.deploy.local_cluster import LocalCluster, descendant_pids
from linguachain.deploy.netns import HostNetwork, namespaces_unavailable_reason
from linguachain.deploy.tls import generate_supernode_key_pair, provision_deployment
from linguachain.ledger.chain import Ledger, sqlite_url
from linguachain.privacy.kits import provision as provision_kits

NUM_NODES = 3
RUN_ID = "deploy"
RUN_TIMEOUT_SECONDS = 900

pytestmark = pytest.mark.skipif(
    not (Path(sys.executable).parent / "flower-superlink").exists(),
    reason="flower-superlink is not installed in this environment",
)


def run_config(wikitext: Path, results: Path, kit_dir: Path) -> str:
    """Return the `--run-config` of a two-round micro run that tolerates a lost node."""
    return " ".join(
        [
            "secure_aggregation.scheme='ckks'",
            f"secure_aggregation.kit_dir='{kit_dir}'",
            "consensus.enabled=true",
            "consensus.vdf_iterations=2000",
            "consensus.pow_difficulty_bits=4",
            "model.preset='micro'",
            f"data.path='{wikitext}'",
            "data.train_file='valid.txt'",
            "data.eval_blocks=16",
            "train.rounds=2",
            "train.local_steps=2",
            "train.batch_size=8",
            "federation.min_nodes=2",
            # Bounds how long a round waits for a node that never replies.
            "federation.timeout=300",
            f"output.dir='{results}'",
            f"output.run_id='{RUN_ID}'",
            "output.save_model=false",
            "output.prompts='The history of'",
            "output.max_new_tokens=4",
        ]
    )


def read_metrics(run_folder: Path) -> list[dict]:
    """Return the metrics rows written so far."""
    path = run_folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def network():
    """One network namespace per host, or None (127.0.0.1) where none can be made."""
    reason = namespaces_unavailable_reason()
    if reason is not None:
        warnings.warn(
            f"Network namespaces unavailable ({reason}), so the deployment test"
            " runs every host on 127.0.0.1.",
            stacklevel=1,
        )
        yield None
        return
    with HostNetwork(num_hosts=NUM_NODES + 1) as hosts:
        yield hosts


def test_deployment_tls_auth_and_lost_node(network, wikitext, tmp_path):
    results = tmp_path / "results"
    run_folder = results / RUN_ID
    hosts = [network.address(0)] if network else []
    kit_dir = tmp_path / "kits"
    provision_kits(kit_dir, NUM_NODES, paillier=False)
    kits = provision_deployment(kit_dir, NUM_NODES, superlink_hosts=hosts)
    intruder_key = tmp_path / "intruder" / "supernode.key"
    intruder_key.parent.mkdir()
    intruder_key.write_bytes(generate_supernode_key_pair()[0])
    intruder_key.chmod(0o600)

    cluster = LocalCluster(
        kits, run_folder / "logs", tmp_path / "flwr-home", network=network
    )
    try:
        cluster.start()
        nodes = cluster.list_nodes()
        assert len(nodes) == NUM_NODES
        assert all(node["status"] == "online" for node in nodes)

        # A SuperNode whose key was never registered is rejected and exits.
        intruder = cluster.start_supernode(0, private_key=intruder_key, name="intruder")
        assert intruder.process.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in intruder.log_path.read_text()
        assert len(cluster.list_nodes()) == NUM_NODES

        config = run_config(wikitext, results, kit_dir)
        run = cluster.start_flwr_command(
            [
                "run", str(REPO_ROOT), cluster.connection, "--stream",
                "--run-config", config,
            ],  # fmt: skip
            name="flwr-run",
        )

        # Kill SuperNode 2 once round 1 is committed; round 2 must go on without it.
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while len(read_metrics(run_folder)) < 2:
            assert run.process.poll() is None, run.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "round 1 did not finish in time"
            time.sleep(1.0)
        cluster.kill(cluster.supernode(2))

        code = run.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert code == 0, run.log_path.read_text()[-3000:]
    finally:
        cluster.stop()

    rows = read_metrics(run_folder)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[1]["nodes"] == NUM_NODES
    assert rows[2]["nodes"] == NUM_NODES - 1
    assert rows[2]["committed"]
    # Updates travelled as CKKS ciphertexts (float32 would be 4 bytes per parameter).
    assert rows[1]["bytes_per_param"] > 30
    assert rows[1]["rejected_replies"] == 0

    summary = json.loads((run_folder / "summary.json").read_text())
    assert summary["ledger"]["valid"]
    ledger_url = sqlite_url(run_folder / "ledger.db")
    assert summary["ledger"]["url"] == ledger_url
    ledger = Ledger(ledger_url)
    report = ledger.verify()
    ledger.close()
    assert report.valid
    # Genesis, then a version and a data block per round.
    assert report.num_blocks == 5
    assert report.head_hash == summary["ledger"]["head"]

    # Each surviving node holds its own replica, at the server's head and valid.
    runner = CliRunner()
    for node in range(NUM_NODES - 1):
        replica = cluster.replica_path(node)
        assert replica.is_file(), replica
        copy = Ledger.open(replica)
        head = copy.head()
        copy.close()
        assert head is not None and head.hash == report.head_hash, node
        verified = runner.invoke(cli, ["ledger", "verify", "--db", str(replica)])
        assert verified.exit_code == 0, verified.output

    # Every process wrote its log under the run folder, ClientApp records included.
    for node in range(NUM_NODES):
        log = (run_folder / "logs" / f"supernode-{node}.log").read_text()
        assert f"Node {node}, round 1" in log
    for name in ("superlink", "supernode-0", "supernode-1", "supernode-2"):
        assert (run_folder / "logs" / f"{name}.log").stat().st_size > 0
    for name in ("intruder", "flwr-run"):
        assert (run_folder / "logs" / f"{name}.log").stat().st_size > 0


def test_cluster_stops_processes_on_error(tmp_path):
    kits = provision_deployment(tmp_path / "kits", 1)
    cluster = LocalCluster(kits, tmp_path / "logs", tmp_path / "flwr-home")
    started: list[int] = []
    with pytest.raises(RuntimeError, match="failure inside the cluster"):
        with cluster:
            cluster.start_superlink()
            started = [cluster.superlink.pid, *descendant_pids(cluster.superlink.pid)]
            raise RuntimeError("failure inside the cluster")
    # The SuperLink and the SuperExec it started are gone.
    assert len(started) >= 2
    for pid in started:
        assert process_state(pid) in ("", "Z"), pid


def process_state(pid: int) -> str:
    """Return the /proc state letter of `pid`: "" if gone, "Z" for a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]
