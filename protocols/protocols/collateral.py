"""DCAP quote collateral: loading it strictly, and checking a quote against it.

Collateral is what Intel's Provisioning Certification Service publishes about
a platform family (Intel SGX/TDX DCAP "PCK Certificate and Certificate
Revocation List Profile" and "TCB Info / Enclave Identity" specifications):

| field | what it is |
| --- | --- |
| tcb_info (+ signature, chain) | the FMSPC's TCB levels, each with status and advisories |
| qe_identity (+ signature, chain) | identity and TCB levels of Intel's Quoting Enclave |
| root_ca_crl, pck_crl (+ chain) | revoked intermediate CAs and PCK certificates |
| pck_certificate_chain (optional) | PCK chain, for quotes whose cert data carries none |

The JSON form is the one of the ``dcap-qvl`` package's ``QuoteCollateralV3``
(keys above; CRLs and signatures as hex, chains as PEM, TCB info and QE
identity as the exact JSON text Intel signed). The checks themselves (TCB
info and QE identity signatures and validity, CRLs, matching the platform's
TCB level and the QE's identity) are done by ``dcap-qvl``, an optional
dependency (``pip install detente[sgx]``) imported only when needed.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocols import canonical
from protocols.errors import AttestationError, FormatError

MAX_COLLATERAL_SIZE = 1 << 20  # real collateral is ~10–40 KiB; CRLs grow, not beyond this

# TCB statuses of Intel's TCB info (TCB Info v3 spec, "tcbStatus").
TCB_UP_TO_DATE = "UpToDate"
TCB_STATUSES = (
    TCB_UP_TO_DATE,
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
# Not an Intel status: what Detente reports for a SIMULATION quote, which has
# no Intel collateral and no TCB at all.
TCB_SIMULATION = "Simulation"

_HEX_FIELDS = ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature")
_CHAIN_FIELDS = ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain")
_JSON_FIELDS = ("tcb_info", "qe_identity")
_REQUIRED = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
_OPTIONAL = ("pck_certificate_chain",)
_SIGNATURE_SIZE = 64  # ECDSA P-256 r ‖ s

INSTALL_HINT = "pip install detente[sgx]"


class CollateralVerifierMissing(AttestationError):
    """The optional DCAP verification library (dcap-qvl) is not installed."""


@dataclass(frozen=True)
class Validity:
    """When the collateral is usable, as far as its own dates say (informative)."""

    not_before: int  # Unix seconds, inclusive
    not_after: int  # Unix seconds, inclusive


@dataclass(frozen=True)
class TcbStatus:
    """The platform's TCB status as the collateral rates it, and the advisories that apply."""

    status: str
    advisory_ids: tuple[str, ...] = ()

    @property
    def simulation(self) -> bool:
        return self.status == TCB_SIMULATION


