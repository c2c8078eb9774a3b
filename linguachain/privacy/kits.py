"""Provision and load the startup kits that hold each party's keys.

Layout written by provision:

    out_dir/server/   kit.json, CKKS public context, Paillier public and
                      verification keys
    out_dir/node-<i>/ kit.json, CKKS secret context (one secret key shared by all
                      nodes), Paillier public and verification keys, the node's
                      Paillier key share (party index i + 1)

provision(..., paillier=False) skips the Paillier dealing, which takes seconds for
safe primes, and writes kits with CKKS keys only; their kit.json has "paillier":
null and the loaded kits have None in every Paillier field.

kit.json is the manifest: role, node index, parameter names, key fingerprints and a
"files" mapping from a key name to a file in the kit folder, so BLS keys and TLS
material can be added as more entries. CKKS contexts are raw TenSEAL serialization
bytes; Paillier keys are JSON with integers as decimal strings. Folders are created
with mode 0o700 and files with 0o600. The dealer's Paillier primes are never written.
"""

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenseal as ts

from linguachain.privacy import ckks
from linguachain.privacy.paillier import DEFAULT_MODULUS_BITS, PaillierPublicKey
from linguachain.privacy.threshold import (
    PaillierKeyShare,
    ThresholdVerificationKeys,
    deal_threshold_keys,
)

logger = logging.getLogger(__name__)

KIT_FORMAT_VERSION = 1
MANIFEST_NAME = "kit.json"
SERVER_DIR = "server"
NODE_DIR_PREFIX = "node-"

# Keys of the manifest's "files" mapping and the file names provision uses.
FILE_CKKS_CONTEXT = "ckks_context"
FILE_PAILLIER_PUBLIC_KEY = "paillier_public_key"
FILE_PAILLIER_VERIFICATION_KEYS = "paillier_verification_keys"
FILE_PAILLIER_KEY_SHARE = "paillier_key_share"

_FILE_NAMES = {
    FILE_PAILLIER_PUBLIC_KEY: "paillier_public_key.json",
    FILE_PAILLIER_VERIFICATION_KEYS: "paillier_verification_keys.json",
    FILE_PAILLIER_KEY_SHARE: "paillier_key_share.json",
}
_CKKS_SECRET_FILE = "ckks_secret_context.bin"
_CKKS_PUBLIC_FILE = "ckks_public_context.bin"


@dataclass(frozen=True)
class KitPaths:
    """Folders written by provision."""

    server: Path
    nodes: list[Path]


@dataclass(frozen=True)
class NodeKit:
    """Keys a node loads at startup."""

    path: Path
    node_index: int
    manifest: dict[str, Any]
    ckks_parameter_set: str
    ckks_context: ts.Context
    ckks_fingerprint: str
    paillier_public_key: PaillierPublicKey | None
    paillier_verification_keys: ThresholdVerificationKeys | None
    paillier_key_share: PaillierKeyShare | None


@dataclass(frozen=True)
class ServerKit:
    """Public keys the server loads at startup, without any secret key."""

    path: Path
    manifest: dict[str, Any]
    ckks_parameter_set: str
    ckks_context: ts.Context
    ckks_fingerprint: str
    paillier_public_key: PaillierPublicKey | None
    paillier_verification_keys: ThresholdVerificationKeys | None


