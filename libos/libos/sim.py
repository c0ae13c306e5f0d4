"""The SIMULATION platform: a software stand-in for an SGX machine. NO hardware protection.

It plays the parts of Intel's provisioning and quoting enclaves so the rest of
Detente can run end to end where no SGX hardware exists:

- a SIMULATION root CA (self-signed P-256), standing in for the Intel SGX Root CA;
- a PCK key and certificate issued by that root, standing in for the platform's
  Provisioning Certification Key;
- an ECDSA P-256 attestation key, standing in for the Quoting Enclave's key;
- a 32-byte sealing secret, standing in for the CPU's sealing fuse key.

All of them are ordinary files under the platform directory, readable by
whoever runs the host: anyone with that access can forge quotes and unseal
data. Verifiers therefore refuse evidence chaining to this root unless their
policy explicitly allows simulation (docs/architecture.md, roles; docs/libos.md).

Quotes use the Intel SGX ECDSA quote v3 layout (protocols.quote_layout), so the same
parser and verifier serve simulated and real evidence.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from protocols import quote_layout, quote_verify
from protocols.errors import FormatError
from protocols.keys import write_secret_file

log = logging.getLogger(__name__)

ROOT_CN = "Detente SIMULATION Root CA (no hardware protection)"
PCK_CN = "Detente SIMULATION PCK"
ORGANIZATION = "Detente SIMULATION (no hardware protection)"
SEALING_SECRET_SIZE = 32
# Small, fixed SVNs: nothing real is being versioned.
SIM_QE_SVN = 1
SIM_PCE_SVN = 1
# The simulated QE's own identity, reported in its QE report.
SIM_QE_MRENCLAVE = hashlib.sha256(b"Detente SIMULATION quoting enclave").digest()
SIM_QE_MRSIGNER = hashlib.sha256(b"Detente SIMULATION quoting enclave signer").digest()
_CERT_LIFETIME = timedelta(days=3650)

_ROOT_CERT = "root_ca.pem"
_PCK_CERT = "pck.pem"
_PCK_KEY = "pck.key"
_ATTESTATION_KEY = "attestation.key"
_SEALING_SECRET = "sealing.secret"  # noqa: S105 (a file name)
_FILES = (_ROOT_CERT, _PCK_CERT, _PCK_KEY, _ATTESTATION_KEY, _SEALING_SECRET)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256-SHA256 as SGX stores it: r ‖ s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    """P-256 public key as SGX stores it: x ‖ y."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def _create(directory: Path) -> None:
    """Make a fresh SIMULATION platform in ``directory`` (which must not exist yet)."""
    now = datetime.now(UTC) - timedelta(days=1)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name(ROOT_CN)
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(root_ski, critical=False)
        .sign(root_key, hashes.SHA256())
    )
    pck_key = ec.generate_private_key(ec.SECP256R1())
    pck = (
        x509.CertificateBuilder()
        .subject_name(_name(PCK_CN))
        .issuer_name(root_name)
        .public_key(pck_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    # The root key is not kept: nothing else is ever issued under this root.
    attestation_key = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(mode=0o700)
    write_secret_file(directory / _ROOT_CERT, root.public_bytes(serialization.Encoding.PEM))
    write_secret_file(directory / _PCK_CERT, pck.public_bytes(serialization.Encoding.PEM))
    write_secret_file(directory / _PCK_KEY, _pem_key(pck_key))
    write_secret_file(directory / _ATTESTATION_KEY, _pem_key(attestation_key))
    write_secret_file(directory / _SEALING_SECRET, os.urandom(SEALING_SECRET_SIZE))


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FormatError(f"{path} is not an EC private key")
    return key


class SimPlatform:
    """A SIMULATION SGX platform stored in ``platform_dir``; created on first use.

    NO hardware protection: its keys are files on the host.
    """

    backend = "sim"

    def __init__(self, platform_dir: Path) -> None:
        self.directory = Path(platform_dir)
        if not all((self.directory / f).exists() for f in _FILES):
            self._create_once()
        self.root_certificate = x509.load_pem_x509_certificate(
            (self.directory / _ROOT_CERT).read_bytes()
        )
        self._pck_pem = (self.directory / _PCK_CERT).read_bytes()
        self.pck_certificate = x509.load_pem_x509_certificate(self._pck_pem)
        self._pck_key = _load_ec_key(self.directory / _PCK_KEY)
        self._attestation_key = _load_ec_key(self.directory / _ATTESTATION_KEY)
        self._sealing_secret = (self.directory / _SEALING_SECRET).read_bytes()
        if len(self._sealing_secret) != SEALING_SECRET_SIZE:
            raise FormatError(
                f"{self.directory / _SEALING_SECRET} is not {SEALING_SECRET_SIZE} bytes"
            )

    def _create_once(self) -> None:
        # Build in a private staging directory and rename it into place, so two
        # processes starting together end up sharing one platform.
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        staging = self.directory.with_name(f"{self.directory.name}.creating-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        _create(staging)
        try:
            staging.rename(self.directory)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not all((self.directory / f).exists() for f in _FILES):
                raise
        else:
            log.warning(
                "created a SIMULATION SGX platform in %s (no hardware protection)", self.directory
            )

    def __repr__(self) -> str:
        return f"<SimPlatform SIMULATION {self.directory} root={self.root_fingerprint[:16]}…>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SimPlatform holds secrets and cannot be pickled")

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 hex of the SIMULATION root certificate's DER."""
        return quote_verify.certificate_fingerprint(self.root_certificate)

    @property
    def sealing_secret(self) -> bytes:
        return self._sealing_secret

    def quote(self, report: quote_layout.ReportBody) -> bytes:
        """A v3 quote over ``report``, as the simulated Quoting Enclave would sign it."""
        attestation_key = _raw_public(self._attestation_key)
        qe_auth_data = hashlib.sha256(b"Detente SIMULATION QE auth data").digest()
        qe_report = quote_layout.ReportBody(
            cpu_svn=bytes(16),
            misc_select=0,
            attributes=(0x05).to_bytes(8, "little") + (0x03).to_bytes(8, "little"),
            mr_enclave=SIM_QE_MRENCLAVE,
            mr_signer=SIM_QE_MRSIGNER,
            isv_prod_id=1,
            isv_svn=SIM_QE_SVN,
            report_data=quote_layout.qe_report_data_for(attestation_key, qe_auth_data),
        )
        unsigned = quote_layout.Quote(
            version=quote_layout.QUOTE_VERSION,
            attestation_key_type=quote_layout.ATTESTATION_KEY_ECDSA_P256,
            tee_type=quote_layout.TEE_TYPE_SGX,
            qe_svn=SIM_QE_SVN,
            pce_svn=SIM_PCE_SVN,
            qe_vendor_id=quote_layout.SIMULATION_QE_VENDOR_ID,
            user_data=bytes(20),
            report=report,
            isv_signature=bytes(64),
            attestation_key=attestation_key,
            qe_report=qe_report,
            qe_report_signature=_raw_signature(self._pck_key, qe_report.to_bytes()),
            qe_auth_data=qe_auth_data,
            cert_data_type=quote_layout.CERT_DATA_PCK_CHAIN,
            cert_data=self._pck_pem
            + self.root_certificate.public_bytes(serialization.Encoding.PEM),
        )
        signed = replace(
            unsigned,
            isv_signature=_raw_signature(self._attestation_key, unsigned.signed_bytes()),
        )
        return signed.to_bytes()
