"""Tests of BLS validator key files and their place in the provisioning kits."""

from __future__ import annotations

import json
import stat

import pytest

from linguachain.ledger import bls
from linguachain.ledger.keys import (
    generate_validator_key,
    load_or_create_key,
    read_validator_key,
    read_validators,
    write_validator_key,
)
from linguachain.privacy import kits


def test_key_file_round_trip(tmp_path):
    key = generate_validator_key(b"k" * 32)
    path = write_validator_key(tmp_path / "bls_key.json", key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_validator_key(path) == key
    with pytest.raises(FileExistsError):
        write_validator_key(path, key)


def test_key_file_with_wrong_public_key_rejected(tmp_path):
    path = write_validator_key(tmp_path / "k.json", generate_validator_key(b"a" * 32))
    data = json.loads(path.read_text())
    data["public_key"] = generate_validator_key(b"b" * 32).public_key.hex()
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match"):
        read_validator_key(path)


def test_load_or_create_reuses_key(tmp_path):
    first = load_or_create_key(tmp_path / "node" / "bls_key.json")
    assert load_or_create_key(tmp_path / "node" / "bls_key.json") == first


def test_kits_carry_bls_keys(tmp_path):
    paths = kits.provision(tmp_path, num_nodes=2, paillier_modulus_bits=1024)
    validators = json.loads((paths.server / "validators.json").read_text())
    assert [v["node_index"] for v in validators] == [0, 1]
    for node_path, entry in zip(paths.nodes, validators, strict=True):
        key = read_validator_key(node_path)
        assert key.account == entry["account"]
        assert bls.pop_verify(key.public_key, bytes.fromhex(entry["pop"]))
    server_manifest = json.loads((paths.server / "kit.json").read_text())
    assert "bls_key" not in server_manifest["files"]
    # The node kits still load through the privacy loader.
    assert kits.load_node_kit(paths.nodes[0]).node_index == 0


def test_validator_set_matches_node_kits(tmp_path):
    paths = kits.provision(tmp_path, num_nodes=2, paillier=False)
    validators = read_validators(paths.server / "validators.json")
    accounts = [read_validator_key(node).account for node in paths.nodes]
    assert [v.account for v in validators] == accounts


def test_validator_set_rejects_bad_pop(tmp_path):
    paths = kits.provision(tmp_path, num_nodes=2, paillier=False)
    path = paths.server / "validators.json"
    entries = json.loads(path.read_text())
    entries[0]["pop"] = entries[1]["pop"]
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="invalid proof of possession"):
        read_validators(path)
