"""Write the TLS material and SuperNode authentication keys of a deployment.

Layout written by `provision_deployment` (the same `server/` and `node-<i>/`
folders as the privacy key kits, so each party receives one folder):

    out_dir/ca/         ca.pem, ca.key: the certificate authority; keep ca.key
                        offline, it is needed only to issue new certificates
    out_dir/server/     ca.pem, superlink.pem, superlink.key: the SuperLink's
                        TLS certificate and key (`flower-superlink --ssl-*`)
    out_dir/server/supernode-keys/node-<i>.pub: every SuperNode's public key,
                        registered with `flwr supernode register`
    out_dir/node-<i>/   ca.pem (`flower-supernode --root-certificates`),
                        supernode.key and supernode.pub: the SuperNode's
                        authentication key pair (`--auth-supernode-private-key`)

Flower 1.42 reads SuperNode keys as OpenSSH-encoded elliptic-curve keys on a
NIST curve; this module uses P-384. Private keys are written with mode 0o600
and folders with 0o700. Existing files are never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

CA_DIR = "ca"
SERVER_DIR = "server"
NODE_DIR_PREFIX = "node-"
SUPERNODE_KEYS_DIR = "supernode-keys"

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SUPERLINK_CERT_FILE = "superlink.pem"
SUPERLINK_KEY_FILE = "superlink.key"
SUPERNODE_PRIVATE_KEY_FILE = "supernode.key"
SUPERNODE_PUBLIC_KEY_FILE = "supernode.pub"

DEFAULT_SUPERLINK_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_VALID_DAYS = 365
SUPERNODE_CURVE = ec.SECP384R1()


@dataclass(frozen=True)
class DeploymentPaths:
    """Files written by `provision_deployment`."""

    ca_certificate: Path
    ca_private_key: Path
    superlink_certificate: Path
    superlink_private_key: Path
    node_folders: tuple[Path, ...]
    supernode_public_keys: tuple[Path, ...]

    def supernode_private_key(self, node: int) -> Path:
        """Return the authentication private key of SuperNode `node`."""
        return self.node_folders[node] / SUPERNODE_PRIVATE_KEY_FILE

    def node_ca_certificate(self, node: int) -> Path:
        """Return the CA certificate copy in the kit of SuperNode `node`."""
        return self.node_folders[node] / CA_CERT_FILE


def deployment_paths(
    out_dir: str | os.PathLike[str], num_nodes: int
) -> DeploymentPaths:
    """Return the paths `provision_deployment` writes for `num_nodes` nodes."""
    out = Path(out_dir)
    server = out / SERVER_DIR
    nodes = tuple(out / f"{NODE_DIR_PREFIX}{i}" for i in range(num_nodes))
    return DeploymentPaths(
        ca_certificate=out / CA_DIR / CA_CERT_FILE,
        ca_private_key=out / CA_DIR / CA_KEY_FILE,
        superlink_certificate=server / SUPERLINK_CERT_FILE,
        superlink_private_key=server / SUPERLINK_KEY_FILE,
        node_folders=nodes,
        supernode_public_keys=tuple(
            server / SUPERNODE_KEYS_DIR / f"{folder.name}.pub" for folder in nodes
        ),
    )


def generate_ca(
    common_name: str = "linguachain CA", valid_days: int = DEFAULT_VALID_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Generate a self-signed CA key and certificate (ECDSA P-384)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    return key, certificate


def subject_alternative_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Turn host names and IP addresses into certificate SAN entries."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            raise ValueError(
                "Empty SuperLink host name; pass a DNS name or an IP address."
            )
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    hosts: list[str],
    valid_days: int = DEFAULT_VALID_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue a TLS server certificate for `hosts` (SAN entries) signed by the CA."""
    if not hosts:
        raise ValueError(
            "A server certificate needs at least one host name or IP address."
        )
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(subject_alternative_names(hosts)),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, certificate


def generate_supernode_key_pair() -> tuple[bytes, bytes]:
    """Generate a SuperNode authentication key pair in OpenSSH encoding."""
    key = ec.generate_private_key(SUPERNODE_CURVE)
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_bytes = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private_bytes, public_bytes + b"\n"


def provision_deployment(
    out_dir: str | os.PathLike[str],
    num_nodes: int,
    superlink_hosts: list[str] | None = None,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> DeploymentPaths:
    """Write a CA, the SuperLink certificate and one SuperNode key pair per node.

    The SuperLink certificate lists 127.0.0.1 and localhost plus every entry of
    `superlink_hosts` as subject alternative names; SuperNodes and `flwr` must
    reach the SuperLink under one of them.
    """
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be at least 1, got {num_nodes}.")
    if valid_days < 1:
        raise ValueError(f"valid_days must be at least 1, got {valid_days}.")
    hosts = list(DEFAULT_SUPERLINK_HOSTS)
    for host in superlink_hosts or []:
        if host not in hosts:
            hosts.append(host)
    paths = deployment_paths(out_dir, num_nodes)
    planned = [
        paths.ca_certificate,
        paths.ca_private_key,
        paths.superlink_certificate,
        paths.superlink_private_key,
        *paths.supernode_public_keys,
    ]
    for folder in paths.node_folders:
        planned += [
            folder / CA_CERT_FILE,
            folder / SUPERNODE_PRIVATE_KEY_FILE,
            folder / SUPERNODE_PUBLIC_KEY_FILE,
        ]
    planned.append(paths.superlink_certificate.parent / CA_CERT_FILE)
    existing = [str(path) for path in planned if path.exists()]
    if existing:
        raise FileExistsError(
            f"Deployment files already exist: {', '.join(existing[:3])}; choose an"
            " empty output folder or delete them first."
        )

    ca_key, ca_certificate = generate_ca(valid_days=valid_days)
    ca_pem = ca_certificate.public_bytes(serialization.Encoding.PEM)
    server_key, server_certificate = issue_server_certificate(
        ca_key, ca_certificate, hosts, valid_days
    )

    _write_file(paths.ca_private_key, _private_pem(ca_key), private=True)
    _write_file(paths.ca_certificate, ca_pem)
    server_folder = paths.superlink_certificate.parent
    _write_file(server_folder / CA_CERT_FILE, ca_pem)
    _write_file(
        paths.superlink_certificate,
        server_certificate.public_bytes(serialization.Encoding.PEM),
    )
    _write_file(paths.superlink_private_key, _private_pem(server_key), private=True)
    for folder, public_key_copy in zip(paths.node_folders, paths.supernode_public_keys):
        private_bytes, public_bytes = generate_supernode_key_pair()
        _write_file(folder / CA_CERT_FILE, ca_pem)
        _write_file(folder / SUPERNODE_PRIVATE_KEY_FILE, private_bytes, private=True)
        _write_file(folder / SUPERNODE_PUBLIC_KEY_FILE, public_bytes)
        _write_file(public_key_copy, public_bytes)
    logger.info(
        "Wrote a CA, a SuperLink certificate for %s and %d SuperNode key pairs to %s",
        ", ".join(hosts),
        num_nodes,
        out_dir,
    )
    return paths


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_file(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = 0o600 if private else 0o644
    # O_EXCL: never overwrite a key, and never follow a planted symlink.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), mode)
        file.write(data)
