"""`detente attest inspect`: fields, TCB status, advisories, verdict and exit status.

Real quotes and collateral from tests/vectors/sgx-dcap/, a real SIMULATION
platform (libos.sim) for simulated quotes; the command runs in-process through
the `detente` app, and once as a real process.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from detente.cli import app
from libos.sim import SimPlatform
from protocols import quote_layout
from protocols.cli_convention import EXIT_ERROR, EXIT_USAGE

pytest.importorskip("dcap_qvl")

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
SGX = VECTORS / "sgx-dcap" / "sgx_quote"
SGX_COLLATERAL = VECTORS / "sgx-dcap" / "sgx_quote_collateral.json"
TDX = VECTORS / "sgx-dcap" / "tdx_quote"
TDX_COLLATERAL = VECTORS / "sgx-dcap" / "tdx_quote_collateral.json"
OUTDATED = VECTORS / "sgx-dcap" / "tdx_quote_outdated"
OUTDATED_COLLATERAL = VECTORS / "sgx-dcap" / "tdx_quote_outdated_collateral.json"
FIRST, LAST = 1750330571, 1752919278
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
STATUS = "ConfigurationAndSWHardeningNeeded"


def inspect(*args: str | Path) -> Any:
    result = CliRunner().invoke(app, ["attest", "inspect", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def as_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = inspect(*args, "--json")
    return result.exit_code, json.loads(result.stdout)


def rules(doc: dict[str, Any]) -> dict[str, bool]:
    return {r["rule"]: r["passed"] for r in doc["verdict"]}


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_sgx_sample_with_collateral_inside_its_window() -> None:
    code, doc = as_json(SGX, "--collateral", SGX_COLLATERAL, "--at", FIRST)
    assert code == 0
    fields = doc["quote"]
    assert (fields["version"], fields["tee"]) == (3, "SGX")
    assert (fields["mrenclave"], fields["mrsigner"]) == (MRENCLAVE, MRSIGNER)
    assert bytes.fromhex(fields["report_data"]) == b"Hello, world!" + bytes(51)
    assert fields["debug"] is False
    assert (fields["isv_prod_id"], fields["isv_svn"]) == (0, 0)
    assert fields["fmspc"] == "00a067110000"
    assert doc["tcb"] == {"status": STATUS, "advisory_ids": ["INTEL-SA-00289", "INTEL-SA-00615"]}
    assert (doc["collateral"]["not_before"], doc["collateral"]["not_after"]) == (FIRST, LAST)
    assert rules(doc) == {"quote": True, "tcb": True}
    assert doc["passed"] is True and doc["simulation"] is False


def test_human_output_names_fields_status_advisories_and_verdict() -> None:
    result = inspect(SGX, "--collateral", SGX_COLLATERAL, "--at", LAST)
    assert result.exit_code == 0
    for text in (
        f"mrenclave          {MRENCLAVE}",
        "fmspc              00a067110000",
        f"TCB status: {STATUS}",
        "advisories: INTEL-SA-00289, INTEL-SA-00615",
        "pass quote:",
        "pass tcb:",
        "result: PASS",
    ):
        assert text in result.stdout


@pytest.mark.parametrize(("at", "reason"), [(FIRST - 1, "not valid yet"), (LAST + 1, "expired")])
def test_one_second_outside_the_window_fails(at: int, reason: str) -> None:
    code, doc = as_json(SGX, "--collateral", SGX_COLLATERAL, "--at", at)
    assert code == 1
    assert rules(doc) == {"quote": True, "tcb": False}
    assert reason in doc["verdict"][1]["detail"]
    assert doc["tcb"] is None


def test_without_collateral_the_quote_alone_is_verified() -> None:
    result = inspect(SGX, "--at", FIRST)
    assert result.exit_code == 0
    assert "TCB status: unknown (no collateral given: pass --collateral FILE)" in result.stdout


@pytest.mark.parametrize("offset", [112, 370, 1000, 3000, 4599])
def test_flipped_byte_fails(tmp_path: Path, offset: int) -> None:
    data = bytearray(SGX.read_bytes())
    data[offset] ^= 0x01
    (tmp_path / "quote").write_bytes(bytes(data))
    code, doc = as_json(tmp_path / "quote", "--collateral", SGX_COLLATERAL, "--at", FIRST)
    assert code == 1 and not doc["passed"]


def test_policy_refusal_changes_the_exit_status(tmp_path: Path) -> None:
    strict = write_policy(tmp_path / "strict.toml", f'mrenclave = ["{MRENCLAVE}"]\n')
    code, doc = as_json(SGX, "--collateral", SGX_COLLATERAL, "--at", FIRST, "--policy", strict)
    assert code == 1
    assert rules(doc) == {
        "quote": True,
        "simulation": True,
        "tcb": False,
        "measurement": True,
        "debug": True,
    }
    relaxed = write_policy(
        tmp_path / "relaxed.toml",
        f'mrenclave = ["{MRENCLAVE}"]\naccept_tcb_status = ["{STATUS}"]\n',
    )
    code, doc = as_json(SGX, "--collateral", SGX_COLLATERAL, "--at", FIRST, "--policy", relaxed)
    assert code == 0 and all(rules(doc).values())
    other = write_policy(
        tmp_path / "other.toml", f'mrenclave = ["{"00" * 32}"]\naccept_tcb_status = ["{STATUS}"]\n'
    )
    result = inspect(SGX, "--collateral", SGX_COLLATERAL, "--at", FIRST, "--policy", other)
    assert result.exit_code == 1
    assert "FAIL measurement: MRENCLAVE" in result.stdout and "policy verdict" in result.stdout


def test_tdx_quote_shows_mrtd_and_rtmrs() -> None:
    result = inspect(TDX, "--collateral", TDX_COLLATERAL, "--at", FIRST)
    assert result.exit_code == 0, result.stdout
    parsed = quote_layout.parse_quote(TDX.read_bytes())
    assert f"mrtd               {parsed.td_report.mr_td.hex()}" in result.stdout  # type: ignore[union-attr]
    assert "rtmr" in result.stdout and "TCB status: UpToDate" in result.stdout


def test_outdated_tdx_quote_is_rejected() -> None:
    code, doc = as_json(OUTDATED, "--collateral", OUTDATED_COLLATERAL, "--at", 1772000000)
    assert code == 1
    assert doc["quote"]["version"] == 5 and doc["quote"]["tee"] == "TDX"
    assert "No matching TCB level found" in doc["verdict"][1]["detail"]


def test_intel_synthetic_sample_is_rejected() -> None:
    code, doc = as_json(VECTORS / "intel-qvl-sample" / "quote.dat", "--at", FIRST)
    assert code == 1
    assert doc["quote"]["mrenclave"] == "00" * 32
    assert "carries no PCK chain" in doc["verdict"][0]["detail"]


def test_simulated_quote(tmp_path: Path) -> None:
    platform = SimPlatform(tmp_path / "platform")
    mrenclave = hashlib.sha256(b"inspect me").digest()
    report = quote_layout.ReportBody(
        cpu_svn=bytes(16),
        misc_select=0,
        attributes=(0x05).to_bytes(8, "little") + (3).to_bytes(8, "little"),
        mr_enclave=mrenclave,
        mr_signer=bytes(32),
        isv_prod_id=1,
        isv_svn=2,
        report_data=bytes(64),
    )
    (tmp_path / "quote").write_bytes(platform.quote(report))
    # No policy: the simulation root is trusted by nobody.
    result = inspect(tmp_path / "quote")
    assert result.exit_code == 1
    assert "SIMULATION root" in result.stdout and "SIMULATION" in result.stderr
    allow = write_policy(
        tmp_path / "sim.toml",
        f'mrenclave = ["{mrenclave.hex()}"]\nallow_simulation = true\n'
        f'simulation_roots = ["{platform.root_fingerprint}"]\n',
    )
    code, doc = as_json(tmp_path / "quote", "--policy", allow)
    assert code == 0
    assert doc["simulation"] is True and doc["tcb"] == {"status": "Simulation", "advisory_ids": []}
    assert doc["quote"]["fmspc"] is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--collateral", "missing.json"], EXIT_ERROR, "cannot read collateral missing.json"),
        (["--policy", "missing.toml"], EXIT_ERROR, "cannot read attestation policy missing.toml"),
        (["--at", "-5"], EXIT_USAGE, "cannot be negative"),  # a bad value: a usage error
    ],
)
def test_bad_arguments_are_named(args: list[str], code: int, message: str) -> None:
    result = inspect(SGX, *args)
    assert result.exit_code == code and message in result.stderr
    assert result.stderr.startswith("error: ")


def test_bad_collateral_file_names_the_field(tmp_path: Path) -> None:
    doc = json.loads(SGX_COLLATERAL.read_text())
    doc["pck_crl"] = "zz"
    (tmp_path / "c.json").write_text(json.dumps(doc))
    result = inspect(SGX, "--collateral", tmp_path / "c.json")
    assert result.exit_code == 1 and "'pck_crl' must be hexadecimal" in result.stderr


def test_missing_quote_file() -> None:
    result = inspect("no-such-quote")
    assert result.exit_code == 1 and "cannot read quote no-such-quote" in result.stderr


def test_real_command_exit_status() -> None:
    """The `detente` console command, as a real process."""
    base = [sys.executable, "-m", "detente", "attest", "inspect", str(SGX)]
    ok = subprocess.run(
        [*base, "--collateral", str(SGX_COLLATERAL), "--at", str(LAST)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"TCB status: {STATUS}" in ok.stdout
    late = subprocess.run(
        [*base, "--collateral", str(SGX_COLLATERAL), "--at", str(LAST + 1)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert late.returncode == 1 and "result: FAIL" in late.stdout
