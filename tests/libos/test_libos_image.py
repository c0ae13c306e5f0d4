from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from libos_testkit import PROBE, make_instance, write_config

from libos import image
from libos.config import InstanceConfig
from protocols.errors import FormatError, PolicyError
from protocols.keys import SigningKey


def test_init_creates_private_signer_key(tmp_path: Path) -> None:
    image.init(tmp_path / "a")
    key = tmp_path / "a" / "signer.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    image.init(tmp_path / "b")
    # One fresh key per instance: there is no shared default key.
    assert (
        image.load_signer_key(key).verify_key
        != image.load_signer_key(tmp_path / "b" / "signer.key").verify_key
    )


def test_same_sources_same_mrenclave_in_two_directories(tmp_path: Path) -> None:
    signer = tmp_path / "shared.key"
    image.write_signer_key(signer, SigningKey.generate())
    a = make_instance(tmp_path / "one", signer_key=signer)
    b = make_instance(tmp_path / "somewhere" / "else", signer_key=signer)
    ma, mb = image.build(a), image.build(b)
    assert ma.mrenclave == mb.mrenclave and ma.mrsigner == mb.mrsigner
    manifest_a = (a / "image" / "manifest.json").read_bytes()
    assert manifest_a == (b / "image" / "manifest.json").read_bytes()
    assert str(tmp_path).encode() not in manifest_a  # no absolute paths
    # Rebuilding in place is also stable.
    assert image.build(a).mrenclave == ma.mrenclave


def test_mrsigner_differs_per_signer_but_mrenclave_does_not(tmp_path: Path) -> None:
    a = make_instance(tmp_path / "a")
    b = make_instance(tmp_path / "b")
    ma, mb = image.build(a), image.build(b)
    assert ma.mrsigner != mb.mrsigner
    assert ma.mrenclave == mb.mrenclave


def test_measured_config_changes_mrenclave(tmp_path: Path) -> None:
    a = make_instance(tmp_path / "a")
    before = image.measure(a)
    write_config(a, isv_svn=2)
    after = image.measure(a)
    assert before.mrenclave != after.mrenclave
    assert before.mrsigner == after.mrsigner


def test_measurements_are_hex_everywhere(tmp_path: Path) -> None:
    # One convention: MRENCLAVE and MRSIGNER are 64 lowercase hex characters
    # in every API (only the quote's binary layout holds raw bytes).
    measured = image.measure(make_instance(tmp_path / "a"))
    for value in (measured.mrenclave, measured.mrsigner):
        assert isinstance(value, str) and bytes.fromhex(value).hex() == value
    assert measured.to_json()["mrenclave"] == measured.mrenclave
    bad_values: list[Any] = [bytes(32), "AB" * 32, "ab" * 31]
    for bad in bad_values:
        with pytest.raises(FormatError, match="MRENCLAVE must be 64 lowercase hex"):
            image.Measurement(bad, "00" * 32, "sim", False, 1, 1, 0)


def test_measure_equals_build_and_writes_nothing(tmp_path: Path) -> None:
    a = make_instance(tmp_path / "a")
    measured = image.measure(a)
    assert not (a / "image").exists()
    built = image.build(a)
    assert (measured.mrenclave, measured.mrsigner) == (built.mrenclave, built.mrsigner)


def test_manifest_contents(built_probe: tuple[Path, image.Measurement]) -> None:
    instance, measurement = built_probe
    data = (instance / "image" / "manifest.json").read_bytes()
    import hashlib

    assert hashlib.sha256(data).hexdigest() == measurement.mrenclave
    doc = json.loads(data)
    assert doc["version"] == 2
    assert doc["config"]["entry_point"] == "libos_test_probes.probe:main"
    assert "signer_key" not in doc["config"]
    paths = [f["path"] for f in doc["files"]]
    assert paths == sorted(paths)
    assert "libos/runtime.py" in paths and "protocols/quote_verify.py" in paths
    # Files of sub-packages are measured like any other.
    assert "libos/image/verifier.py" in paths and "libos/efs/index.py" in paths
    assert "protocols/intel_sgx_root_ca.der" in paths
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in paths)
    for f in doc["files"][:5]:
        copy = instance / "image" / "root" / f["path"]
        assert copy.stat().st_size == f["size"]
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == f["sha256"]
    names = [d["name"] for d in doc["distributions"]]
    assert names == sorted(names)
    assert {"cryptography", "cffi", "pycparser"} <= set(names)  # transitive requirements
    crypto = next(d for d in doc["distributions"] if d["name"] == "cryptography")
    assert crypto["version"]
    # Every file of the distribution, relative to site-packages, sorted, with size and hash.
    paths = [f["path"] for f in crypto["files"]]
    assert paths == sorted(paths)
    assert "cryptography/__init__.py" in paths
    assert any(p.endswith(".so") for p in paths)  # extension modules too
    skipped = (".pyc", "/RECORD", "/INSTALLER")
    assert not any("__pycache__" in p or p.endswith(skipped) for p in paths)
    site = image.site_dirs()[0]
    for f in crypto["files"][:20]:
        on_disk = site / f["path"]
        assert on_disk.stat().st_size == f["size"]
        assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == f["sha256"]
    assert doc["python"]["implementation"] == "cpython"
    pub = (instance / "image" / "signer.pub").read_text().strip()
    assert hashlib.sha256(bytes.fromhex(pub)).hexdigest() == measurement.mrsigner


def test_the_default_image_holds_no_test_support() -> None:
    # The crash probes are test support (tests/libos/libos_test_probes): only
    # test images list their package; the worker's default image measures none.
    rels = [rel for rel, _ in image.source_files(InstanceConfig.from_dict({}))]
    assert "libos/runtime.py" in rels and "enclave_worker/main.py" in rels
    assert PROBE["packages"][-1] not in InstanceConfig.from_dict({}).packages
    assert not [rel for rel in rels if "probe" in rel.rsplit("/", 1)[-1]]


def test_default_distributions_include_transitive_requirements() -> None:
    entries = image.resolve_distributions(("xgboost-cpu", "grpcio"))
    names = [e["name"] for e in entries]
    assert {"xgboost-cpu", "numpy", "scipy", "grpcio"} <= set(names)
    assert "pandas" not in names  # only behind an extra
    assert names == sorted(names)


def test_unknown_distribution_or_package_is_named(tmp_path: Path) -> None:
    a = make_instance(tmp_path / "a", distributions=["no-such-dist-xyz"])
    with pytest.raises(PolicyError, match="no-such-dist-xyz"):
        image.build(a)
    b = make_instance(tmp_path / "b", packages=["libos", "protocols", "nosuchpkg"])
    with pytest.raises(PolicyError, match="nosuchpkg"):
        image.measure(b)


def test_given_signer_key_is_used(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "my.key"
    image.write_signer_key(path, key)
    config = image.init(tmp_path / "a", signer_key=path)
    assert not (tmp_path / "a" / "signer.key").exists()
    assert config.signer_key_path(tmp_path / "a") == path.resolve()
    write_config(tmp_path / "a", **{**PROBE, "distributions": []})
    assert image.build(tmp_path / "a").mrsigner == image.mrsigner_of(key.verify_key)


def test_entry_module_must_exist(tmp_path: Path) -> None:
    a = make_instance(tmp_path / "a", entry_point="libos.no_such_module:main")
    with pytest.raises(PolicyError, match="'entry_point'"):
        image.build(a)