@dataclass(frozen=True)
class Collateral:
    pck_crl_issuer_chain: str
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: str
    tcb_info: str
    tcb_info_signature: bytes
    qe_identity_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes
    pck_certificate_chain: str | None = None

    # -- loading --------------------------------------------------------------

    @classmethod
    def from_json(cls, data: bytes | str, source: str = "quote collateral") -> Collateral:
        """Load dcap-qvl's JSON form; raise FormatError naming the first bad field."""
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_COLLATERAL_SIZE:
            raise FormatError(f"{source} is {len(raw)} bytes, more than {MAX_COLLATERAL_SIZE}")
        doc = canonical.loads(raw, source)
        unknown = sorted(set(doc) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise FormatError(
                f"{source} has unknown field {unknown[0]!r} (known: "
                f"{', '.join(_REQUIRED + _OPTIONAL)})"
            )
        values: dict[str, Any] = {}
        for name in _REQUIRED:
            values[name] = canonical.field(doc, name, str, source)
        for name in _OPTIONAL:
            if name in doc:
                values[name] = canonical.field(doc, name, str, source)
        for name in _HEX_FIELDS:
            values[name] = _strict_hex(values[name], f"{source} field {name!r}")
        collateral = cls(**values)
        collateral.validate(source)
        return collateral

    @classmethod
    def from_pcs(
        cls,
        *,
        tcb_info_response: str,
        qe_identity_response: str,
        tcb_info_issuer_chain: str,
        pck_crl_issuer_chain: str,
        root_ca_crl: bytes,
        pck_crl: bytes,
        pck_certificate_chain: str | None = None,
    ) -> Collateral:
        """Assemble collateral from Intel PCS responses as served.

        A PCS TCB info response is ``{"tcbInfo": {…}, "signature": "hex"}``; the
        signature covers the exact bytes of the inner object, so it is cut out of
        the response text, never re-encoded.
        """
        tcb_info, tcb_sig = _signed_member(tcb_info_response, "tcbInfo", "TCB info response")
        qe_identity, qe_sig = _signed_member(
            qe_identity_response, "enclaveIdentity", "QE identity response"
        )
        collateral = cls(
            pck_crl_issuer_chain=pck_crl_issuer_chain,
            root_ca_crl=bytes(root_ca_crl),
            pck_crl=bytes(pck_crl),
            tcb_info_issuer_chain=tcb_info_issuer_chain,
            tcb_info=tcb_info,
            tcb_info_signature=tcb_sig,
            qe_identity_issuer_chain=tcb_info_issuer_chain,
            qe_identity=qe_identity,
            qe_identity_signature=qe_sig,
            pck_certificate_chain=pck_certificate_chain,
        )
        collateral.validate("PCS collateral")
        return collateral

    def validate(self, source: str = "quote collateral") -> None:
        """Check every field has the form its specification gives (not its signatures)."""
        for name in _CHAIN_FIELDS:
            pem_chain(getattr(self, name), f"{source} field {name!r}")
        if self.pck_certificate_chain is not None:
            pem_chain(self.pck_certificate_chain, f"{source} field 'pck_certificate_chain'")
        for name in ("root_ca_crl", "pck_crl"):
            _crl(getattr(self, name), f"{source} field {name!r}")
        for name in ("tcb_info_signature", "qe_identity_signature"):
            if len(getattr(self, name)) != _SIGNATURE_SIZE:
                raise FormatError(
                    f"{source} field {name!r} must be a {_SIGNATURE_SIZE}-byte ECDSA P-256 "
                    f"signature (r ‖ s), got {len(getattr(self, name))} bytes"
                )
        self.tcb_info_summary(source)
        self.qe_identity_summary(source)
        self._dates()

    def to_json(self) -> str:
        doc: dict[str, str] = {
            "pck_crl_issuer_chain": self.pck_crl_issuer_chain,
            "root_ca_crl": self.root_ca_crl.hex(),
            "pck_crl": self.pck_crl.hex(),
            "tcb_info_issuer_chain": self.tcb_info_issuer_chain,
            "tcb_info": self.tcb_info,
            "tcb_info_signature": self.tcb_info_signature.hex(),
            "qe_identity_issuer_chain": self.qe_identity_issuer_chain,
            "qe_identity": self.qe_identity,
            "qe_identity_signature": self.qe_identity_signature.hex(),
        }
        if self.pck_certificate_chain is not None:
            doc["pck_certificate_chain"] = self.pck_certificate_chain
        return json.dumps(doc)

    # -- what it says ---------------------------------------------------------

    def tcb_info_summary(self, source: str = "quote collateral") -> dict[str, Any]:
        what = f"{source} TCB info"
        doc = _inner_json(self.tcb_info, what)
        version = canonical.field(doc, "version", int, what)
        # TCB info v2 (SGX only) has no "id"; v3 names the TEE.
        tee = canonical.field(doc, "id", str, what) if "id" in doc else "SGX"
        if tee not in ("SGX", "TDX"):
            raise FormatError(f"{what} id {tee!r} must be SGX or TDX")
        fmspc = canonical.unhex(canonical.field(doc, "fmspc", str, what), f"{what} fmspc", 6)
        canonical.field(doc, "tcbLevels", list, what)
        return {
            "id": tee,
            "version": version,
            "fmspc": fmspc.hex(),
            "issue_date": _timestamp(doc, "issueDate", what),
            "next_update": _timestamp(doc, "nextUpdate", what),
            "tcb_evaluation_data_number": doc.get("tcbEvaluationDataNumber"),
        }

    def qe_identity_summary(self, source: str = "quote collateral") -> dict[str, Any]:
        what = f"{source} QE identity"
        doc = _inner_json(self.qe_identity, what)
        return {
            "id": canonical.field(doc, "id", str, what),
            "version": canonical.field(doc, "version", int, what),
            "mrsigner": canonical.unhex(
                canonical.field(doc, "mrsigner", str, what), f"{what} mrsigner", 32
            ).hex(),
            "isv_prod_id": canonical.field(doc, "isvprodid", int, what),
            "issue_date": _timestamp(doc, "issueDate", what),
            "next_update": _timestamp(doc, "nextUpdate", what),
        }

    def validity(self) -> Validity:
        """When every part of the collateral is current, bounds inclusive.

        From the latest start (TCB info and QE identity issue dates, CRL
        thisUpdate, issuer certificates' notBefore) to the earliest end (TCB
        info and QE identity nextUpdate, the second before a CRL's nextUpdate
        — a CRL is stale from its nextUpdate on, as dcap-qvl also holds —
        and the issuer certificates' notAfter).
        """
        starts, ends = self._dates()
        return Validity(max(t for _, t in starts), min(t for _, t in ends))

    def check_current(self, now: int) -> None:
        """Raise AttestationError naming the part of the collateral not valid at ``now``."""
        starts, ends = self._dates()
        for name, start in starts:
            if now < start:
                raise AttestationError(
                    f"quote collateral is not valid yet at {_iso(now)} ({now}): the {name} "
                    f"dates from {_iso(start)} ({start}); check the time, or use collateral "
                    "fetched before that time"
                )
        for name, end in ends:
            if now > end:
                raise AttestationError(
                    f"quote collateral has expired at {_iso(now)} ({now}): the {name} is "
                    f"valid until {_iso(end)} ({end}); fetch current collateral from Intel "
                    "PCS or a PCCS"
                )

    def _dates(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        try:
            return self._read_dates()
        except ValueError:  # cryptography parses some fields lazily
            raise FormatError(
                "quote collateral has a CRL or certificate with malformed dates"
            ) from None

    def _read_dates(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        starts: list[tuple[str, int]] = []
        ends: list[tuple[str, int]] = []
        for what, summary in (
            ("TCB info", self.tcb_info_summary()),
            ("QE identity", self.qe_identity_summary()),
        ):
            starts.append((what, summary["issue_date"]))
            ends.append((what, summary["next_update"]))
        for name, what in (("root_ca_crl", "root CA CRL"), ("pck_crl", "PCK CRL")):
            crl = _crl(getattr(self, name), name)
            starts.append((what, int(crl.last_update_utc.timestamp())))
            if crl.next_update_utc is not None:
                ends.append((what, int(crl.next_update_utc.timestamp()) - 1))
        for name in _CHAIN_FIELDS:
            for cert in pem_chain(getattr(self, name), name):
                what = f"{name} certificate {_subject(cert)!r}"
                starts.append((what, int(cert.not_valid_before_utc.timestamp())))
                ends.append((what, int(cert.not_valid_after_utc.timestamp())))
        return starts, ends


# -- checking a quote against collateral ---------------------------------------


def dcap_qvl_module() -> ModuleType:
    """Import dcap-qvl, or say how to install it."""
    try:
        return importlib.import_module("dcap_qvl")
    except ImportError:
        raise CollateralVerifierMissing(
            "checking a hardware quote's collateral (TCB info, QE identity, CRLs) needs the "
            f"dcap-qvl package: run `{INSTALL_HINT}`"
        ) from None


def verify_collateral(
    quote: bytes, collateral: Collateral, now: int, root: x509.Certificate
) -> TcbStatus:
    """Check ``quote`` against ``collateral`` at Unix time ``now``, all chains ending in ``root``.

    dcap-qvl checks the TCB info and QE identity signatures and validity, the
    root and PCK CRLs (revocation and validity), the QE report against the QE
    identity, and finds the platform's TCB level in the TCB info; it refuses a
    quote whose TCB level is not listed, or is Revoked. Raises AttestationError
    with dcap-qvl's reason; returns the TCB status and advisories otherwise.
    """
    dcap_qvl = dcap_qvl_module()
    # Checked here too, to name the stale part, and because dcap-qvl does not
    # hold the QE identity's issue date against the time.
    collateral.check_current(now)
    root_der = root.public_bytes(serialization.Encoding.DER)
    when = _iso(now)
    try:
        theirs = dcap_qvl.QuoteCollateralV3.from_json(collateral.to_json())
        report = dcap_qvl.verify_with_root_ca(bytes(quote), theirs, root_der, int(now))
        status = str(report.status)
        advisories = tuple(str(a) for a in report.advisory_ids)
    except Exception as exc:  # dcap-qvl reports every failure as ValueError
        raise AttestationError(
            f"quote collateral does not verify at {when} ({now}): {_reason(exc)}"
        ) from None
    except BaseException as exc:
        # A Rust panic surfaces as pyo3's PanicException, a BaseException: turn it
        # into a refusal too, so hostile bytes never escape as a non-Detente error.
        if type(exc).__name__ != "PanicException":
            raise
        raise AttestationError(
            f"quote collateral check failed inside dcap-qvl at {when}: {_reason(exc)}"
        ) from None
    return TcbStatus(status, advisories)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:
        return "(malformed subject)"


def _reason(exc: BaseException) -> str:
    # dcap-qvl messages are "Verification failed: X\n\nCaused by:\n    Y": keep them on one line.
    return " ".join(str(exc).split()) or type(exc).__name__


# -- field parsers ---------------------------------------------------------------


def pem_chain(text: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, x509.InvalidVersion):
        raise FormatError(f"{what} is not a PEM certificate chain") from None
    if not certs:
        raise FormatError(f"{what} holds no certificate")
    return certs


def _crl(der: bytes, what: str) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(der)
    except (ValueError, x509.InvalidVersion):
        raise FormatError(f"{what} is not a DER certificate revocation list") from None


def _strict_hex(text: str, what: str) -> bytes:
    # bytes.fromhex accepts whitespace; a signed blob must have one spelling.
    if len(text) % 2 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise FormatError(f"{what} must be hexadecimal")
    return bytes.fromhex(text)


def _inner_json(text: str, what: str) -> dict[str, Any]:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} is not valid UTF-8 text") from None
    return canonical.loads(raw, what)


def _timestamp(doc: dict[str, Any], name: str, what: str) -> int:
    text = canonical.field(doc, name, str, what)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FormatError(f"{what} {name} {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise FormatError(f"{what} {name} {text!r} has no time zone (Intel writes …Z)")
    return int(moment.timestamp())


def _signed_member(response: str, key: str, what: str) -> tuple[str, bytes]:
    """Cut ``key``'s value out of a PCS response, byte for byte, with its signature."""
    doc = canonical.loads(response.encode("utf-8", "surrogatepass"), what)
    if key not in doc:
        raise FormatError(f"{what} has no field {key!r}")
    signature = _strict_hex(canonical.field(doc, "signature", str, what), f"{what} signature")
    decoder = json.JSONDecoder()
    marker = f'"{key}"'
    start = response.find(marker)
    while start != -1:
        colon = start + len(marker)
        while colon < len(response) and response[colon].isspace():
            colon += 1
        if colon < len(response) and response[colon] == ":":
            begin = colon + 1
            while begin < len(response) and response[begin].isspace():
                begin += 1
            try:
                _, end = decoder.raw_decode(response, begin)
            except (ValueError, RecursionError):
                break
            return response[begin:end], signature
        start = response.find(marker, start + 1)
    raise FormatError(f"{what}: cannot find the exact text of {key!r}")
