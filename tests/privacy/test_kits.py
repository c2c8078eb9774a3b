import json
import logging
import stat
from pathlib import Path

import numpy as np
import pytest

from linguachain.privacy import ckks, kits, paillier, threshold


@pytest.fixture(scope="module")
def kit_paths(tmp_path_factory: pytest.TempPathFactory) -> kits.KitPaths:
    out_dir = tmp_path_factory.mktemp("kits")
    return kits.provision(out_dir, num_nodes=3, paillier_modulus_bits=1024)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_provision_layout(kit_paths: kits.KitPaths) -> None:
    assert kit_paths.server.name == "server"
    assert [path.name for path in kit_paths.nodes] == ["node-0", "node-1", "node-2"]
    server_manifest = json.loads((kit_paths.server / "kit.json").read_text())
    assert FILES_OF_SERVER == set(server_manifest["files"])
    node_manifest = json.loads((kit_paths.nodes[0] / "kit.json").read_text())
    node_files = FILES_OF_SERVER | {"paillier_key_share", "bls_key"}
    assert node_files == set(node_manifest["files"])
    assert node_manifest["paillier"]["threshold"] == 2


FILES_OF_SERVER = {
    "ckks_context",
    "paillier_public_key",
    "paillier_verification_keys",
    "validators",
}


def test_kit_permissions(kit_paths: kits.KitPaths) -> None:
    for folder in [kit_paths.server, *kit_paths.nodes]:
        assert mode_of(folder) == 0o700, folder
        files = list(folder.iterdir())
        assert files
        for file in files:
            assert mode_of(file) == 0o600, file


def test_provision_existing_kits_raises(kit_paths: kits.KitPaths) -> None:
    with pytest.raises(FileExistsError, match="already exists"):
        kits.provision(kit_paths.server.parent, num_nodes=3, paillier_modulus_bits=1024)


def test_server_kit_holds_no_secret(kit_paths: kits.KitPaths) -> None:
    server = kits.load_server_kit(kit_paths.server)
    assert not server.ckks_context.is_private()
    assert not (kit_paths.server / "paillier_key_share.json").exists()
    text = b"".join(path.read_bytes() for path in kit_paths.server.glob("*.json"))
    node = kits.load_node_kit(kit_paths.nodes[0])
    assert str(node.paillier_key_share.share).encode() not in text


def test_node_kits_share_one_ckks_key(kit_paths: kits.KitPaths) -> None:
    server = kits.load_server_kit(kit_paths.server)
    nodes = [kits.load_node_kit(path) for path in kit_paths.nodes]
    length = 100
    replies = [
        ckks.encrypt_update(node.ckks_context, np.full(length, 0.01 * (i + 1)), 10)
        for i, node in enumerate(nodes)
    ]
    aggregate = ckks.sum_replies(server.ckks_context, replies, length)
    average = ckks.decrypt_average(
        nodes[2].ckks_context, aggregate.chunks, aggregate.total_tokens, length
    )

    assert all(node.ckks_fingerprint == server.ckks_fingerprint for node in nodes)
    np.testing.assert_allclose(average, np.full(length, 0.02), rtol=1e-6)


def test_node_kits_threshold_decrypt(kit_paths: kits.KitPaths) -> None:
    server = kits.load_server_kit(kit_paths.server)
    nodes = [kits.load_node_kit(path) for path in kit_paths.nodes]
    ciphertexts = paillier.encrypt_many(server.paillier_public_key, [11, 22])
    partials = [
        threshold.partial_decrypt(
            node.paillier_verification_keys, node.paillier_key_share, ciphertexts
        )
        for node in nodes[1:]
    ]

    assert [node.paillier_key_share.party_index for node in nodes] == [1, 2, 3]
    assert [node.node_index for node in nodes] == [0, 1, 2]
    plaintexts = threshold.combine_partial_decryptions(
        server.paillier_verification_keys, ciphertexts, partials
    )
    assert plaintexts == [11, 22]


def test_load_wrong_role_raises(kit_paths: kits.KitPaths) -> None:
    with pytest.raises(ValueError, match="is a 'server' kit, expected a 'node' kit"):
        kits.load_node_kit(kit_paths.server)
    with pytest.raises(ValueError, match="is a 'node' kit, expected a 'server' kit"):
        kits.load_server_kit(kit_paths.nodes[0])


def test_load_missing_manifest_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="kit manifest .* not found"):
        kits.load_node_kit(tmp_path)


def copy_kit(source: Path, destination: Path) -> Path:
    destination.mkdir()
    for file in source.iterdir():
        (destination / file.name).write_bytes(file.read_bytes())
        (destination / file.name).chmod(0o600)
    return destination


def test_server_kit_with_secret_context_raises(
    kit_paths: kits.KitPaths, tmp_path: Path
) -> None:
    bad = copy_kit(kit_paths.server, tmp_path / "server")
    secret = (kit_paths.nodes[0] / "ckks_secret_context.bin").read_bytes()
    (bad / "ckks_public_context.bin").write_bytes(secret)
    with pytest.raises(ValueError, match="contains a secret key"):
        kits.load_server_kit(bad)


def test_replaced_ckks_context_detected(
    kit_paths: kits.KitPaths, tmp_path: Path
) -> None:
    bad = copy_kit(kit_paths.nodes[0], tmp_path / "node-0")
    other = ckks.create_secret_context("sum")
    secret_bytes = ckks.serialize_context(other, save_secret_key=True)
    (bad / "ckks_secret_context.bin").write_bytes(secret_bytes)
    with pytest.raises(ValueError, match="the file was replaced or corrupted"):
        kits.load_node_kit(bad)


def test_mismatched_key_share_detected(
    kit_paths: kits.KitPaths, tmp_path: Path
) -> None:
    bad = copy_kit(kit_paths.nodes[0], tmp_path / "node-0")
    other_share = (kit_paths.nodes[1] / "paillier_key_share.json").read_bytes()
    (bad / "paillier_key_share.json").write_bytes(other_share)
    with pytest.raises(ValueError, match="is for party 2, but kit.json says 1"):
        kits.load_node_kit(bad)


def test_loose_permissions_logged(
    kit_paths: kits.KitPaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loose = copy_kit(kit_paths.nodes[0], tmp_path / "node-0")
    (loose / "paillier_key_share.json").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="linguachain.privacy.kits"):
        kits.load_node_kit(loose)
    assert "has mode 644" in caplog.text


def test_provision_logs_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="linguachain.privacy"):
        paths = kits.provision(
            tmp_path / "kits", num_nodes=2, paillier_modulus_bits=512
        )
    share = json.loads((paths.nodes[0] / "paillier_key_share.json").read_text())
    assert "provisioned kits for 2 nodes" in caplog.text
    assert share["share"] not in caplog.text
    assert share["share"][:20] not in caplog.text
