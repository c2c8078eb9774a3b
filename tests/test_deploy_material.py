"""Deployment material: TLS certificates, SuperNode keys, node config, connections."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)
from flwr.cli.supernode.register import try_load_public_key
from typer.testing import CliRunner

from linguachain.cli import app as cli
from linguachain.client_app.node_config import read_node_config
from linguachain.deploy.connection import add_connection
from linguachain.deploy.local_cluster import descendant_pids, format_node_config
from linguachain.deploy.tls import provision_deployment


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    """Deployment material for two nodes and a SuperLink also reached as 10.9.8.7."""
    out = tmp_path_factory.mktemp("kits")
    return provision_deployment(out, 2, superlink_hosts=["10.9.8.7", "link.example"])


def test_private_keys_are_owner_only(kits):
    private = [kits.ca_private_key, kits.superlink_private_key]
    private += [kits.supernode_private_key(i) for i in range(2)]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in kits.node_folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_superlink_certificate_names_hosts(kits):
    certificate = x509.load_pem_x509_certificate(kits.superlink_certificate.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    addresses = {str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)}
    dns_names = set(names.value.get_values_for_type(x509.DNSName))
    assert addresses == {"127.0.0.1", "10.9.8.7"}
    assert dns_names == {"localhost", "link.example"}


def tls_handshake(kits, ca_file: Path, server_hostname: str) -> bytes:
    """Serve the SuperLink certificate on 127.0.0.1 and read 2 bytes as a client."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(kits.superlink_certificate, kits.superlink_private_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass  # the client rejected the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_context = ssl.create_default_context(cafile=str(ca_file))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_context.wrap_socket(raw, server_hostname=server_hostname) as tls:
                return tls.recv(2)
    finally:
        thread.join(timeout=10)
        listener.close()


def test_tls_handshake_verifies_with_ca(kits):
    assert tls_handshake(kits, kits.node_ca_certificate(0), "127.0.0.1") == b"ok"


def test_tls_handshake_rejects_unlisted_host(kits):
    with pytest.raises(ssl.SSLCertVerificationError, match="10.0.0.99"):
        tls_handshake(kits, kits.ca_certificate, "10.0.0.99")


def test_tls_handshake_rejects_other_ca(kits, tmp_path):
    other = provision_deployment(tmp_path / "other", 1)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(kits, other.ca_certificate, "127.0.0.1")


def test_supernode_keys_load_as_flower_does(kits):
    private = load_ssh_private_key(kits.supernode_private_key(0).read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    public = load_ssh_public_key(kits.supernode_public_keys[0].read_bytes())
    assert public.public_numbers() == private.public_key().public_numbers()
    # `flwr supernode register` accepts the public key file as written.
    assert try_load_public_key(kits.supernode_public_keys[0]).startswith(b"-----BEGIN")


def test_supernode_keys_differ(kits):
    first = kits.supernode_public_keys[0].read_bytes()
    second = kits.supernode_public_keys[1].read_bytes()
    assert first != second


def test_provision_refuses_to_overwrite(kits):
    out = kits.ca_certificate.parent.parent
    with pytest.raises(FileExistsError, match="already exist"):
        provision_deployment(out, 2)


def test_provision_cli_writes_kits(tmp_path):
    result = CliRunner().invoke(
        cli, ["provision-deploy", "--nodes", "2", "--out", str(tmp_path / "kits"),
              "--superlink-host", "10.1.2.3"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "kits" / "node-1" / "supernode.key").is_file()
    assert (tmp_path / "kits" / "server" / "superlink.pem").is_file()


def test_node_config_reads_all_keys(tmp_path):
    key = tmp_path / "bls_key.json"
    key.write_text("{}")
    settings = read_node_config(
        {"partition-id": 1, "num-partitions": 3, "data-path": str(tmp_path),
         "kit-path": str(tmp_path), "ledger-url": "sqlite:///node.db",
         "bls-key": str(key)}
    )
    assert settings.partition_id == 1
    assert settings.num_partitions == 3
    assert settings.data_path == str(tmp_path)
    assert settings.ledger_url == "sqlite:///node.db"
    assert settings.bls_key == str(key)


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"num-partitions": 2}, "no 'partition-id'"),
        ({"partition-id": 2, "num-partitions": 2}, "expected 0 <= partition-id"),
        ({"partition-id": "a", "num-partitions": 2}, "must be integers"),
        ({"partition-id": 0, "num-partitions": 2, "kit-path": "/no/such"}, "kit-path"),
        ({"partition-id": 0, "num-partitions": 2, "bls-key": "/no/key"}, "bls-key"),
    ],
)
def test_node_config_rejects_invalid(node_config, message):
    with pytest.raises(ValueError, match=message):
        read_node_config(node_config)


