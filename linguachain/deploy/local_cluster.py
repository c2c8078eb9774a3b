"""A SuperLink and N SuperNodes as local processes, with TLS and node authentication.

`LocalCluster` runs the same commands as a real deployment across hosts
(docs/deployment.md): `flower-superlink` with TLS and `--enable-supernode-auth`,
`flwr supernode register` for every node's public key, and one
`flower-supernode` per node with the CA certificate, its private key and its
node config. The node config names the node's kit (`kit-path`), its BLS key
(`bls-key`, from the kit) and its own ledger replica (`ledger-url`, a SQLite
file in its kit folder unless `ledger_dir` is set). Each process writes its output to `<log_dir>/superlink.log` or
`<log_dir>/supernode-<i>.log`. Every process is stopped by its PID, together with
the SuperExec and ClientApp processes it started, in `stop()` (also called when
a `with` block exits on an error).

With a `HostNetwork` each process runs in its own network namespace, and the
SuperNodes reach the SuperLink at its private address. Without one, everything
listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from linguachain.deploy.netns import HostNetwork
from linguachain.deploy.tls import DeploymentPaths
from linguachain.ledger.keys import BLS_KEY_FILE

logger = logging.getLogger(__name__)

DEFAULT_CONNECTION = "linguachain-local"
STARTUP_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 10.0
REPLICA_FILE = "ledger.db"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def descendant_pids(pid: int) -> list[int]:
    """Return the PIDs of every live descendant of `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in brackets may contain spaces; fields follow its ")".
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def format_node_config(values: dict[str, str | int]) -> str:
    """Format a node config for `flower-supernode --node-config`."""
    parts = []
    for key, value in values.items():
        if isinstance(value, int):
            parts.append(f"{key}={value}")
        elif "'" in value or "\n" in value:
            raise ValueError(
                f"Node config value for '{key}' contains a quote: {value!r}"
            )
        else:
            parts.append(f"{key}='{value}'")  # TOML literal string: no escapes
    return " ".join(parts)


@dataclass
class ClusterProcess:
    """One process the cluster started, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """Return the process ID."""
        return self.process.pid


@dataclass
class LocalCluster:
    """A SuperLink and its SuperNodes on this machine."""

    kits: DeploymentPaths
    log_dir: Path
    flwr_home: Path
    connection: str = DEFAULT_CONNECTION
    network: HostNetwork | None = None
    node_config: dict[int, dict[str, str | int]] = field(default_factory=dict)
    # Folder of the nodes' ledger replicas (`node-<i>.db`); None keeps each
    # replica in its node's kit folder.
    ledger_dir: Path | None = None
    superlink: ClusterProcess | None = None
    supernodes: dict[str, ClusterProcess] = field(default_factory=dict)
    commands: list[ClusterProcess] = field(default_factory=list)
    superlink_address: str = ""

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        bin_dir = Path(sys.executable).parent
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.flwr_home),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    @property
    def num_nodes(self) -> int:
        """Return the number of provisioned SuperNodes."""
        return len(self.kits.node_folders)

    def replica_path(self, node: int) -> Path:
        """Return the SQLite file of node `node`'s ledger replica."""
        if self.ledger_dir is not None:
            return self.ledger_dir / f"node-{node}.db"
        return self.kits.node_folders[node] / REPLICA_FILE

    def node_values(self, node: int) -> dict[str, str | int]:
        """Return node `node`'s node config: partition, kit, BLS key and replica."""
        kit = self.kits.node_folders[node]
        values: dict[str, str | int] = {
            "partition-id": node,
            "num-partitions": self.num_nodes,
            "kit-path": str(kit),
            "ledger-url": str(self.replica_path(node)),
        }
        if (kit / BLS_KEY_FILE).is_file():
            values["bls-key"] = str(kit / BLS_KEY_FILE)
        return {**values, **self.node_config.get(node, {})}

    def start(self, register: list[int] | None = None) -> None:
        """Start the SuperLink, register nodes, start them and wait until online."""
        nodes = list(range(self.num_nodes)) if register is None else register
        self.start_superlink()
        for node in nodes:
            self.register_supernode(node)
        for node in nodes:
            self.start_supernode(node)
        self.wait_for_online(len(nodes))

    def start_superlink(self) -> None:
        """Start `flower-superlink` with TLS and SuperNode authentication."""
        host = self.network.address(0) if self.network else "127.0.0.1"
        port = free_port()
        command = [
            "flower-superlink",
            "--ssl-ca-certfile", str(self.kits.ca_certificate),
            "--ssl-certfile", str(self.kits.superlink_certificate),
            "--ssl-keyfile", str(self.kits.superlink_private_key),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--host", host,
            "--port", str(port),
        ]  # fmt: skip
        self.superlink = self._spawn("superlink", command, host=0)
        self.superlink_address = f"{host}:{port}"
        self._wait_for_log(self.superlink, "Uvicorn running on")
        self._write_connection()
        logger.info(
            "SuperLink listens on %s (PID %d)",
            self.superlink_address,
            self.superlink.pid,
        )

    def register_supernode(self, node: int) -> int:
        """Register node `node`'s public key with `flwr supernode register`."""
        output = self.run_flwr_command(
            [
                "supernode", "register", str(self.kits.supernode_public_keys[node]),
                self.connection, "--format", "json",
            ]  # fmt: skip
        )
        node_id = int(_parse_json(output)["node-id"])
        logger.info("Registered SuperNode %d as node %d", node, node_id)
        return node_id

    def start_supernode(
        self, node: int, private_key: Path | None = None, name: str = ""
    ) -> ClusterProcess:
        """Start `flower-supernode` with node `node`'s config and its key.

        `private_key` replaces the node's own key, for example with an unregistered
        one, and `name` names the process and its log (default `supernode-<node>`).
        """
        if not self.superlink_address:
            raise RuntimeError("Start the SuperLink before its SuperNodes.")
        values = self.node_values(node)
        if self.ledger_dir is not None:
            self.ledger_dir.mkdir(parents=True, exist_ok=True)
        key = private_key or self.kits.supernode_private_key(node)
        command = [
            "flower-supernode",
            "--superlink", self.superlink_address,
            "--root-certificates", str(self.kits.node_ca_certificate(node)),
            "--auth-supernode-private-key", str(key),
            "--node-config", format_node_config(values),
            "--host", "127.0.0.1",
            "--port", str(free_port()),
        ]  # fmt: skip
        process = self._spawn(name or f"supernode-{node}", command, host=node + 1)
        self.supernodes[process.name] = process
        return process

    def supernode(self, node: int) -> ClusterProcess:
        """Return the process of SuperNode `node`."""
        return self.supernodes[f"supernode-{node}"]

    def list_nodes(self) -> list[dict]:
        """Return `flwr supernode ls` as a list of node records."""
        output = self.run_flwr_command(
            ["supernode", "ls", self.connection, "--format", "json"]
        )
        return list(_parse_json(output)["nodes"])

    def wait_for_online(
        self, count: int, timeout: float = STARTUP_TIMEOUT_SECONDS
    ) -> None:
        """Wait until `count` SuperNodes are online, or raise naming the logs."""
        deadline = time.monotonic() + timeout
        while True:
            online = [n for n in self.list_nodes() if n["status"] == "online"]
            if len(online) >= count:
                logger.info("%d SuperNodes online", len(online))
                return
            for process in self.supernodes.values():
                if process.process.poll() is not None:
                    raise RuntimeError(
                        f"{process.name} exited with code {process.process.returncode};"
                        f" see {process.log_path}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(online)} of {count} SuperNodes came online within"
                    f" {timeout:.0f} s; see the logs in {self.log_dir}"
                )
            time.sleep(1.0)

    def run_flwr_command(
        self, args: list[str], timeout: float = 120.0, check: bool = True
    ) -> str:
        """Run `flwr ARGS` against this cluster's FLWR_HOME and return its stdout."""
        command = self._prefix(0) + ["flwr", *args]
        result = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"`flwr {' '.join(args)}` failed with code {result.returncode}:"
                f" {result.stdout[-2000:]} {result.stderr[-2000:]}"
            )
        return result.stdout

    def start_flwr_command(self, args: list[str], name: str) -> ClusterProcess:
        """Start `flwr ARGS` in the background, logging to `<log_dir>/<name>.log`."""
        process = self._spawn(name, ["flwr", *args], host=0)
        self.commands.append(process)
        return process

    def kill(self, process: ClusterProcess) -> None:
        """Kill one process and its descendants at once with SIGKILL."""
        for pid in [*descendant_pids(process.pid), process.pid]:
            _signal(pid, signal.SIGKILL)
        process.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        logger.info("Killed %s (PID %d)", process.name, process.pid)

    def stop(self) -> None:
        """Stop `flwr` commands, SuperNodes, then the SuperLink, each by its PID."""
        processes = [*self.commands, *self.supernodes.values()]
        if self.superlink is not None:
            processes.append(self.superlink)
        for process in processes:
            try:
                self._stop_process(process)
            except (OSError, subprocess.SubprocessError) as error:
                # Go on, so one stuck process does not leave the others running.
                logger.error(
                    "Failed to stop %s (PID %d): %s", process.name, process.pid, error
                )
        self.commands.clear()
        self.supernodes.clear()
        self.superlink = None

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_connection(self) -> None:
        # The connection is written by Flower's config writer in a child process,
        # so FLWR_HOME of this process stays untouched.
        code = (
            "import sys; from linguachain.deploy.connection import add_connection;"
            " add_connection(sys.argv[1], sys.argv[2], sys.argv[3])"
        )
        subprocess.run(
            [
                sys.executable, "-c", code, self.connection, self.superlink_address,
                str(self.kits.ca_certificate),
            ],  # fmt: skip
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _prefix(self, host: int) -> list[str]:
        return self.network.command_prefix(host) if self.network else []

    def _spawn(self, name: str, command: list[str], host: int) -> ClusterProcess:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(  # noqa: S603 - argument list built above
                self._prefix(host) + command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        logger.info("Started %s (PID %d), log %s", name, process.pid, log_path)
        return ClusterProcess(name, process, log_path)

    def _wait_for_log(self, process: ClusterProcess, text: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while text not in process.log_path.read_text(errors="replace"):
            if process.process.poll() is not None:
                raise RuntimeError(
                    f"{process.name} exited with code {process.process.returncode};"
                    f" see {process.log_path}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{process.name} did not start; see {process.log_path}"
                )
            time.sleep(0.5)

    def _stop_process(self, process: ClusterProcess) -> None:
        # Flower starts SuperExec and app processes in sessions of their own, so
        # collect them before the parent exits and stop each by PID.
        if process.process.poll() is not None:
            return
        pids = [*descendant_pids(process.pid), process.pid]
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        try:
            process.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("%s ignored SIGTERM; sending SIGKILL", process.name)
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)
        for pid in pids:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        process.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        logger.info("Stopped %s (PID %d)", process.name, process.pid)


def _parse_json(output: str) -> dict:
    start = output.find("{")
    if start < 0:
        raise RuntimeError(f"flwr printed no JSON object: {output[-2000:]}")
    return json.loads(output[start:])


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
