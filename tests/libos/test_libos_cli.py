from __future__ import annotations

import json
import re
from pathlib import Path

from libos_testkit import PROBE, write_config
from typer.testing import CliRunner

from libos.cli import app
from libos.sim import SimPlatform

runner = CliRunner()


def test_init_build_measure(tmp_path: Path) -> None:
    instance = tmp_path / "inst"
    result = runner.invoke(app, ["init", str(instance)])
    assert result.exit_code == 0, result.output
    assert "detente libos build" in result.output
    write_config(instance, **PROBE)

    result = runner.invoke(app, ["measure", str(instance), "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert set(measured) == {"mrenclave", "mrsigner", "backend", "simulation_root_sha256"}
    assert measured["backend"] == "sim"
    assert measured["simulation_root_sha256"] == SimPlatform(instance / "platform").root_fingerprint

    result = runner.invoke(app, ["build", str(instance)])
    assert result.exit_code == 0, result.output
    assert f"MRENCLAVE {measured['mrenclave']}" in result.output
    assert f"MRSIGNER  {measured['mrsigner']}" in result.output
    assert "SIMULATION backend: no hardware protection" in result.output
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

    human = runner.invoke(app, ["measure", str(instance)])
    assert "SIMULATION" in human.output


def test_errors_are_reported_not_raised(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "detente libos init" in result.output
    runner.invoke(app, ["init", str(tmp_path / "i")])
    again = runner.invoke(app, ["init", str(tmp_path / "i")])
    assert again.exit_code == 1 and "already exists" in again.output


def test_init_with_signer_key(tmp_path: Path) -> None:
    from libos import image
    from protocols.keys import SigningKey

    key = tmp_path / "k.pem"
    image.write_signer_key(key, SigningKey.generate())
    result = runner.invoke(app, ["init", str(tmp_path / "i"), "--signer-key", str(key)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "i" / "signer.key").exists()
