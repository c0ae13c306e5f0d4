"""Known-answer vectors in tests/vectors/detente/ (protocols/SPEC.md §12).

Each vector is checked both ways: parsing, verifying or decrypting the
recorded bytes gives the recorded values, and encoding the recorded values
gives the recorded bytes. Where a check can be made without the code under
test (AES-GCM with the recorded nonces, bytes sliced at recorded offsets), it
is.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocols import canonical, hpke, quote_layout, statements, stream
from protocols.documents import (
    Approval,
    DatasetManifest,
    IdentityDocument,
    JobTerms,
    Registration,
    ResultStatement,
    check_approvals,
)
from protocols.errors import FormatError, IntegrityError
from protocols.keys import HpkePrivateKey, HpkePublicKey, Kem, SigningKey
from protocols.statements import Envelope

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
HERE = VECTORS / "detente"


def _load(name: str) -> Any:
    return json.loads((HERE / name).read_text(encoding="utf-8"))["vectors"]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("detente_vector_generator", HERE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


# --- the files are what the code produces ------------------------------------------


def test_stored_files_equal_the_generator_output() -> None:
    built = _generator().build()
    assert sorted(built) == sorted(p.name for p in HERE.glob("*.json"))
    for name, data in built.items():
        assert (HERE / name).read_bytes() == data, (
            f"{name} no longer matches the code: if the format change is intended, run "
            "`.venv/bin/python tests/vectors/detente/generate.py`, review the diff and "
            "update protocols/SPEC.md"
        )


def test_the_nonce_seam_is_used_by_no_component() -> None:
    """Only the vector generator may choose a stream nonce prefix (SPEC §12)."""
    users = []
    for folder in (
        "protocols",
        "libos",
        "enclave-worker",
        "coordinator",
        "party-client",
        "experiments",
        "detente",
    ):
        for path in (ROOT / folder).rglob("*.py"):
            if "_seal_stream_with_nonce_prefix" in path.read_text(encoding="utf-8"):
                users.append(path.relative_to(ROOT).as_posix())
    assert users == ["protocols/protocols/stream.py"]


# --- canonical JSON ----------------------------------------------------------------

CANONICAL = _load("canonical_json.json")


@pytest.mark.parametrize("vector", CANONICAL, ids=_ids(CANONICAL))
def test_canonical_json(vector: dict[str, Any]) -> None:
    encoded = vector["canonical"].encode("utf-8")
    assert canonical.dumps(vector["document"]) == encoded
    if isinstance(vector["document"], dict):
        assert canonical.loads(encoded, "vector") == vector["document"]
    else:
        with pytest.raises(FormatError, match="must be a JSON object"):
            canonical.loads(encoded, "vector")


def test_canonical_json_pins_code_point_order_and_literal_utf8() -> None:
    (vector,) = [v for v in CANONICAL if v["name"] == "sort by code point"]
    assert vector["canonical"] == '{"z":-1,"é":0,"\ue000":1,"😀":2}'
    with pytest.raises(ValueError):
        canonical.dumps({"x": float("nan")})


# --- DSSE PAE ----------------------------------------------------------------------

PAE = _load("dsse_pae.json")


@pytest.mark.parametrize("vector", PAE, ids=_ids(PAE))
def test_pae(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["payload_hex"])
    assert statements.pae(vector["payload_type"], payload) == bytes.fromhex(vector["pae_hex"])


def test_pae_matches_the_dsse_specification_example() -> None:
    (vector,) = [v for v in PAE if v["name"] == "dsse example"]
    assert bytes.fromhex(vector["pae_hex"]) == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


# --- envelopes of every document type ----------------------------------------------

ENVELOPE_FILE = _load("envelopes.json")
ENVELOPES = ENVELOPE_FILE["envelopes"]
SIGNER = SigningKey.from_raw(bytes.fromhex(ENVELOPE_FILE["signer_seed_hex"]))


def _by_name(name: str) -> dict[str, Any]:
    return next(v for v in ENVELOPES if v["name"] == name)


def test_every_document_type_has_a_vector() -> None:
    types = {v["payload_type"] for v in ENVELOPES}
    assert types == {
        statements.REGISTRATION,
        statements.IDENTITY,
        statements.DATASET_MANIFEST,
        statements.JOB_TERMS,
        statements.APPROVAL,
        statements.RESULT,
    }
    assert SIGNER.verify_key.hex == ENVELOPE_FILE["signer_public_key_hex"]


def _verified_document(vector: dict[str, Any], envelope: Envelope) -> dict[str, Any]:
    """Verify with each type's own verifier, then re-encode through its dataclass."""
    kind = vector["payload_type"]
    if kind == statements.REGISTRATION:
        return Registration.verify(envelope).to_dict()
    if kind == statements.IDENTITY:
        doc = statements.verify(envelope, kind, None, "identity")
        identity = IdentityDocument.from_dict(doc)
        assert identity.signing_key == envelope.signer
        return identity.to_dict()
    if kind == statements.DATASET_MANIFEST:
        return DatasetManifest.verify(envelope).to_dict()
    if kind == statements.JOB_TERMS:
        return JobTerms.verify(envelope).to_dict()
    if kind == statements.APPROVAL:
        return Approval.from_dict(
            statements.verify(envelope, kind, SIGNER.verify_key, "a")
        ).to_dict()
    assert kind == statements.RESULT
    return ResultStatement.verify(envelope, SIGNER.verify_key).to_dict()


