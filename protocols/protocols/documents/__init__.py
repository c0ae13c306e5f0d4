"""The signed documents of Detente: payload schemas and their checks.

Each document is a frozen dataclass with ``to_dict``/``from_dict``; it is
signed and verified only through :mod:`protocols.statements`. ``from_dict``
validates every field and raises FormatError naming the bad one. The formats
are specified in protocols/SPEC.md §3; one module per kind of document.
"""

from protocols.documents.common import VERSION, check_id, check_version, party_fingerprint
from protocols.documents.identity import IdentityDocument, Registration
from protocols.documents.manifest import DatasetManifest, schema_columns, schema_sha256
from protocols.documents.query import (
    MAX_QUERY_ROWS,
    QUERY_WINDOW_SECONDS,
    Budget,
    ModelRetirement,
    PredictionAnswer,
    PredictionQuery,
)
from protocols.documents.rejection import MAX_REASON_CHARS, Rejection, check_reason
from protocols.documents.result import OutputRecord, ResultStatement
from protocols.documents.terms import (
    ANSWER_CLASS,
    ANSWER_PROBABILITY,
    ANSWERS,
    JOINS,
    MAX_ROUNDS,
    MODEL_RELEASE,
    MODEL_SEALED,
    OUTPUTS,
    RELEASE_TO,
    RELEASE_TO_NAMED,
    RELEASE_TO_OWNERS,
    Approval,
    JobTerms,
    Querier,
    Recipient,
    check_approvals,
    check_release,
)
from protocols.documents.withdrawal import DatasetWithdrawal

__all__ = [
    "ANSWERS",
    "ANSWER_CLASS",
    "ANSWER_PROBABILITY",
    "JOINS",
    "MAX_QUERY_ROWS",
    "MAX_REASON_CHARS",
    "MAX_ROUNDS",
    "MODEL_RELEASE",
    "MODEL_SEALED",
    "OUTPUTS",
    "QUERY_WINDOW_SECONDS",
    "RELEASE_TO",
    "RELEASE_TO_NAMED",
    "RELEASE_TO_OWNERS",
    "VERSION",
    "Approval",
    "Budget",
    "DatasetManifest",
    "DatasetWithdrawal",
    "IdentityDocument",
    "JobTerms",
    "ModelRetirement",
    "OutputRecord",
    "PredictionAnswer",
    "PredictionQuery",
    "Querier",
    "Recipient",
    "Registration",
    "Rejection",
    "ResultStatement",
    "check_approvals",
    "check_id",
    "check_reason",
    "check_release",
    "check_version",
    "party_fingerprint",
    "schema_columns",
    "schema_sha256",
]
