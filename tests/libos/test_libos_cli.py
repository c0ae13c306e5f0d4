from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from libos_testkit import PROBE, make_instance, write_config
from typer.testing import CliRunner

from libos import image
from libos.cli import app
from libos.sim import SimPlatform
from protocols.cli_convention import SIMULATION_WARNING
from protocols.errors import PolicyError

runner = CliRunner()


def test_init_build_measure(tmp_path: Path) -> None:
    instance = tmp_path / "inst"
    result = runner.invoke(app, ["init", str(instance)])
    assert result.exit_code == 0, result.output
    assert "detente libos build" in result.output
    write_config(instance, **PROBE)

    result = runner.invoke(app, ["build", str(instance)])
    assert result.exit_code == 0, result.output
    built = re.search(r"MRENCLAVE ([0-9a-f]{64})\nMRSIGNER  ([0-9a-f]{64})", result.output)
    assert built is not None
    assert SIMULATION_WARNING in result.stderr
    assert "files" in result.output
    # Every dependency file is measured; the build reports its time, the limits
    # and the idle peak of a real start, so an operator can size memory_mb.
    assert re.search(r"\d+ files of \d+ distributions, [\d,.]+ MiB, each hashed", result.output)
    assert re.search(r"built in  \d+\.\d\d s", result.output)
    assert "limits    memory 4096 MiB (address space capped at" in result.output
    peak = re.search(
        r"idle peak ([\d,.]+) MiB resident after importing libos_test_probes\.probe", result.output
    )
    assert peak is not None and 5 < float(peak.group(1).replace(",", "")) < 4096

    result = runner.invoke(app, ["measure", str(instance), "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert set(measured) == {"mrenclave", "mrsigner", "backend", "simulation_root_sha256"}
    assert (measured["mrenclave"], measured["mrsigner"]) == built.groups()
    assert measured["backend"] == "sim"
    assert measured["simulation_root_sha256"] == SimPlatform(instance / "platform").root_fingerprint

    human = runner.invoke(app, ["measure", str(instance)])
    assert "SIMULATION" in human.output


# --- measure: the built image, not the sources ----------------------------------------


def test_measure_reports_the_built_image(tmp_path: Path) -> None:
    instance = make_instance(tmp_path / "i")
    built = image.build(instance)
    manifest = (instance / "image" / "manifest.json").read_bytes()
    assert built.mrenclave == hashlib.sha256(manifest).hexdigest()

    result = runner.invoke(app, ["measure", str(instance), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["mrenclave"], doc["mrsigner"]) == (built.mrenclave, built.mrsigner)
    # The sources still give this image: nothing to warn about but the simulation.
    assert result.stderr == SIMULATION_WARNING + "\n"

    human = runner.invoke(app, ["measure", str(instance)])
    assert human.exit_code == 0, human.output
    assert f"MRENCLAVE {built.mrenclave}" in human.stdout
    assert f"MRSIGNER  {built.mrsigner}" in human.stdout
    assert f"image     {instance / 'image'} (built, signed manifest)" in human.stdout


def test_measure_after_a_source_edit_reports_the_built_image_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    package = src / "libos_test_measure"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text("def main(argv):\n    return 0\n")
    monkeypatch.syspath_prepend(str(src))
    instance = make_instance(
        tmp_path / "i",
        entry_point="libos_test_measure.main:main",
        packages=["libos", "protocols", "libos_test_measure"],
    )
    built = image.build(instance)

    (package / "main.py").write_text("def main(argv):\n    return 1\n")
    edited = image.measure(instance)  # what the edited sources would build
    assert edited.mrenclave != built.mrenclave

    for args in (["--json"], []):
        result = runner.invoke(app, ["measure", str(instance), *args])
        assert result.exit_code == 0, result.output
        # Still the built image's identity, the one `detente libos run` starts...
        if args:
            assert json.loads(result.stdout)["mrenclave"] == built.mrenclave
        else:
            assert f"MRENCLAVE {built.mrenclave}" in result.stdout
        assert edited.mrenclave not in result.stdout
        # ...and a warning that says so, with the sources' value and the command to run.
        warning = result.stderr
        assert "the sources or libos.toml changed since the image" in warning
        assert f"they would give MRENCLAVE {edited.mrenclave}" in warning
        assert "measured the built image" in warning
        assert f"`detente libos build {instance}`" in warning

    rebuilt = image.build(instance)
    assert rebuilt.mrenclave == edited.mrenclave
    again = runner.invoke(app, ["measure", str(instance), "--json"])
    assert json.loads(again.stdout)["mrenclave"] == rebuilt.mrenclave
    assert again.stderr == SIMULATION_WARNING + "\n"


def test_measure_without_a_built_image_names_the_build_command(tmp_path: Path) -> None:
    instance = make_instance(tmp_path / "i")
    for args in (["--json"], []):
        result = runner.invoke(app, ["measure", str(instance), *args])
        assert result.exit_code == 1
        assert result.stdout == ""  # no measurement of anything
        assert f"no image has been built in {instance} yet" in result.stderr
        assert f"run `detente libos build {instance}` first" in result.stderr
    with pytest.raises(PolicyError, match="detente libos build"):
        image.built_measurement(instance)


def test_errors_are_reported_not_raised(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "detente libos init" in result.output
    runner.invoke(app, ["init", str(tmp_path / "i")])
    again = runner.invoke(app, ["init", str(tmp_path / "i")])
    assert again.exit_code == 1 and "already exists" in again.output


def test_init_with_signer_key(tmp_path: Path) -> None:
    from protocols.keys import SigningKey

    key = tmp_path / "k.pem"
    image.write_signer_key(key, SigningKey.generate())
    result = runner.invoke(app, ["init", str(tmp_path / "i"), "--signer-key", str(key)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "i" / "signer.key").exists()
