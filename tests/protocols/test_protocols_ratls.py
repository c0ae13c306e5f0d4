"""RA-TLS certificates: round trip, each refusal naming its rule, hostile extension bytes.

Quotes come from a real SIMULATION platform (libos.sim) made for this module;
identity documents are signed here, as the enclave worker signs them.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libos.sim import SimPlatform
from protocols import quote_layout, ratls, statements, tls
from protocols.attestation import Evidence, report_data_for
from protocols.documents import IdentityDocument
from protocols.errors import AttestationError, DetenteError, FormatError
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.policy import AttestationPolicy

MRENCLAVE = bytes.fromhex("5e" * 32)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform(tmp_path_factory.mktemp("ratls") / "platform")


def policy_for(platform: SimPlatform, mrenclave: bytes = MRENCLAVE) -> AttestationPolicy:
    return AttestationPolicy(
        mrenclave=(mrenclave.hex(),),
        allow_simulation=True,
        simulation_roots=(platform.root_fingerprint,),
    )


def evidence_for(
    platform: SimPlatform,
    tls_key_sha256: str,
    nonce: bytes = ratls.CERTIFICATE_NONCE,
    mrenclave: bytes = MRENCLAVE,
) -> Evidence:
    """What the enclave worker makes: an identity naming the TLS key, quoted with ``nonce``."""
    signing = SigningKey.generate()
    document = IdentityDocument(
        "sim", HpkePrivateKey.generate().public_key, signing.verify_key, tls_key_sha256
    )
    envelope = statements.sign(statements.IDENTITY, document.to_dict(), signing)
    report = quote_layout.ReportBody(
        cpu_svn=bytes(16),
        misc_select=0,
        attributes=(0x05).to_bytes(8, "little") + (0x03).to_bytes(8, "little"),
        mr_enclave=mrenclave,
        mr_signer=bytes(32),
        isv_prod_id=1,
        isv_svn=1,
        report_data=report_data_for(envelope.payload, nonce),
    )
    return Evidence(identity=envelope.to_bytes(), quote=platform.quote(report), backend="sim")


def ratls_cert(
    platform: SimPlatform, **kwargs: object
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Evidence]:
    key = tls.generate_key()
    evidence = evidence_for(platform, tls.public_key_sha256(key.public_key()), **kwargs)  # type: ignore[arg-type]
    return key, ratls.create_certificate(key, evidence), evidence


def der(cert: x509.Certificate) -> bytes:
    return tls.certificate_der(cert)


def refused(
    cert_der: bytes, policy: AttestationPolicy, **kwargs: object
) -> ratls.CertificateRefused:
    with pytest.raises(ratls.CertificateRefused) as info:
        ratls.verify_ratls_certificate(cert_der, policy, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, AttestationError)
    assert str(info.value).startswith("RA-TLS certificate refused — ")
    return info.value


# --------------------------------------------------------------------------- round trip


def test_round_trip_carries_the_evidence_under_both_oids(platform: SimPlatform) -> None:
    key, cert, evidence = ratls_cert(platform)
    enclave = ratls.verify_ratls_certificate(der(cert), policy_for(platform))
    assert enclave.mrenclave == MRENCLAVE.hex() and enclave.simulation
    assert enclave.identity.tls_public_key_sha256 == tls.public_key_sha256(key.public_key())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert enclave.identity.tls_public_key_sha256 == hashlib.sha256(spki).hexdigest()
    extensions = {e.oid.dotted_string: e for e in cert.extensions}
    legacy = extensions["1.2.840.113741.1337.6"]
    tagged = extensions["2.23.133.5.4.9"]
    assert not legacy.critical and not tagged.critical
    assert legacy.value.value == evidence.quote  # type: ignore[attr-defined]
    assert ratls.decode_evidence(tagged.value.value) == evidence  # type: ignore[attr-defined]
    assert tls.common_name(cert) == ratls.COMMON_NAME
    assert cert.issuer == cert.subject


def test_tagged_evidence_is_a_der_octet_string_of_canonical_json(platform: SimPlatform) -> None:
    _, _, evidence = ratls_cert(platform)
    value = ratls.encode_evidence(evidence)
    body = ratls.parse_der_octet_string(value, "value")
    assert value[0] == 0x04 and value[1] == 0x80 | 2  # two length bytes for 2–64 KiB
    assert int.from_bytes(value[2:4], "big") == len(body)
    assert body.startswith(b'{"backend":"sim","identity":"')
    assert b'"type":"application/vnd.detente.ratls-evidence.v1+json","version":1}' in body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x04\x03abc", None),
        (b"\x04\x81\x80" + b"a" * 128, None),
        (b"\x04\x81\x05abcde", "shortest"),  # 5 fits in one length byte
        (b"\x04\x82\x00\x90" + b"a" * 0x90, "shortest"),
        (b"\x04\x04abc", "does not match"),
        (b"\x04\x02abc", "does not match"),
        (b"\x30\x03abc", "not a DER OCTET STRING"),
        (b"\x04\x80", "invalid DER length"),
        (b"", "not a DER OCTET STRING"),
    ],
)
def test_der_octet_string_is_strict(data: bytes, message: str | None) -> None:
    if message is None:
        assert ratls.der_octet_string(ratls.parse_der_octet_string(data, "v")) == data
    else:
        with pytest.raises(FormatError, match=message):
            ratls.parse_der_octet_string(data, "v")


# --------------------------------------------------------------------------- refusals


def test_quote_binding_another_key_is_refused_by_the_tls_key_rule(platform: SimPlatform) -> None:
    _, _, evidence = ratls_cert(platform)  # evidence names the first key
    other_key = tls.generate_key()
    lifted = ratls.create_certificate(other_key, evidence)  # ...copied into another key's cert
    error = refused(der(lifted), policy_for(platform))
    assert error.rule == "tls-key"
    assert "evidence was taken from another certificate" in str(error)


def test_certificate_without_the_extension_is_refused(platform: SimPlatform) -> None:
    key = tls.generate_key()
    plain = tls.self_signed_certificate(key, ratls.COMMON_NAME)
    error = refused(der(plain), policy_for(platform))
    assert error.rule == "extension"
    assert "no attestation evidence" in str(error) and "2.23.133.5.4.9" in str(error)


def test_bare_gramine_quote_is_refused(platform: SimPlatform) -> None:
    key, _, evidence = ratls_cert(platform)
    bare = tls.self_signed_certificate(
        key,
        ratls.COMMON_NAME,
        extensions=[x509.UnrecognizedExtension(ratls.GRAMINE_QUOTE_OID, evidence.quote)],
    )
    error = refused(der(bare), policy_for(platform))
    assert error.rule == "extension" and "bare Gramine quote" in str(error)


def test_legacy_and_tagged_quotes_must_agree(platform: SimPlatform) -> None:
    key, _, evidence = ratls_cert(platform)
    _, _, other = ratls_cert(platform)
    mixed = tls.self_signed_certificate(
        key,
        ratls.COMMON_NAME,
        extensions=[
            x509.UnrecognizedExtension(ratls.GRAMINE_QUOTE_OID, other.quote),
            x509.UnrecognizedExtension(
                ratls.TCG_DICE_TAGGED_EVIDENCE_OID, ratls.encode_evidence(evidence)
            ),
        ],
    )
    error = refused(der(mixed), policy_for(platform))
    assert error.rule == "extension" and "different quotes" in str(error)


def test_policy_excluding_the_measurement_is_refused(platform: SimPlatform) -> None:
    _, cert, _ = ratls_cert(platform)
    error = refused(der(cert), policy_for(platform, mrenclave=bytes(32)))
    assert error.rule == "measurement"
    assert f"MRENCLAVE {MRENCLAVE.hex()} is not in the policy" in str(error)
    assert {r.name: r.passed for r in error.verdict}["quote"] is True


def test_simulation_refused_by_a_strict_policy(platform: SimPlatform) -> None:
    _, cert, _ = ratls_cert(platform)
    strict = AttestationPolicy(mrenclave=(MRENCLAVE.hex(),))
    error = refused(der(cert), strict)
    assert error.rule in ("quote", "simulation")
    assert "SIMULATION" in str(error) or "simulation" in str(error)


def test_evidence_with_a_nonce_is_not_certificate_evidence(platform: SimPlatform) -> None:
    _, cert, _ = ratls_cert(platform, nonce=b"\x01" * 32)
    error = refused(der(cert), policy_for(platform))
    assert error.rule == "report-data"


def test_altered_certificate_is_refused(platform: SimPlatform) -> None:
    _, cert, _ = ratls_cert(platform)
    data = bytearray(der(cert))
    data[-3] ^= 0x01  # inside the signature
    error = refused(bytes(data), policy_for(platform))
    assert error.rule == "certificate"


def test_certificate_not_self_signed_is_refused(platform: SimPlatform) -> None:
    key, cert, _ = ratls_cert(platform)
    issuer = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "someone else")])
    builder = x509.CertificateBuilder(
        issuer_name=issuer,
        subject_name=cert.subject,
        public_key=key.public_key(),
        serial_number=1,
        not_valid_before=cert.not_valid_before_utc,
        not_valid_after=cert.not_valid_after_utc,
        extensions=list(cert.extensions),
    )
    foreign = builder.sign(tls.generate_key(), hashes.SHA256())
    assert refused(der(foreign), policy_for(platform)).rule == "certificate"


def test_certificate_outside_its_validity_is_refused(platform: SimPlatform) -> None:
    _, cert, _ = ratls_cert(platform)
    later = cert.not_valid_after_utc + timedelta(seconds=1)
    error = refused(der(cert), policy_for(platform), now=later)
    assert error.rule == "certificate" and "not valid at" in str(error)


def test_rsa_or_other_curve_keys_are_refused(platform: SimPlatform) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = tls.self_signed_certificate(key, ratls.COMMON_NAME)  # type: ignore[arg-type]
    assert refused(der(cert), policy_for(platform)).rule == "certificate"


@pytest.mark.parametrize("data", [b"", b"not a certificate", b"\x30\x03\x02\x01\x00"])
def test_garbage_is_refused_as_certificate(platform: SimPlatform, data: bytes) -> None:
    assert refused(data, policy_for(platform)).rule == "certificate"


def test_evidence_of_wrong_type_or_version_is_refused(platform: SimPlatform) -> None:
    from protocols import canonical

    for doc, message in [
        ({"type": "x", "version": 1, "backend": "sim", "identity": "", "quote": ""}, "has type"),
        (
            {
                "type": ratls.EVIDENCE_TYPE,
                "version": 2,
                "backend": "sim",
                "identity": "",
                "quote": "",
            },
            "unsupported version",
        ),
        ({"type": ratls.EVIDENCE_TYPE, "version": 1, "backend": "sim", "identity": ""}, "no field"),
        (
            {
                "type": ratls.EVIDENCE_TYPE,
                "version": 1,
                "backend": "s",
                "identity": "!",
                "quote": "",
            },
            "base64",
        ),
    ]:
        with pytest.raises(FormatError, match=message):
            ratls.decode_evidence(ratls.der_octet_string(canonical.dumps(doc)))
    with pytest.raises(FormatError, match="more than"):
        ratls.decode_evidence(b"\x04" * (ratls.MAX_EVIDENCE + 1))


# --------------------------------------------------------------------------- hostile bytes


@pytest.fixture(scope="module")
def sample(platform: SimPlatform) -> tuple[bytes, bytes]:
    _, cert, evidence = ratls_cert(platform)
    return der(cert), ratls.encode_evidence(evidence)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, value in edits:
        out[index % len(out)] = value
    return bytes(out)


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes_only_raise_detente_errors(data: bytes) -> None:
    for parse in (
        lambda: ratls.decode_evidence(data),
        lambda: ratls.parse_der_octet_string(data, "v"),
        lambda: ratls.parse_ratls_certificate(data),
    ):
        try:
            parse()
        except DetenteError:
            pass


def test_mutated_certificates_and_extensions_only_raise_detente_errors(
    sample: tuple[bytes, bytes], platform: SimPlatform
) -> None:
    cert_der, value = sample
    policy = policy_for(platform)

    @SETTINGS
    @given(
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4)
    )
    def check(edits: list[tuple[int, int]]) -> None:
        for parse in (
            lambda: ratls.verify_ratls_certificate(_mutate(cert_der, edits), policy),
            lambda: ratls.decode_evidence(_mutate(value, edits)),
        ):
            try:
                parse()
            except DetenteError:
                pass

    check()