def test_node_config_round_trips_through_flower():
    from flwr.common.config import parse_config_args

    text = format_node_config({"partition-id": 0, "num-partitions": 2,
                               "data-path": "/data/my text"})
    assert parse_config_args([text]) == {
        "partition-id": 0, "num-partitions": 2, "data-path": "/data/my text"
    }


def test_connection_add_writes_flower_config(kits, tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    config_file = add_connection("consortium", "10.9.8.7:9093", kits.ca_certificate)
    table = tomllib.loads(config_file.read_text())["superlink"]["consortium"]
    assert table["address"] == "10.9.8.7:9093"
    assert table["root-certificates"] == str(kits.ca_certificate.resolve())
    assert "insecure" not in table


@pytest.mark.parametrize(
    ("address", "certificate", "message"),
    [
        ("https://10.9.8.7:9093", "ca", "Invalid SuperLink address"),
        ("10.9.8.7:9093", None, "needs the CA certificate"),
        ("10.9.8.7:9093", "missing", "not found"),
    ],
)
def test_connection_add_rejects_invalid(kits, tmp_path, monkeypatch, address, certificate,
                                        message):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    path = {"ca": kits.ca_certificate, "missing": tmp_path / "none.pem", None: None}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        add_connection("consortium", address, path[certificate])


def test_descendant_pids_finds_grandchildren():
    import subprocess
    import sys
    import time

    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time;"
         " subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);"
         " time.sleep(30)"]
    )
    try:
        deadline = time.monotonic() + 20
        while not descendant_pids(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        children = descendant_pids(parent.pid)
        assert len(children) == 1
    finally:
        for pid in [*descendant_pids(parent.pid), parent.pid]:
            subprocess.run(["kill", str(pid)], check=False)
        parent.wait(timeout=10)


def test_connection_cli_writes_connection(kits, tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    result = CliRunner().invoke(
        cli, ["connection", "add", "consortium", "--address", "10.9.8.7:9093",
              "--root-certificates", str(kits.ca_certificate)],
    )
    assert result.exit_code == 0, result.output
    config = tomllib.loads((tmp_path / "flwr-home" / "config.toml").read_text())
    assert config["superlink"]["consortium"]["address"] == "10.9.8.7:9093"


def test_cluster_up_rejects_missing_kits(tmp_path):
    result = CliRunner().invoke(cli, ["cluster", "up", "--kits", str(tmp_path)])
    assert result.exit_code == 2
    assert "no deployment kits" in result.output


def test_provision_cli_adds_deployment_material(tmp_path):
    result = CliRunner().invoke(
        cli, ["provision", "--nodes", "2", "--out", str(tmp_path / "kits"),
              "--no-paillier", "--superlink-host", "10.1.2.3"],
    )
    assert result.exit_code == 0, result.output
    for node in ("node-0", "node-1"):
        assert (tmp_path / "kits" / node / "kit.json").is_file()
        assert (tmp_path / "kits" / node / "supernode.key").is_file()
    assert (tmp_path / "kits" / "server" / "superlink.pem").is_file()
    assert (tmp_path / "kits" / "server" / "supernode-keys" / "node-1.pub").is_file()
