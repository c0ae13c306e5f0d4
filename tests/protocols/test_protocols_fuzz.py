"""Property tests: every parser either succeeds or raises a DetenteError, never anything else."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import canonical, quote_layout, quote_verify, stream
from protocols.documents import (
    Approval,
    DatasetManifest,
    JobTerms,
    OutputRecord,
    Recipient,
    ResultStatement,
)
from protocols.errors import DetenteError
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.layout import Field, Layout
from protocols.statements import Envelope

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VECTORS = Path(__file__).resolve().parents[1] / "vectors"
SGX_QUOTE = (VECTORS / "sgx-dcap" / "sgx_quote").read_bytes()
QVL_QUOTE = (VECTORS / "intel-qvl-sample" / "quote.dat").read_bytes()
KEY = bytes(32)
STREAM_BLOB = stream.seal_stream(KEY, bytes(range(200)), b"ad", chunk_size=64)

_SIGNER = SigningKey.generate()
_HPKE = HpkePrivateKey.generate().public_key


def only_detente_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except DetenteError:
        pass


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bytes flipped, cut, inserted or deleted."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[i] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[i:]
        elif action == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


# --- quotes -------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=2048))
def test_quote_random_bytes(data: bytes) -> None:
    only_detente_errors(lambda: quote_layout.Quote.from_bytes(data))


@SETTINGS
@given(st.one_of(mutated(SGX_QUOTE), mutated(QVL_QUOTE)))
def test_quote_mutated(data: bytes) -> None:
    only_detente_errors(lambda: quote_layout.Quote.from_bytes(data))


@settings(max_examples=60, deadline=None)
@given(mutated(SGX_QUOTE))
def test_verify_quote_mutated(data: bytes) -> None:
    from datetime import UTC, datetime

    only_detente_errors(
        lambda: quote_verify.verify_quote(
            data, [quote_verify.intel_sgx_root()], now=datetime(2025, 7, 1, tzinfo=UTC)
        )
    )


# --- streams ------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=64))
def test_stream_header_random(data: bytes) -> None:
    only_detente_errors(lambda: stream.parse_header(data))


@SETTINGS
@given(st.one_of(st.binary(max_size=400), mutated(STREAM_BLOB)))
def test_open_stream_random_and_mutated(data: bytes) -> None:
    only_detente_errors(lambda: stream.open_stream(KEY, data, b"ad"))


# --- envelopes and documents --------------------------------------------------------


def _documents() -> dict[str, tuple[Callable[[dict[str, Any]], object], bytes]]:
    manifest = DatasetManifest(
        "ds-1", "n", _SIGNER.verify_key, "00" * 32, 5, "11" * 32, 100, b"w" * 80, "22" * 32,
        _HPKE, [{"name": "a", "type": "int64"}], 1,
    )  # fmt: skip
    terms = JobTerms(
        "job-1", [("ds-1", "33" * 32)], "horizontal", "binary:logistic", "y", {"eta": 0.1},
        10, 1, ["22" * 32], ["model"], [Recipient("r", _SIGNER.verify_key, _HPKE)], 2,
        proposer=_SIGNER.verify_key.hex,
    )  # fmt: skip
    result = ResultStatement(
        "job-1", "44" * 32, "22" * 32, [OutputRecord("model", "55" * 32, {"k": b"x" * 80})], {}
    )
    return {
        "manifest": (DatasetManifest.from_dict, canonical.dumps(manifest.to_dict())),
        "terms": (JobTerms.from_dict, canonical.dumps(terms.to_dict())),
        "approval": (Approval.from_dict, canonical.dumps(Approval("job-1", "66" * 32).to_dict())),
        "result": (ResultStatement.from_dict, canonical.dumps(result.to_dict())),
    }


DOCUMENTS = _documents()
ENVELOPE = Approval("job-1", "66" * 32).sign(_SIGNER).to_bytes()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(st.one_of(st.binary(max_size=300), mutated(ENVELOPE)))
def test_envelope_random_and_mutated(data: bytes) -> None:
    only_detente_errors(lambda: Envelope.from_bytes(data))


def _parse_document(parse: Callable[[dict[str, Any]], object], data: bytes) -> None:
    def run() -> None:
        parse(canonical.loads(data, "document"))

    only_detente_errors(run)


@SETTINGS
@given(st.sampled_from(sorted(DOCUMENTS)), st.data())
def test_documents_mutated_bytes(name: str, data: st.DataObject) -> None:
    parse, base = DOCUMENTS[name]
    _parse_document(parse, data.draw(mutated(base)))


@st.composite
def mutated_document(draw: st.DrawFn, base: bytes) -> bytes:
    """The valid document with one field (at any depth) replaced or removed."""
    doc = json.loads(base)
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append([*path, k])
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append([*path, i])
                walk(v, [*path, i])

    walk(doc, [])
    path = draw(st.sampled_from(paths))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return json.dumps(doc).encode()


@SETTINGS
@given(st.sampled_from(sorted(DOCUMENTS)), st.data())
def test_documents_mutated_fields(name: str, data: st.DataObject) -> None:
    parse, base = DOCUMENTS[name]
    _parse_document(parse, data.draw(mutated_document(base)))


@SETTINGS
@given(st.sampled_from(sorted(DOCUMENTS)), json_values)
def test_documents_random_json(name: str, value: Any) -> None:
    parse, _ = DOCUMENTS[name]
    _parse_document(parse, json.dumps(value).encode())


def test_valid_documents_parse() -> None:
    """The seeds of the mutations above are themselves valid."""
    for parse, base in DOCUMENTS.values():
        parse(canonical.loads(base, "document"))


# --- layouts ------------------------------------------------------------------------

LAYOUTS = [
    stream.HEADER,
    quote_layout.HEADER,
    quote_layout.REPORT_BODY,
    quote_layout.SIGNATURE_FIXED,
]


@SETTINGS
@given(st.sampled_from(LAYOUTS), st.binary(max_size=1200))
def test_layout_unpack_random(layout: Layout, data: bytes) -> None:
    only_detente_errors(lambda: layout.unpack(data))


@SETTINGS
@given(st.sampled_from(LAYOUTS), st.data())
def test_layout_pack_unpack_round_trip(layout: Layout, data: st.DataObject) -> None:
    raw = data.draw(st.binary(min_size=layout.size, max_size=layout.size))
    assert layout.pack(layout.unpack(raw)) == raw


def test_layout_pack_checks_values() -> None:
    layout = Layout("t", [Field("a", 2, "uint"), Field("b", 3)])
    assert layout.pack({"a": 258, "b": b"xyz"}) == b"\x02\x01xyz"
    assert Layout("t", [Field("a", 2, "uint", "big")]).pack({"a": 258}) == b"\x01\x02"
    for values, message in [
        ({"b": b"xyz"}, "'a' is missing"),
        ({"a": 1 << 16, "b": b"xyz"}, "'a' out of range"),
        ({"a": -1, "b": b"xyz"}, "'a' out of range"),
        ({"a": 1, "b": b"xy"}, "'b' must be 3 bytes"),
    ]:
        try:
            layout.pack(values)
        except DetenteError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"pack accepted {values}")