@pytest.mark.parametrize("vector", ENVELOPES, ids=_ids(ENVELOPES))
def test_envelope(vector: dict[str, Any]) -> None:
    data = vector["envelope"].encode("utf-8")
    payload = vector["payload"].encode("utf-8")
    envelope = Envelope.from_bytes(data)
    # Parse gives the recorded values ...
    assert envelope.payload_type == vector["payload_type"]
    assert envelope.payload == payload
    assert envelope.signer == SIGNER.verify_key
    assert envelope.signature == base64.b64decode(vector["signature_b64"])
    assert envelope.digest == vector["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    pae = statements.pae(vector["payload_type"], payload)
    assert hashlib.sha256(pae).hexdigest() == vector["pae_sha256"]
    SIGNER.verify_key.verify(envelope.signature, pae)
    assert _verified_document(vector, envelope) == vector["document"]
    # ... and encoding gives the recorded bytes (Ed25519 is deterministic, RFC 8032).
    assert canonical.dumps(vector["document"]) == payload
    assert envelope.to_bytes() == data
    assert statements.sign(vector["payload_type"], vector["document"], SIGNER).to_bytes() == data


def test_envelope_vectors_agree_with_each_other() -> None:
    """The approval approves the terms, the terms name the manifest, keys unwrap."""
    manifest_env = Envelope.from_bytes(_by_name("manifest")["envelope"].encode())
    terms_env = Envelope.from_bytes(_by_name("terms")["envelope"].encode())
    approval_env = Envelope.from_bytes(_by_name("approval")["envelope"].encode())
    terms = JobTerms.verify(terms_env)
    assert terms.datasets == [("ds-vector", manifest_env.digest)]
    check_approvals(terms_env, {SIGNER.verify_key}, [approval_env])
    manifest = DatasetManifest.verify(manifest_env)
    pq = _private(Kem.MLKEM768_X25519)
    assert manifest.sealed_to_hpke_key == pq.public_key
    data_key = hpke.unwrap_key(
        manifest.wrapped_key, pq, hpke.data_key_info(manifest.dataset_id, pq.public_key)
    )
    assert data_key == bytes.fromhex(_hpke("mlkem768x25519 data-key")["key_hex"])
    result = ResultStatement.verify(
        Envelope.from_bytes(_by_name("result")["envelope"].encode()), SIGNER.verify_key
    )
    assert result.terms_digest == terms_env.digest
    identity = IdentityDocument.from_dict(json.loads(_by_name("identity")["payload"]))
    assert identity.data_key_recipient(Kem.MLKEM768_X25519) == pq.public_key


# --- HPKE --------------------------------------------------------------------------

HPKE = _load("hpke.json")


def _hpke(name: str) -> dict[str, Any]:
    return next(v for v in HPKE if v["name"] == name)


def _private(kem: Kem) -> HpkePrivateKey:
    vector = next(v for v in HPKE if v["kem"] == kem.label)
    return HpkePrivateKey.from_raw(bytes.fromhex(vector["private_key_hex"]))


def test_both_suites_have_vectors() -> None:
    assert {(v["kem"], v["context"]["purpose"]) for v in HPKE} == {
        (kem.label, purpose) for kem in Kem for purpose in ("data-key", "result-key")
    }


@pytest.mark.parametrize("vector", HPKE, ids=_ids(HPKE))
def test_hpke(vector: dict[str, Any]) -> None:
    kem = Kem(vector["kem_id"])
    assert kem.label == vector["kem"]
    private_raw = bytes.fromhex(vector["private_key_hex"])
    private = HpkePrivateKey.from_raw(private_raw)
    public = HpkePublicKey.from_hex(vector["public_key_hex"])
    # Key encodings: parse gives the KEM, re-encoding gives the recorded bytes.
    assert private.kem is kem and public.kem is kem
    assert private.private_raw() == private_raw and len(private_raw) == kem.private_size
    assert private.public_key == public and public.hex == vector["public_key_hex"]
    assert public.raw[: len(kem.tag)] == kem.tag  # X25519: untagged (legacy form)
    # The info string is rebuilt from its context.
    context = vector["context"]
    info = (
        hpke.data_key_info(context["dataset_id"], public)
        if context["purpose"] == "data-key"
        else hpke.result_key_info(context["job_id"], context["output"], public)
    )
    assert info.hex() == vector["info_hex"]
    # Decryption with the fixed private key gives the recorded key.
    wrapped = bytes.fromhex(vector["wrapped_hex"])
    key = bytes.fromhex(vector["key_hex"])
    assert len(wrapped) == vector["enc_size"] + len(key) + 16 == hpke.wrapped_size(kem)
    assert hpke.unwrap_key(wrapped, private, info) == key
    for tampered in (
        bytes([wrapped[0] ^ 1]) + wrapped[1:],
        wrapped[:-1] + bytes([wrapped[-1] ^ 1]),
    ):
        with pytest.raises(IntegrityError):
            hpke.unwrap_key(tampered, private, info)
    other = _private(Kem.X25519 if kem is Kem.MLKEM768_X25519 else Kem.MLKEM768_X25519)
    with pytest.raises(IntegrityError):
        hpke.unwrap_key(wrapped, other, info)


# --- STREAM ------------------------------------------------------------------------

STREAM = _load("stream.json")


@pytest.mark.parametrize("vector", STREAM, ids=_ids(STREAM))
def test_stream(vector: dict[str, Any]) -> None:
    key = bytes.fromhex(vector["key_hex"])
    ad = bytes.fromhex(vector["associated_data_hex"])
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    header = bytes.fromhex(vector["header_hex"])
    blob = bytes.fromhex(vector["blob_hex"])
    chunks = [bytes.fromhex(c) for c in vector["chunks_hex"]]
    fields = vector["header_fields"]
    # Header: parse gives the recorded fields, packing them gives the recorded bytes.
    assert stream.parse_header(header) == vector["chunk_size"] == fields["chunk_size"]
    values = stream.HEADER.unpack(header)
    assert values == {
        "magic": fields["magic"].encode(),
        "version": fields["version"],
        "flags": fields["flags"],
        "chunk_size": fields["chunk_size"],
        "nonce_prefix": bytes.fromhex(fields["nonce_prefix_hex"]),
        "reserved": bytes.fromhex(fields["reserved_hex"]),
    }
    assert stream.HEADER.pack(values) == header
    # Blob: split and open give the recorded chunks and plaintext.
    assert stream.split_stream(blob) == (header, chunks)
    assert stream.open_stream(key, blob, ad) == plaintext
    # Independently of stream.py: each chunk is AES-256-GCM under the recorded nonce
    # (prefix ‖ counter ‖ last flag) with header ‖ associated data as AAD (SPEC §5.3).
    aead = AESGCM(key)
    opened = b"".join(
        aead.decrypt(bytes.fromhex(nonce), chunk, header + ad)
        for nonce, chunk in zip(vector["chunk_nonces_hex"], chunks, strict=True)
    )
    assert opened == plaintext
    # Sealing the recorded plaintext with the recorded prefix gives the recorded blob.
    resealed = stream._seal_stream_with_nonce_prefix(
        key, plaintext, ad, vector["chunk_size"], bytes.fromhex(vector["nonce_prefix_hex"])
    )
    assert resealed == blob


# --- SGX quote v3 layout -----------------------------------------------------------

LAYOUT = _load("sgx_quote_v3_layout.json")
FIXED = LAYOUT["fixed"]
SGX_QUOTE = (VECTORS / "sgx-dcap" / "sgx_quote").read_bytes()


def _readme_offsets() -> dict[str, int]:
    """The 'SGX quote v3 offsets (bytes): …' paragraph of tests/vectors/README.md."""
    text = " ".join((VECTORS / "README.md").read_text(encoding="utf-8").split())
    match = re.search(r"SGX quote v3 offsets \(bytes\): (.*?)The QE report's REPORTDATA", text)
    assert match, "tests/vectors/README.md lost its offset paragraph"
    body = re.sub(r"\([^)]*\)", "", match.group(1))
    offsets = {}
    for piece in re.split(r"[,;:]", body):
        found = re.match(r"\s*(?:then )?([A-Za-z][A-Za-z ]*?) (\d+)\b", piece)
        if found and found.group(1) != "report body from":
            offsets[found.group(1)] = int(found.group(2))
    return offsets


def test_layout_table_matches_the_readme() -> None:
    readme = _readme_offsets()
    table = {f["readme_name"]: f["offset"] for f in FIXED if f["readme_name"]}
    assert table == readme


def test_layout_table_is_contiguous() -> None:
    offset = 0
    for field in FIXED:
        assert field["offset"] == offset, field["field"]
        offset += field["size"]
    assert offset == 1014  # QE auth data starts here (SPEC §6.3)


def _parsed(quote: quote_layout.Quote, field: str) -> Any:
    if field == "signature_data_length":
        return len(quote.to_bytes()) - 436
    if field == "qe_auth_data_length":
        return len(quote.qe_auth_data)
    if field == "qe_report":
        return quote.qe_report.to_bytes()
    if field.startswith("report.reserved"):
        return quote.report.reserved[int(field[-1]) - 1]
    if field.startswith("report."):
        return getattr(quote.report, field.split(".", 1)[1])
    return getattr(quote, field)


def _as_recorded(field: dict[str, Any], value: Any) -> Any:
    return value.hex() if field["kind"] == "bytes" else value


def test_parser_reads_each_field_at_its_table_offset() -> None:
    """A quote with a distinct marker in every field: the parser must find each one."""
    auth, cert = b"AUT", b"CERTS"
    data = bytearray(1014 + len(auth) + 6 + len(cert))
    expected: dict[str, Any] = {}
    for n, field in enumerate(FIXED):
        start, size = field["offset"], field["size"]
        if field["kind"] == "bytes":
            value: Any = bytes((n * 17 + j) % 251 + 1 for j in range(size))
            data[start : start + size] = value
        else:
            value = {
                "version": 3,
                "signature_data_length": len(data) - 436,
                "qe_auth_data_length": len(auth),
            }.get(field["field"], 0x0101 * (n + 1))
            data[start : start + size] = value.to_bytes(size, "little")
        expected[field["field"]] = value
    data[1014:] = auth + (5).to_bytes(2, "little") + len(cert).to_bytes(4, "little") + cert
    quote = quote_layout.Quote.from_bytes(bytes(data))
    for field in FIXED:
        assert _parsed(quote, field["field"]) == expected[field["field"]], field["field"]
    assert (quote.qe_auth_data, quote.cert_data_type, quote.cert_data) == (auth, 5, cert)
    assert quote.to_bytes() == bytes(data)


def test_real_quote_values_at_the_table_offsets() -> None:
    info = LAYOUT["sgx_quote"]
    assert len(SGX_QUOTE) == info["size"]
    assert hashlib.sha256(SGX_QUOTE).hexdigest() == info["sha256"]
    quote = quote_layout.Quote.from_bytes(SGX_QUOTE)
    for field in FIXED:
        raw = SGX_QUOTE[field["offset"] : field["offset"] + field["size"]]
        sliced = raw.hex() if field["kind"] == "bytes" else int.from_bytes(raw, "little")
        assert sliced == field["sgx_quote_value"], field["field"]
        assert _as_recorded(field, _parsed(quote, field["field"])) == sliced, field["field"]
    assert (len(quote.qe_auth_data), quote.cert_data_type, len(quote.cert_data)) == (
        info["qe_auth_data_length"],
        info["cert_data_type"],
        info["cert_data_size"],
    )
    # The README's expected values for this quote.
    values = {f["field"]: f["sgx_quote_value"] for f in FIXED}
    assert values["report.mr_enclave"] == (
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    )
    assert values["report.mr_signer"] == (
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    )
    assert bytes.fromhex(values["report.report_data"]) == b"Hello, world!" + bytes(51)
    assert quote.to_bytes() == SGX_QUOTE
