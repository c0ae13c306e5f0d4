"""The post-quantum HPKE option (protocols/SPEC.md §4): suites, key encodings, documents."""

from __future__ import annotations

import copy
import os
import pickle

import pytest

from protocols import hpke
from protocols.documents import IdentityDocument, JobTerms, Recipient, Registration
from protocols.errors import AttestationError, FormatError, IntegrityError
from protocols.keys import HpkePrivateKey, HpkePublicKey, Kem, SigningKey

PQ = Kem.MLKEM768_X25519


@pytest.fixture(scope="module", params=list(Kem), ids=lambda k: k.label)
def recipient(request: pytest.FixtureRequest) -> HpkePrivateKey:
    return HpkePrivateKey.generate(request.param)


# --- wrapping -----------------------------------------------------------------------


def test_each_suite_round_trips_with_its_own_size(recipient: HpkePrivateKey) -> None:
    key = os.urandom(32)
    info = hpke.data_key_info("ds-1", recipient.public_key)
    wrapped = hpke.wrap_key(key, recipient.public_key, info)
    # RFC 9180 Nenc: 32 for DHKEM(X25519); 1088 (ML-KEM-768 ciphertext) + 32 for X-Wing.
    assert (
        len(wrapped)
        == hpke.wrapped_size(recipient.kem)
        == {Kem.X25519: 80, PQ: 1168}[recipient.kem]
    )
    assert hpke.unwrap_key(wrapped, recipient, info) == key
    assert hpke.unwrap_key(hpke.wrap_key(key, recipient.public_key, info), recipient, info) == key


def test_the_suite_follows_the_recipient_key() -> None:
    x, pq = HpkePrivateKey.generate(), HpkePrivateKey.generate(PQ)
    info = b"detente/v1 test"
    # A PQ wrapping cannot be opened as X25519 (nor the other way): the KEMs differ.
    with pytest.raises(IntegrityError, match="cannot unwrap"):
        hpke.unwrap_key(hpke.wrap_key(bytes(32), pq.public_key, info), x, info)
    with pytest.raises(IntegrityError, match="cannot unwrap"):
        hpke.unwrap_key(hpke.wrap_key(bytes(32), x.public_key, info), pq, info)


def test_pq_wrapping_is_bound_to_its_context() -> None:
    me, other = HpkePrivateKey.generate(PQ), HpkePrivateKey.generate(PQ)
    info = hpke.result_key_info("job-1", "model", me.public_key)
    wrapped = hpke.wrap_key(os.urandom(32), me.public_key, info)
    for wrong in (
        hpke.result_key_info("job-1", "metrics", me.public_key),
        hpke.result_key_info("job-2", "model", me.public_key),
        hpke.result_key_info("job-1", "model", other.public_key),
        hpke.data_key_info("job-1", me.public_key),
    ):
        with pytest.raises(IntegrityError):
            hpke.unwrap_key(wrapped, me, wrong)
    with pytest.raises(IntegrityError):
        hpke.unwrap_key(wrapped, other, info)


def test_pq_info_ends_with_the_tagged_recipient_encoding() -> None:
    pk = HpkePrivateKey.generate(PQ).public_key
    info = hpke.data_key_info("ds-1", pk)
    assert info == b"detente/v1 data-key ds-1 " + pk.raw
    assert info.endswith(b"\x64\x7a" + pk.raw[2:]) and len(pk.raw) == 1218


def test_every_flipped_byte_of_a_pq_wrapping_is_rejected() -> None:
    me = HpkePrivateKey.generate(PQ)
    info = hpke.data_key_info("ds-1", me.public_key)
    wrapped = hpke.wrap_key(os.urandom(32), me.public_key, info)
    # ML-KEM rejects implicitly (FIPS 203 §6.3): a changed ciphertext yields another
    # shared secret, so the AEAD tag fails; X25519 part and AEAD part likewise.
    for i in range(0, len(wrapped), 7):
        tampered = bytearray(wrapped)
        tampered[i] ^= 0x01
        with pytest.raises(IntegrityError):
            hpke.unwrap_key(bytes(tampered), me, info)
    for length in (0, 1, 1119, 1120, 1135, 1167):
        with pytest.raises(IntegrityError):
            hpke.unwrap_key(wrapped[:length], me, info)


# --- key encodings ------------------------------------------------------------------


def test_existing_x25519_keys_keep_their_bytes() -> None:
    legacy_hex = "20" * 32  # any 32-byte key, as stored before the PQ option
    pk = HpkePublicKey.from_hex(legacy_hex)
    assert pk.kem is Kem.X25519 and pk.hex == legacy_hex and pk.raw == bytes([0x20]) * 32
    private = HpkePrivateKey.from_raw(bytes(range(32)))
    assert private.kem is Kem.X25519 and private.private_raw() == bytes(range(32))
    assert len(private.public_key.raw) == 32


