"""Write (or check) Detente's known-answer vectors in this folder.

    .venv/bin/python tests/vectors/detente/generate.py          # rewrite the files
    .venv/bin/python tests/vectors/detente/generate.py --check  # exit 1 if any differs

Every value comes from fixed inputs: fixed keys (derived below from labels
with SHA-256/SHA-512, so anyone can recompute them), a fixed stream nonce
prefix, fixed documents. Ed25519 signatures are deterministic (RFC 8032 §5.1.6),
so envelopes are reproducible. HPKE encapsulation is not: cryptography's
``hpke.Suite.encrypt`` draws its ephemeral key internally and exposes no
seed (no RFC 9180 DeriveKeyPair(ikmE) entry point), so an HPKE vector is
checked by *decryption* with the fixed private key. To keep this script
idempotent, a stored wrapping that still decrypts to the recorded key under the
recorded info is kept; only a missing or stale one is drawn afresh.

The stream vectors use ``protocols.stream._seal_stream_with_nonce_prefix``, a
test-only seam (production code draws the prefix at random; a test fails if a
component package refers to the seam). See protocols/SPEC.md §12.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from protocols import canonical, hpke, statements, stream
from protocols.documents import (
    Approval,
    DatasetManifest,
    IdentityDocument,
    JobTerms,
    OutputRecord,
    Recipient,
    Registration,
    ResultStatement,
)
from protocols.keys import HpkePrivateKey, Kem, SigningKey
from protocols.objectives import LabelSummary

HERE = Path(__file__).resolve().parent
SGX_QUOTE = HERE.parent / "sgx-dcap" / "sgx_quote"


def _label(text: str) -> bytes:
    return hashlib.sha256(b"detente/vectors/" + text.encode()).digest()


# --- fixed inputs -------------------------------------------------------------------

SIGNER_SEED = _label("ed25519-signer")
X25519_PRIVATE = _label("x25519")
PQ_PRIVATE = (
    Kem.MLKEM768_X25519.tag
    + hashlib.sha512(b"detente/vectors/mlkem768-seed").digest()
    + _label("mlkem768x25519-x25519")
)
STREAM_KEY = _label("stream-key")
STREAM_NONCE_PREFIX = bytes.fromhex("00010203040506")
DATA_KEY = _label("data-key")
CONTENT_KEY = _label("content-key")
MRENCLAVE = _label("mrenclave").hex()
CREATED_AT = 1767225600  # 2026-01-01T00:00:00Z
EXPIRES_AT = 1767312000  # one day later


def signer() -> SigningKey:
    return SigningKey.from_raw(SIGNER_SEED)


def hpke_keys() -> dict[Kem, HpkePrivateKey]:
    return {
        Kem.X25519: HpkePrivateKey.from_raw(X25519_PRIVATE),
        Kem.MLKEM768_X25519: HpkePrivateKey.from_raw(PQ_PRIVATE),
    }


def _file(description: str, vectors: Any) -> bytes:
    doc = {
        "description": description,
        "generator": "tests/vectors/detente/generate.py",
        "spec": "protocols/SPEC.md",
        "vectors": vectors,
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _previous(name: str) -> dict[str, Any]:
    path = HERE / name
    if not path.exists():
        return {}
    return {v["name"]: v for v in json.loads(path.read_text())["vectors"]}


# --- canonical JSON (SPEC §1) ------------------------------------------------------

CANONICAL_CASES: list[tuple[str, Any]] = [
    ("empty object", {}),
    ("keys sorted, no whitespace", {"b": 1, "a": [True, False, None], "A": "x"}),
    ("nested objects sort too", {"z": {"y": 1, "x": {"w": [], "v": {}}}, "a": 0}),
    ("non-ASCII written literally", {"name": "Crédit Agricole — 信用", "emoji": "😀"}),
    # Code-point order, not RFC 8785's UTF-16 order: U+E000 sorts before U+1F600 here.
    ("sort by code point", {"😀": 2, "\ue000": 1, "é": 0, "z": -1}),
    ("escapes", {"s": 'quote " backslash \\ newline \n tab \t nul \u0000 del \u007f /'}),
    ("integers", {"zero": 0, "neg": -7, "big": 2**63, "huge": 10**30}),
    ("floats as Python repr", {"eta": 0.1, "third": 1 / 3, "exp": 1e100, "neg": -2.5e-7}),
    ("top-level array", [3, "b", {"b": 2, "a": 1}]),
    ("empty string key", {"": "", " ": " "}),
]


def canonical_vectors() -> list[dict[str, Any]]:
    return [
        {"name": name, "document": doc, "canonical": canonical.dumps(doc).decode("utf-8")}
        for name, doc in CANONICAL_CASES
    ]


# --- DSSE PAE (SPEC §2.1) -----------------------------------------------------------

PAE_CASES: list[tuple[str, str, bytes]] = [
    # The example of the DSSE protocol document (secure-systems-lab/dsse, protocol.md).
    ("dsse example", "http://example.com/HelloWorld", b"hello world"),
    ("empty payload", statements.APPROVAL, b""),
    ("empty type", "", b"x"),
    ("type length counts UTF-8 bytes", "application/vnd.détente+json", b"{}"),
    ("binary payload with spaces", "t", bytes([0, 32, 10, 255, 32])),
]


def pae_vectors() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "payload_type": payload_type,
            "payload_hex": payload.hex(),
            "pae_hex": statements.pae(payload_type, payload).hex(),
        }
        for name, payload_type, payload in PAE_CASES
    ]


# --- HPKE (SPEC §4) -----------------------------------------------------------------


def _hpke_cases() -> list[tuple[str, Kem, bytes, bytes, dict[str, str]]]:
    keys = hpke_keys()
    cases = []
    for kem, key in keys.items():
        pk = key.public_key
        cases.append(
            (
                f"{kem.label} data-key",
                kem,
                DATA_KEY,
                hpke.data_key_info("ds-vector", pk),
                {"purpose": "data-key", "dataset_id": "ds-vector"},
            )
        )
        cases.append(
            (
                f"{kem.label} result-key",
                kem,
                CONTENT_KEY,
                hpke.result_key_info("job-vector", "model", pk),
                {"purpose": "result-key", "job_id": "job-vector", "output": "model"},
            )
        )
    return cases


def hpke_vectors() -> list[dict[str, Any]]:
    keys = hpke_keys()
    previous = _previous("hpke.json")
    out = []
    for name, kem, key, info, context in _hpke_cases():
        private = keys[kem]
        wrapped = None
        old = previous.get(name)
        if (
            old
            and old["info_hex"] == info.hex()
            and old["private_key_hex"] == private.private_raw().hex()
        ):
            try:
                if hpke.unwrap_key(bytes.fromhex(old["wrapped_hex"]), private, info) == key:
                    wrapped = bytes.fromhex(old["wrapped_hex"])
            except Exception:  # a stale vector is simply drawn again
                wrapped = None
        if wrapped is None:
            wrapped = hpke.wrap_key(key, private.public_key, info)
        out.append(
            {
                "name": name,
                "kem": kem.label,
                "kem_id": kem.value,
                "private_key_hex": private.private_raw().hex(),
                "public_key_hex": private.public_key.hex,
                "context": context,
                "info_hex": info.hex(),
                "key_hex": key.hex(),
                "enc_size": hpke.ENC_SIZE[kem],
                "wrapped_hex": wrapped.hex(),
            }
        )
    return out


def _wrapped(name: str, hpke_file: list[dict[str, Any]]) -> bytes:
    return bytes.fromhex(next(v for v in hpke_file if v["name"] == name)["wrapped_hex"])


# --- signed documents (SPEC §2–3) ---------------------------------------------------


def documents(hpke_file: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    key = signer()
    me = key.verify_key
    keys = hpke_keys()
    x_pub, pq_pub = keys[Kem.X25519].public_key, keys[Kem.MLKEM768_X25519].public_key
    registration = Registration("bank-a", me, x_pub)
    registration_pq = Registration("bank-pq", me, pq_pub)
    # Positional: the fourth field is the TLS key binding (protocols/SPEC.md §3.2).
    identity = IdentityDocument("sim", x_pub, me, _label("tls").hex(), pq_pub)
    manifest = DatasetManifest(
        dataset_id="ds-vector",
        name="credit.csv",
        owner_key=me,
        schema_sha256=_label("schema").hex(),
        row_count=600,
        ciphertext_sha256=_label("ciphertext").hex(),
        ciphertext_size=123456,
        wrapped_key=_wrapped("mlkem768x25519 data-key", hpke_file),
        sealed_to_mrenclave=MRENCLAVE,
        sealed_to_hpke_key=pq_pub,
        public_schema=[{"name": "age", "type": "float"}, {"name": "label", "type": "float"}],
        created_at=CREATED_AT,
        label=LabelSummary("label", "binary", 2, True, True, False),
    )
    manifest_envelope = manifest.sign(key)
    terms = JobTerms(
        job_id="job-vector",
        datasets=[("ds-vector", manifest_envelope.digest)],
        join="horizontal",
        objective="binary:logistic",
        label="label",
        params={"tree_method": "hist", "max_depth": 4, "eta": 0.1, "nthread": 2},
        num_rounds=10,
        seed=7,
        allowed_mrenclaves=[MRENCLAVE],
        outputs=["model", "metrics"],
        recipients=[
            Recipient("bank-a", me, x_pub),
            Recipient("bank-pq", SigningKey.from_raw(_label("second-signer")).verify_key, pq_pub),
        ],
        expires_at=EXPIRES_AT,
        id_column="id",
        proposer=me.hex,
        release_to="named",
        max_seconds=600,
    )
    terms_envelope = terms.sign(key)
    approval = Approval("job-vector", terms_envelope.digest)
    result = ResultStatement(
        job_id="job-vector",
        terms_digest=terms_envelope.digest,
        mrenclave=MRENCLAVE,
        outputs=[
            OutputRecord(
                "model",
                _label("model-ciphertext").hex(),
                {me.hex: _wrapped("mlkem768x25519 result-key", hpke_file)},
            )
        ],
        summary={"rows": 600, "features": 23, "rounds": 10},
    )
    return [
        ("registration", statements.REGISTRATION, registration.to_dict()),
        ("registration-pq", statements.REGISTRATION, registration_pq.to_dict()),
        ("identity", statements.IDENTITY, identity.to_dict()),
        ("manifest", statements.DATASET_MANIFEST, manifest.to_dict()),
        ("terms", statements.JOB_TERMS, terms.to_dict()),
        ("approval", statements.APPROVAL, approval.to_dict()),
        ("result", statements.RESULT, result.to_dict()),
    ]


def envelope_vectors(hpke_file: list[dict[str, Any]]) -> dict[str, Any]:
    key = signer()
    out = []
    for name, payload_type, document in documents(hpke_file):
        envelope = statements.sign(payload_type, document, key)
        out.append(
            {
                "name": name,
                "payload_type": payload_type,
                "document": document,
                "payload": envelope.payload.decode("utf-8"),
                "payload_sha256": envelope.digest,
                "pae_sha256": hashlib.sha256(
                    statements.pae(payload_type, envelope.payload)
                ).hexdigest(),
                "signature_b64": canonical.b64(envelope.signature),
                "envelope": envelope.to_bytes().decode("utf-8"),
            }
        )
    return {
        "signer_seed_hex": SIGNER_SEED.hex(),
        "signer_public_key_hex": key.verify_key.hex,
        "envelopes": out,
    }


# --- STREAM (SPEC §5) ---------------------------------------------------------------

STREAM_CASES: list[tuple[str, bytes, int, bytes]] = [
    ("three chunks, short last", bytes(range(40)), 16, b"ds-vector"),
    ("full last chunk", b"A" * 32, 16, b"ds-vector"),
    ("empty plaintext is one empty last chunk", b"", 16, b"ds-vector"),
    ("job output context", b'{"model":"json"}', 64, b"job-vector/model"),
]


def stream_vectors() -> list[dict[str, Any]]:
    out = []
    for name, plaintext, chunk_size, ad in STREAM_CASES:
        blob = stream._seal_stream_with_nonce_prefix(
            STREAM_KEY, plaintext, ad, chunk_size, STREAM_NONCE_PREFIX
        )
        header, chunks = blob[: stream.HEADER.size], []
        body = blob[stream.HEADER.size :]
        step = chunk_size + stream.TAG_SIZE
        chunks = [body[i : i + step] for i in range(0, len(body), step)]
        nonces = [
            (STREAM_NONCE_PREFIX + i.to_bytes(4, "big") + bytes([i == len(chunks) - 1])).hex()
            for i in range(len(chunks))
        ]
        out.append(
            {
                "name": name,
                "key_hex": STREAM_KEY.hex(),
                "nonce_prefix_hex": STREAM_NONCE_PREFIX.hex(),
                "associated_data_hex": ad.hex(),
                "chunk_size": chunk_size,
                "plaintext_hex": plaintext.hex(),
                "header_hex": header.hex(),
                "header_fields": {
                    "magic": stream.MAGIC.decode("ascii"),
                    "version": stream.VERSION,
                    "flags": 0,
                    "chunk_size": chunk_size,
                    "nonce_prefix_hex": STREAM_NONCE_PREFIX.hex(),
                    "reserved_hex": "00",
                },
                "chunk_nonces_hex": nonces,
                "chunks_hex": [c.hex() for c in chunks],
                "blob_hex": blob.hex(),
            }
        )
    return out


# --- SGX quote v3 layout (SPEC §6) --------------------------------------------------

# Intel "SGX ECDSA Quote Library API", Appendix A, as tabled in
# tests/vectors/README.md: (field, quote offset, size, kind, README name or "").
QUOTE_FIELDS: list[tuple[str, int, int, str, str]] = [
    ("version", 0, 2, "u16", "version"),
    ("attestation_key_type", 2, 2, "u16", "attestation key type"),
    ("tee_type", 4, 4, "u32", "TEE type"),
    ("qe_svn", 8, 2, "u16", "QE SVN"),
    ("pce_svn", 10, 2, "u16", "PCE SVN"),
    ("qe_vendor_id", 12, 16, "bytes", "QE vendor id"),
    ("user_data", 28, 20, "bytes", "user data"),
    ("report.cpu_svn", 48, 16, "bytes", "CPUSVN"),
    ("report.misc_select", 64, 4, "u32", "MISCSELECT"),
    ("report.reserved1", 68, 28, "bytes", ""),
    ("report.attributes", 96, 16, "bytes", "ATTRIBUTES"),
    ("report.mr_enclave", 112, 32, "bytes", "MRENCLAVE"),
    ("report.reserved2", 144, 32, "bytes", ""),
    ("report.mr_signer", 176, 32, "bytes", "MRSIGNER"),
    ("report.reserved3", 208, 96, "bytes", ""),
    ("report.isv_prod_id", 304, 2, "u16", "ISVPRODID"),
    ("report.isv_svn", 306, 2, "u16", "ISVSVN"),
    ("report.reserved4", 308, 60, "bytes", ""),
    ("report.report_data", 368, 64, "bytes", "REPORTDATA"),
    ("signature_data_length", 432, 4, "u32", "signature data length"),
    ("isv_signature", 436, 64, "bytes", "ISV report signature"),
    ("attestation_key", 500, 64, "bytes", "attestation public key"),
    ("qe_report", 564, 384, "bytes", "QE report"),
    ("qe_report_signature", 948, 64, "bytes", "QE report signature"),
    ("qe_auth_data_length", 1012, 2, "u16", "QE auth data length"),
]


def quote_layout() -> dict[str, Any]:
    data = SGX_QUOTE.read_bytes()
    fields = []
    for name, offset, size, kind, readme in QUOTE_FIELDS:
        raw = data[offset : offset + size]
        fields.append(
            {
                "field": name,
                "offset": offset,
                "size": size,
                "kind": kind,
                "readme_name": readme,
                # Values of the real quote tests/vectors/sgx-dcap/sgx_quote, read at the
                # offset by slicing, independently of the parser.
                "sgx_quote_value": int.from_bytes(raw, "little") if kind != "bytes" else raw.hex(),
            }
        )
    auth_len = int.from_bytes(data[1012:1014], "little")
    tail = 1014 + auth_len
    return {
        "fixed": fields,
        "variable": [
            {"field": "qe_auth_data", "offset": "1014", "size": "A = qe_auth_data_length"},
            {"field": "cert_data_type", "offset": "1014+A", "size": "2 (u16)"},
            {"field": "cert_data_size", "offset": "1016+A", "size": "4 (u32) = C"},
            {"field": "cert_data", "offset": "1020+A", "size": "C, to the end of the quote"},
        ],
        "sgx_quote": {
            "path": "tests/vectors/sgx-dcap/sgx_quote",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "qe_auth_data_length": auth_len,
            "cert_data_type": int.from_bytes(data[tail : tail + 2], "little"),
            "cert_data_size": int.from_bytes(data[tail + 2 : tail + 6], "little"),
        },
    }


# --- driver -------------------------------------------------------------------------


def build() -> dict[str, bytes]:
    hpke_file = hpke_vectors()
    return {
        "canonical_json.json": _file(
            "canonical.dumps: document -> exact UTF-8 bytes", canonical_vectors()
        ),
        "dsse_pae.json": _file("statements.pae(type, payload) -> bytes", pae_vectors()),
        "envelopes.json": _file(
            "DSSE envelopes of every document type, signed by one fixed Ed25519 key",
            envelope_vectors(hpke_file),
        ),
        "hpke.json": _file(
            "HPKE wrapped keys for both suites; checked by decryption with the fixed private "
            "key (encapsulation is randomised, cryptography exposes no seeded encap)",
            hpke_file,
        ),
        "stream.json": _file(
            "STREAM AEAD blobs with a fixed key and nonce prefix", stream_vectors()
        ),
        "sgx_quote_v3_layout.json": _file(
            "SGX ECDSA quote v3 field offsets (Intel Quote Library API, Appendix A) and the "
            "values of tests/vectors/sgx-dcap/sgx_quote at them",
            quote_layout(),
        ),
    }


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [
            n
            for n, data in files.items()
            if not (HERE / n).exists() or (HERE / n).read_bytes() != data
        ]
        for name in stale:
            print(f"{name} differs from what generate.py produces", file=sys.stderr)
        return 1 if stale else 0
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