def provision(
    out_dir: str | os.PathLike[str],
    num_nodes: int,
    ckks_parameter_set: str = "sum",
    paillier_modulus_bits: int = DEFAULT_MODULUS_BITS,
    threshold: int | None = None,
    paillier: bool = True,
) -> KitPaths:
    """Generate all keys and write one kit per node plus one for the server."""
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
    out_path = Path(out_dir)
    kit_folders = [out_path / SERVER_DIR]
    kit_folders += [out_path / f"{NODE_DIR_PREFIX}{i}" for i in range(num_nodes)]
    for folder in kit_folders:
        if folder.exists():
            raise FileExistsError(
                f"kit folder {folder} already exists; provision into an empty folder "
                "so old and new keys never mix"
            )
    out_path.mkdir(mode=0o700, parents=True, exist_ok=True)

    # Generate every key before writing, so a failure leaves no partial kits.
    secret_context = ckks.create_secret_context(ckks_parameter_set)
    secret_context_bytes = ckks.serialize_context(secret_context, save_secret_key=True)
    public_context_bytes = ckks.serialize_context(secret_context, save_secret_key=False)
    fingerprint = ckks.context_fingerprint(secret_context)
    ckks_info = {
        "parameter_set": ckks_parameter_set,
        "context_fingerprint": fingerprint,
    }
    server_files = {FILE_CKKS_CONTEXT: (_CKKS_PUBLIC_FILE, public_context_bytes)}
    paillier_info: dict[str, Any] | None = None
    key_shares: list[PaillierKeyShare | None] = [None] * num_nodes
    if paillier:
        dealing = deal_threshold_keys(num_nodes, threshold, paillier_modulus_bits)
        paillier_info = {
            "key_id": dealing.public_key.key_id,
            "modulus_bits": dealing.public_key.modulus_bits,
            "num_parties": dealing.verification_keys.num_parties,
            "threshold": dealing.verification_keys.threshold,
        }
        server_files[FILE_PAILLIER_PUBLIC_KEY] = (
            _FILE_NAMES[FILE_PAILLIER_PUBLIC_KEY],
            _to_json(dealing.public_key.to_dict()),
        )
        server_files[FILE_PAILLIER_VERIFICATION_KEYS] = (
            _FILE_NAMES[FILE_PAILLIER_VERIFICATION_KEYS],
            _to_json(dealing.verification_keys.to_dict()),
        )
        key_shares = list(dealing.key_shares)

    server_path = out_path / SERVER_DIR
    _make_private_dir(server_path)
    _write_kit(server_path, "server", None, ckks_info, paillier_info, server_files)

    node_paths = []
    for node_index, key_share in enumerate(key_shares):
        node_path = kit_folders[node_index + 1]
        _make_private_dir(node_path)
        node_files = {
            **server_files,
            FILE_CKKS_CONTEXT: (_CKKS_SECRET_FILE, secret_context_bytes),
        }
        node_paillier_info = None
        if key_share is not None and paillier_info is not None:
            node_files[FILE_PAILLIER_KEY_SHARE] = (
                _FILE_NAMES[FILE_PAILLIER_KEY_SHARE],
                _to_json(key_share.to_dict()),
            )
            node_paillier_info = {
                **paillier_info,
                "party_index": key_share.party_index,
            }
        _write_kit(
            node_path, "node", node_index, ckks_info, node_paillier_info, node_files
        )
        node_paths.append(node_path)

    if paillier_info is None:
        paillier_text = "no Paillier key"
    else:
        paillier_text = (
            f"{paillier_info['threshold']}-of-{num_nodes} Paillier key "
            f"{paillier_info['key_id'][:16]}"
        )
    logger.info(
        "provisioned kits for %d nodes and the server in %s (CKKS %r, %s)",
        num_nodes,
        out_path,
        ckks_parameter_set,
        paillier_text,
    )
    return KitPaths(server=server_path, nodes=node_paths)


def load_node_kit(path: str | os.PathLike[str]) -> NodeKit:
    """Load and cross-check a node's kit."""
    kit_path = Path(path)
    manifest = _read_manifest(kit_path, "node")

    context = ckks.deserialize_context(
        _read_file(kit_path, manifest, FILE_CKKS_CONTEXT)
    )
    if not context.is_private():
        raise ValueError(
            f"CKKS context in node kit {kit_path} has no secret key; re-provision "
            "the kits"
        )
    fingerprint = _check_ckks(kit_path, manifest, context)
    public_key, verification_keys = _load_paillier_public(kit_path, manifest)
    key_share = None
    if public_key is not None:
        key_share = _load_key_share(kit_path, manifest, public_key)

    return NodeKit(
        path=kit_path,
        node_index=int(manifest["node_index"]),
        manifest=manifest,
        ckks_parameter_set=manifest["ckks"]["parameter_set"],
        ckks_context=context,
        ckks_fingerprint=fingerprint,
        paillier_public_key=public_key,
        paillier_verification_keys=verification_keys,
        paillier_key_share=key_share,
    )


def load_server_kit(path: str | os.PathLike[str]) -> ServerKit:
    """Load and cross-check the server's kit, which must hold no secret key."""
    kit_path = Path(path)
    manifest = _read_manifest(kit_path, "server")

    context = ckks.deserialize_context(
        _read_file(kit_path, manifest, FILE_CKKS_CONTEXT)
    )
    if context.is_private():
        raise ValueError(
            f"CKKS context in server kit {kit_path} contains a secret key; the "
            "server must hold only the public context, so re-provision the kits"
        )
    fingerprint = _check_ckks(kit_path, manifest, context)
    public_key, verification_keys = _load_paillier_public(kit_path, manifest)

    return ServerKit(
        path=kit_path,
        manifest=manifest,
        ckks_parameter_set=manifest["ckks"]["parameter_set"],
        ckks_context=context,
        ckks_fingerprint=fingerprint,
        paillier_public_key=public_key,
        paillier_verification_keys=verification_keys,
    )


