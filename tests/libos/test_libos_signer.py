"""The image signer pinned in libos.toml: images signed by any other key are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from libos_testkit import run_cli, write_config

from libos import image
from libos.config import InstanceConfig
from protocols.errors import PolicyError, SignatureError
from protocols.keys import SigningKey


def test_init_pins_the_signers_public_key(tmp_path: Path) -> None:
    config = image.init(tmp_path / "a")
    key = image.load_signer_key(tmp_path / "a" / "signer.key")
    assert config.signer_public_key == key.verify_key.hex
    assert "signer_public_key" not in config.measured()
    given = tmp_path / "given.key"
    other = SigningKey.generate()
    image.write_signer_key(given, other)
    assert image.init(tmp_path / "b", given).signer_public_key == other.verify_key.hex


def test_image_signed_by_another_key_is_refused(probe_copy: Path) -> None:
    # Someone re-signs the (unchanged) manifest with their own key and ships
    # their public key beside it: the signature verifies, the signer does not.
    intruder = SigningKey.generate()
    manifest = (probe_copy / "image" / "manifest.json").read_bytes()
    (probe_copy / "image" / "manifest.sig").write_bytes(intruder.sign(manifest))
    (probe_copy / "image" / "signer.pub").write_text(intruder.verify_key.hex + "\n")
    result = run_cli("run", str(probe_copy))
    assert result.returncode == 70 and result.stdout == ""
    assert f"signed by MRSIGNER {image.mrsigner_of(intruder.verify_key)}" in result.stderr
    assert "pins the signer" in result.stderr
    with pytest.raises(SignatureError, match="was not built by this instance's signer"):
        image.verify_image(probe_copy)


def test_build_refuses_a_key_that_is_not_the_pinned_one(probe_copy: Path) -> None:
    other = probe_copy / "other.key"
    image.write_signer_key(other, SigningKey.generate())
    write_config(probe_copy, signer_key=str(other))
    with pytest.raises(PolicyError, match="not the pinned signer_public_key"):
        image.build(probe_copy)


def test_a_run_host_needs_only_the_public_key(probe_copy: Path) -> None:
    # The private key stays with whoever builds; the host that runs has the pin.
    (probe_copy / "signer.key").unlink()
    result = run_cli("run", str(probe_copy))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backend"] == "sim"
    write_config(probe_copy, signer_public_key="")
    with pytest.raises(PolicyError, match="pins no image signer"):
        image.verify_image(probe_copy)


def test_pin_must_be_a_public_key(tmp_path: Path) -> None:
    image.init(tmp_path)
    write_config(tmp_path, signer_public_key="abc")
    with pytest.raises(PolicyError, match="'signer_public_key'"):
        InstanceConfig.load(tmp_path)