def test_pq_keys_are_tagged_with_their_kem_id() -> None:
    key = HpkePrivateKey.generate(PQ)
    raw = key.private_raw()
    assert raw[:2] == b"\x64\x7a" and len(raw) == PQ.private_size == 98
    pk = key.public_key
    assert pk.hex.startswith("647a") and len(pk.raw) == PQ.public_size == 1218
    assert pk.kem is PQ and HpkePublicKey.from_hex(pk.hex) == pk
    again = HpkePrivateKey.from_raw(raw)
    assert again.kem is PQ and again.public_key == pk and again.private_raw() == raw


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "got 0 bytes"),
        (bytes(31), "got 31 bytes"),
        (bytes(33), "got 33 bytes"),
        (b"\x64\x7a" + bytes(1215), "1218 bytes starting with KEM id 0x647a"),
        (b"\x64\x7b" + bytes(1216), "got 1218 bytes"),
        (b"\x00\x20" + bytes(32), "got 34 bytes"),  # X25519 is never tagged
        (b"\x64\x7a" + b"\xff" * 1216, "not a valid mlkem768x25519 HPKE public key"),
    ],
)
def test_bad_public_key_encodings_are_named(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        HpkePublicKey(data)
    with pytest.raises(FormatError):
        HpkePublicKey.from_hex(data.hex())


@pytest.mark.parametrize(
    "data",
    [b"", bytes(31), b"\x64\x7a" + bytes(95), b"\x64\x7a" + bytes(97), b"\x47\x64" + bytes(96)],
)
def test_bad_private_key_encodings_are_named(data: bytes) -> None:
    with pytest.raises(FormatError, match=r"an HPKE private key is 32 bytes .* or 98 bytes"):
        HpkePrivateKey.from_raw(data)


def test_public_key_from_non_hex_text() -> None:
    with pytest.raises(FormatError, match="not a hex HPKE public key"):
        HpkePublicKey.from_hex("647a zz")


def test_pq_private_key_handles_do_not_show_or_pickle() -> None:
    key = HpkePrivateKey.generate(PQ)
    raw = key.private_raw()
    for text in (repr(key), str(key), f"{key!r}", repr([key])):
        assert raw.hex() not in text and raw[2:34].hex() not in text and "secret" in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(key)


# --- documents ----------------------------------------------------------------------


def _identity(pq: HpkePublicKey | None) -> IdentityDocument:
    return IdentityDocument(
        "sim", HpkePrivateKey.generate().public_key, SigningKey.generate().verify_key, "", pq
    )


def test_identity_without_pq_key_keeps_its_former_fields() -> None:
    doc = _identity(None).to_dict()
    assert "hpke_pq_key" not in doc
    assert IdentityDocument.from_dict(doc).hpke_pq_key is None
    assert IdentityDocument.from_dict({**doc, "hpke_pq_key": None}).hpke_pq_key is None


def test_identity_with_pq_key_round_trips_and_serves_each_suite() -> None:
    pq = HpkePrivateKey.generate(PQ).public_key
    ident = _identity(pq)
    doc = ident.to_dict()
    assert doc["hpke_pq_key"] == pq.hex
    parsed = IdentityDocument.from_dict(doc)
    assert parsed == ident
    assert parsed.data_key_recipient(PQ) == pq
    assert parsed.data_key_recipient(Kem.X25519) == ident.hpke_key


def test_a_pq_party_never_falls_back_to_x25519() -> None:
    with pytest.raises(AttestationError, match="offers no mlkem768x25519 HPKE key"):
        _identity(None).data_key_recipient(PQ)


def test_identity_pq_field_must_hold_a_pq_key() -> None:
    doc = _identity(None).to_dict()
    with pytest.raises(FormatError, match="hpke_pq_key must be an ML-KEM-768\\+X25519 key"):
        IdentityDocument.from_dict({**doc, "hpke_pq_key": "11" * 32})
    with pytest.raises(FormatError, match="'hpke_pq_key' must be str"):
        IdentityDocument.from_dict({**doc, "hpke_pq_key": 7})


def test_pq_registration_and_recipient_survive_signing() -> None:
    signer = SigningKey.generate()
    pq = HpkePrivateKey.generate(PQ).public_key
    reg = Registration.verify(Registration("bank-pq", signer.verify_key, pq).sign(signer))
    assert reg.hpke_key == pq and reg.hpke_key.kem is PQ
    terms = JobTerms(
        job_id="job-pq",
        datasets=[("ds-1", "00" * 32)],
        join="horizontal",
        objective="binary:logistic",
        label="y",
        params={},
        num_rounds=1,
        seed=0,
        allowed_mrenclaves=["ab" * 32],
        outputs=["model"],
        recipients=[Recipient("bank-pq", signer.verify_key, pq)],
        expires_at=1,
        proposer=signer.verify_key.hex,
    )
    parsed = JobTerms.verify(terms.sign(signer))
    assert parsed.recipients[0].hpke_key.kem is PQ
