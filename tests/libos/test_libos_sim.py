from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from libos.sim import SimPlatform
from protocols import quote_layout, quote_verify
from protocols.errors import AttestationError, FormatError

MRENCLAVE = hashlib.sha256(b"enclave").digest()
MRSIGNER = hashlib.sha256(b"signer").digest()


def report(debug: bool = False, report_data: bytes = bytes(range(64))) -> quote_layout.ReportBody:
    flags = 0x05 | (quote_layout.ATTRIBUTE_DEBUG if debug else 0)
    return quote_layout.ReportBody(
        cpu_svn=bytes(16), misc_select=0,
        attributes=flags.to_bytes(8, "little") + (3).to_bytes(8, "little"),
        mr_enclave=MRENCLAVE, mr_signer=MRSIGNER, isv_prod_id=7, isv_svn=3,
        report_data=report_data,
    )  # fmt: skip


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform(tmp_path_factory.mktemp("sim") / "platform")


def test_platform_files_are_private_and_labelled(platform: SimPlatform) -> None:
    files = list(platform.directory.iterdir())
    assert len(files) == 5
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    root = platform.root_certificate
    cn = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "Detente SIMULATION Root CA (no hardware protection)"
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    pck_cn = platform.pck_certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
    assert pck_cn.value == "Detente SIMULATION PCK"
    assert "SIMULATION" in repr(platform)
    assert platform.root_fingerprint == quote_verify.certificate_fingerprint(root)
    # Reloading the same directory gives the same platform.
    again = SimPlatform(platform.directory)
    assert again.root_fingerprint == platform.root_fingerprint
    assert again.sealing_secret == platform.sealing_secret


def test_quote_verifies_and_carries_the_report(platform: SimPlatform) -> None:
    data = platform.quote(report())
    verified = quote_verify.verify_quote(data, [platform.root_certificate])
    q = verified.quote
    assert verified.root_fingerprint == platform.root_fingerprint
    assert q.qe_vendor_id == quote_layout.SIMULATION_QE_VENDOR_ID
    assert q.attestation_key_type == 2 and q.tee_type == 0 and q.version == 3
    assert verified.report.mr_enclave == MRENCLAVE
    assert verified.report.mr_signer == MRSIGNER
    assert verified.report.report_data == bytes(range(64))
    assert (verified.report.isv_prod_id, verified.report.isv_svn) == (7, 3)
    assert not verified.report.debug
    debug = quote_verify.verify_quote(
        platform.quote(report(debug=True)), [platform.root_certificate]
    )
    assert debug.report.debug


def test_quote_from_another_platform_fails(platform: SimPlatform, tmp_path: Path) -> None:
    other = SimPlatform(tmp_path / "other")
    assert other.root_fingerprint != platform.root_fingerprint
    with pytest.raises(AttestationError, match="untrusted root"):
        quote_verify.verify_quote(other.quote(report()), [platform.root_certificate])
    with pytest.raises(AttestationError, match="untrusted root"):
        quote_verify.verify_quote(platform.quote(report()), [quote_verify.intel_sgx_root()])


def test_flipped_bytes_fail(platform: SimPlatform) -> None:
    data = platform.quote(report())
    # Header, report body (MRENCLAVE, REPORTDATA), ISV signature, attestation key,
    # QE report, QE report signature, QE auth data.
    offsets = [10, 48 + 64, 48 + 320, 436, 436 + 64, 436 + 128 + 50, 436 + 128 + 384 + 5,
               436 + 128 + 384 + 64 + 4]  # fmt: skip
    for offset in offsets:
        bad = bytearray(data)
        bad[offset] ^= 0x01
        with pytest.raises((AttestationError, FormatError)):
            quote_verify.verify_quote(bytes(bad), [platform.root_certificate])