def _write_kit(
    kit_path: Path,
    role: str,
    node_index: int | None,
    ckks_info: dict[str, Any],
    paillier_info: dict[str, Any] | None,
    files: dict[str, tuple[str, bytes]],
) -> None:
    for file_name, data in files.values():
        _write_private_file(kit_path / file_name, data)

    manifest = {
        "format_version": KIT_FORMAT_VERSION,
        "role": role,
        "node_index": node_index,
        "ckks": ckks_info,
        "paillier": paillier_info,
        "files": {key: file_name for key, (file_name, _) in files.items()},
    }
    _write_private_file(kit_path / MANIFEST_NAME, _to_json(manifest))


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError as error:
        raise FileExistsError(
            f"kit folder {path} already exists; provision into an empty folder so "
            "old and new keys never mix"
        ) from error
    # mkdir's mode is reduced by the umask, so set it explicitly.
    path.chmod(0o700)


def _write_private_file(path: Path, data: bytes) -> None:
    # O_EXCL refuses to overwrite, and the mode is set before any byte is written.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(data)


def _to_json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _read_manifest(kit_path: Path, role: str) -> dict[str, Any]:
    manifest_path = kit_path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"kit manifest {manifest_path} not found; pass a folder written by "
            "provision"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != KIT_FORMAT_VERSION:
        raise ValueError(
            f"kit {kit_path} has format_version {manifest.get('format_version')!r}, "
            f"expected {KIT_FORMAT_VERSION}"
        )
    if manifest.get("role") != role:
        raise ValueError(
            f"kit {kit_path} is a {manifest.get('role')!r} kit, expected a {role!r} "
            "kit"
        )
    return manifest


def _read_file(kit_path: Path, manifest: dict[str, Any], key: str) -> bytes:
    file_name = manifest["files"].get(key)
    if file_name is None:
        raise ValueError(f"kit {kit_path} lists no {key!r} file in kit.json")
    file_path = kit_path / file_name
    if not file_path.resolve().is_relative_to(kit_path.resolve()):
        raise ValueError(f"kit file {file_name!r} points outside the kit folder")

    mode = stat.S_IMODE(file_path.stat().st_mode)
    if mode & 0o077:
        logger.warning(
            "kit file %s has mode %o; restrict it with chmod 600", file_path, mode
        )
    return file_path.read_bytes()


def _check_ckks(kit_path: Path, manifest: dict[str, Any], context: ts.Context) -> str:
    fingerprint = ckks.context_fingerprint(context)
    expected = manifest["ckks"]["context_fingerprint"]
    if fingerprint != expected:
        raise ValueError(
            f"CKKS context in {kit_path} has fingerprint {fingerprint[:16]}..., but "
            f"kit.json records {expected[:16]}...; the file was replaced or corrupted"
        )
    parameter_set = ckks.parameters_of(context).name
    if parameter_set != manifest["ckks"]["parameter_set"]:
        raise ValueError(
            f"CKKS context in {kit_path} uses parameter set {parameter_set!r}, but "
            f"kit.json records {manifest['ckks']['parameter_set']!r}"
        )
    return fingerprint


def _load_key_share(
    kit_path: Path, manifest: dict[str, Any], public_key: PaillierPublicKey
) -> PaillierKeyShare:
    share_file = _read_file(kit_path, manifest, FILE_PAILLIER_KEY_SHARE)
    key_share = PaillierKeyShare.from_dict(json.loads(share_file))
    if key_share.key_id != public_key.key_id:
        raise ValueError(
            f"Paillier key share in {kit_path} belongs to another key; re-provision "
            "the kits"
        )
    if key_share.party_index != manifest["paillier"]["party_index"]:
        raise ValueError(
            f"Paillier key share in {kit_path} is for party "
            f"{key_share.party_index}, but kit.json says "
            f"{manifest['paillier']['party_index']}"
        )
    return key_share


def _load_paillier_public(
    kit_path: Path, manifest: dict[str, Any]
) -> tuple[PaillierPublicKey | None, ThresholdVerificationKeys | None]:
    if manifest.get("paillier") is None:
        return None, None
    public_key = PaillierPublicKey.from_dict(
        json.loads(_read_file(kit_path, manifest, FILE_PAILLIER_PUBLIC_KEY))
    )
    verification_keys = ThresholdVerificationKeys.from_dict(
        json.loads(_read_file(kit_path, manifest, FILE_PAILLIER_VERIFICATION_KEYS))
    )
    if public_key.key_id != manifest["paillier"]["key_id"]:
        raise ValueError(
            f"Paillier public key in {kit_path} does not match the key_id in kit.json"
        )
    if verification_keys.public_key != public_key:
        raise ValueError(
            f"Paillier verification keys in {kit_path} belong to another key"
        )
    return public_key, verification_keys
