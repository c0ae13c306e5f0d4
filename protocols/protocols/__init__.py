"""Detente's wire and the rules every component shares (no servers, no enclave code).

Formats are specified once, in protocols/SPEC.md; each module cites its
section. Signed statements and documents: ``canonical``, ``statements``,
``documents``. Cryptography recipes: ``keys``, ``hpke``, ``stream``.
Attestation: ``quote_layout``, ``tdx``, ``pck``, ``quote_verify``,
``collateral``, ``policy``, ``attestation``, ``ratls``, ``tls``. Requests and
errors: ``request_auth``, ``errors``, ``grpc_status`` and the generated
``wire``. Shared rules: ``objectives`` (labels and objectives), ``durable``
(atomic file writes), ``layout`` (binary field tables), ``cli_convention``
(the `detente` command groups' conventions).

Importing the package imports none of its modules.
"""

__all__ = [
    "attestation",
    "canonical",
    "cli_convention",
    "collateral",
    "documents",
    "durable",
    "errors",
    "grpc_status",
    "hpke",
    "keys",
    "layout",
    "objectives",
    "pck",
    "policy",
    "quote_layout",
    "quote_verify",
    "ratls",
    "request_auth",
    "statements",
    "stream",
    "tdx",
    "tls",
    "wire",
]
