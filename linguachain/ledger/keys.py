"""BLS validator keys: generation, proof of possession and the key file.

A key file is JSON with the secret key as a decimal string, the 48-byte public
key and the 96-byte proof of possession as hex. It is written with mode 0o600,
and the provisioning kits list it under the `bls_key` entry of kit.json's
"files" mapping.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from linguachain.ledger import bls
from linguachain.ledger.transactions import account_id

logger = logging.getLogger(__name__)

BLS_KEY_FILE = "bls_key.json"
KIT_FILE_KEY = "bls_key"
VALIDATORS_FILE = "validators.json"


@dataclass(frozen=True)
class ValidatorKey:
    """A validator's BLS secret key, public key and proof of possession."""

    secret_key: int
    public_key: bytes
    pop: bytes

    @property
    def account(self) -> str:
        """Return the LinguaCoin account id of the public key."""
        return account_id(self.public_key)


@dataclass(frozen=True)
class PublicValidator:
    """A validator's public side: its account (the public key) and proof of possession."""

    account: str
    pop: bytes


def generate_validator_key(seed: bytes | None = None) -> ValidatorKey:
    """Generate a key pair with KeyGen and prove possession with PopProve."""
    secret_key = bls.keygen(seed if seed is not None else secrets.token_bytes(32))
    return ValidatorKey(secret_key, bls.sk_to_pk(secret_key), bls.pop_prove(secret_key))


def key_to_json(key: ValidatorKey) -> bytes:
    """Serialize a validator key for its key file."""
    data = {
        "secret_key": str(key.secret_key),
        "public_key": key.public_key.hex(),
        "pop": key.pop.hex(),
    }
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def validators_json(keys: list[ValidatorKey]) -> bytes:
    """Serialize the public validator set: node index, account, proof of possession."""
    data = [
        {"node_index": index, "account": key.account, "pop": key.pop.hex()}
        for index, key in enumerate(keys)
    ]
    return (json.dumps(data, indent=2) + "\n").encode()


def read_validators(path: str | os.PathLike[str]) -> list[PublicValidator]:
    """Read a validators.json written by provisioning and check every proof."""
    target = Path(path)
    try:
        entries = json.loads(target.read_text())
        validators = [
            PublicValidator(str(entry["account"]), bytes.fromhex(entry["pop"]))
            for entry in sorted(entries, key=lambda e: int(e["node_index"]))
        ]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"Cannot read the validator set {target}: {error}; re-provision the kits"
            " with `linguachain provision`."
        ) from error
    for validator in validators:
        if not bls.pop_verify(bytes.fromhex(validator.account), validator.pop):
            raise ValueError(
                f"Validator {validator.account[:16]}... in {target} has an invalid"
                " proof of possession; re-provision the kits."
            )
    return validators


def write_validator_key(path: str | os.PathLike[str], key: ValidatorKey) -> Path:
    """Write a key file that only its owner can read; never overwrite one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key_to_json(key))
    return target


def read_validator_key(path: str | os.PathLike[str]) -> ValidatorKey:
    """Read a key file, or a kit folder whose kit.json lists one, and check it."""
    target = Path(path)
    if target.is_dir():
        manifest = json.loads((target / "kit.json").read_text())
        file_name = manifest.get("files", {}).get(KIT_FILE_KEY)
        if file_name is None:
            raise ValueError(
                f"kit {target} lists no {KIT_FILE_KEY!r} file in kit.json. The"
                " server's kit holds no BLS key, so pass a node's kit"
                " (kits/node-<i>); a node kit without one was written by an older"
                " linguachain version and needs `linguachain provision` again"
            )
        target = target / file_name
    if not target.is_file():
        raise FileNotFoundError(f"BLS key file {target} not found")
    data = json.loads(target.read_text())
    key = ValidatorKey(
        int(data["secret_key"]), bytes.fromhex(data["public_key"]), bytes.fromhex(data["pop"])
    )
    if bls.sk_to_pk(key.secret_key) != key.public_key:
        raise ValueError(f"BLS key file {target}: public key does not match the secret key")
    return key


def load_or_create_key(path: str | os.PathLike[str]) -> ValidatorKey:
    """Read the key file at `path`, generating it first when it is missing."""
    if Path(path).is_file():
        return read_validator_key(path)
    key = generate_validator_key()
    write_validator_key(path, key)
    logger.info("Generated BLS validator key %s in %s", key.account[:16], path)
    return key
