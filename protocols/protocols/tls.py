"""TLS for Detente's gRPC channels: self-signed P-256 certificates pinned by their users.

Detente has no web PKI: every TLS certificate is self-signed and its users
pin it. The coordinator's certificate is copied to each party once
(``detente party init --coordinator-cert``); the enclave's certificate is an
RA-TLS certificate (:mod:`protocols.ratls`) that a client accepts only after
its evidence verifies. Either way the client hands gRPC that exact
certificate as its only root and overrides the expected host name with the
certificate's own name, so the channel accepts that certificate and no other.

:func:`peer_certificate` is the one network helper here: it reads the
certificate a server presents, without trusting it, so that the caller can
verify it *before* any application byte is sent on a gRPC channel.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocols.errors import FormatError

DEFAULT_LIFETIME = timedelta(days=3650)
# Backdate certificates a little so a peer whose clock is slightly behind accepts them.
CLOCK_SKEW = timedelta(minutes=5)


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (the curve RA-TLS and every TLS 1.3 stack support)."""
    return ec.generate_private_key(ec.SECP256R1())


def self_signed_certificate(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    extensions: Sequence[x509.ExtensionType] = (),
    lifetime: timedelta = DEFAULT_LIFETIME,
    now: datetime | None = None,
) -> x509.Certificate:
    """A self-signed server certificate for ``common_name``.

    The name is also the certificate's only DNS subjectAltName, because TLS
    stacks match the host name against SANs and ignore the CN when a SAN is
    present (RFC 6125 §6.4.4). Key usage and CA flags are left out on purpose:
    the certificate is its own trust anchor, and OpenSSL/BoringSSL refuse a
    self-issued anchor whose key usage lacks keyCertSign.
    """
    start = (now or datetime.now(UTC)) - CLOCK_SKEW
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(data: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise FormatError(f"{what} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FormatError(f"{what} is not an EC private key")
    return key


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """Parse one certificate in PEM or DER; raise FormatError naming ``what`` otherwise."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise FormatError(f"{what} is not an X.509 certificate: {exc}") from None


def public_key_sha256(key: ec.EllipticCurvePublicKey | x509.Certificate) -> str:
    """SHA-256 (hex) of the SubjectPublicKeyInfo DER: what the enclave's identity names."""
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def certificate_sha256(cert: x509.Certificate) -> str:
    """SHA-256 (hex) of the certificate's DER: its fingerprint, as people compare it."""
    return hashlib.sha256(certificate_der(cert)).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
        raise FormatError("the TLS certificate must carry exactly one subject common name")
    return names[0].value


def server_credentials(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> grpc.ServerCredentials:
    """Server credentials for one key and certificate; clients are not asked for certificates."""
    return grpc.ssl_server_credentials([(private_key_pem(key), certificate_pem(cert))])


def pinned_channel(
    address: str, cert: x509.Certificate, options: Sequence[tuple[str, object]] = ()
) -> grpc.Channel:
    """A gRPC channel to ``address`` that accepts exactly ``cert`` and no other certificate.

    The certificate is the only root, and the expected server name is the
    certificate's own common name (``grpc.ssl_target_name_override``), so the
    address may be any host or IP.
    """
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate_pem(cert))
    return grpc.secure_channel(
        address,
        credentials,
        options=[*options, ("grpc.ssl_target_name_override", common_name(cert))],
    )


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) → (host, port); FormatError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FormatError(f"address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def peer_certificate(address: str, timeout: float = 10.0) -> bytes:
    """The DER certificate the TLS server at ``address`` presents, NOT verified.

    The caller must verify it (pin comparison, or RA-TLS evidence) before it
    trusts the server; nothing but a TLS handshake is sent. Raises OSError if
    the server cannot be reached or does not speak TLS.
    """
    host, port = split_address(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Verification is the caller's job, done on the returned bytes.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])  # gRPC servers negotiate HTTP/2 (RFC 7540 §3.3)
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError(f"the TLS server at {address} presented no certificate")
    return der
