"""Which labels each XGBoost objective accepts: one rule for the party and the enclave.

A party summarises its label column when it uploads (:func:`summarize_labels`)
and signs the summary into its manifest (``label`` in protocols/SPEC.md §3.3),
so a proposer learns before anyone approves whether an objective fits every
data set. The enclave summarises the joined labels again and applies the same
:func:`check_labels`, since a party may lie in its manifest. Summaries and
errors name the column and the kind of problem, never a label value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols.canonical import field as get
from protocols.errors import DatasetError, FormatError

BINARY = "binary"  # every value is 0 or 1
CLASSES = "classes"  # non-negative integers 0 … classes-1 (at least one above 1)
CONTINUOUS = "continuous"  # any other finite number
LABEL_KINDS = (BINARY, CLASSES, CONTINUOUS)

# Objectives and the label kinds they accept. Regression accepts class labels
# too (they are numbers); a classification objective never accepts continuous
# labels. Objectives not listed here are refused when terms are written.
_ACCEPTS: dict[str, tuple[str, ...]] = {
    "binary:logistic": (BINARY,),
    "binary:logitraw": (BINARY,),
    "binary:hinge": (BINARY,),
    "multi:softmax": (BINARY, CLASSES),
    "multi:softprob": (BINARY, CLASSES),
    "reg:squarederror": LABEL_KINDS,
    "reg:squaredlogerror": LABEL_KINDS,
    "reg:pseudohubererror": LABEL_KINDS,
    "reg:absoluteerror": LABEL_KINDS,
    "reg:logistic": LABEL_KINDS,  # values must lie in [0, 1]: checked on the range
    "count:poisson": LABEL_KINDS,  # values must be non-negative
    "reg:tweedie": LABEL_KINDS,  # values must be non-negative
    "reg:gamma": LABEL_KINDS,  # values must be positive
}
OBJECTIVES = tuple(_ACCEPTS)


@dataclass(frozen=True)
class LabelSummary:
    """What a label column holds, as far as choosing an objective needs.

    ``classes`` is the number of classes for ``binary`` (2) and ``classes``
    labels, None for continuous ones; ``minimum``/``maximum`` say only whether
    the range fits range-limited objectives (``in_unit_interval``,
    ``non_negative``, ``positive``), never a value.
    """

    column: str
    kind: str
    classes: int | None
    in_unit_interval: bool
    non_negative: bool
    positive: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "classes": self.classes,
            "in_unit_interval": self.in_unit_interval,
            "non_negative": self.non_negative,
            "positive": self.positive,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> LabelSummary:
        what = "label summary"
        if not isinstance(doc, dict):
            raise FormatError(f"{what} must be an object")
        kind = get(doc, "kind", str, what)
        if kind not in LABEL_KINDS:
            raise FormatError(f"{what} kind {kind!r} is not one of {', '.join(LABEL_KINDS)}")
        classes = doc.get("classes")
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int)):
            raise FormatError(f"{what} classes must be an integer or null")
        return cls(
            column=get(doc, "column", str, what),
            kind=kind,
            classes=classes,
            in_unit_interval=get(doc, "in_unit_interval", bool, what),
            non_negative=get(doc, "non_negative", bool, what),
            positive=get(doc, "positive", bool, what),
        )


def summarize_labels(column: str, values: Any, where: str) -> LabelSummary:
    """Summarise a label array (any numeric numpy array without nulls).

    Raises DatasetError naming ``where`` and the column if a label is missing
    or not finite.
    """
    import numpy as np

    y = np.asarray(values, dtype=np.float64)
    if y.size == 0:
        raise DatasetError(f"{where}: label column {column!r} is empty")
    finite = np.isfinite(y)
    if not finite.all():
        bad = int(y.size - np.count_nonzero(finite))
        raise DatasetError(
            f"{where}: label column {column!r} has {bad} missing, infinite or NaN values; "
            "every row needs a finite label"
        )
    low, high = float(y.min()), float(y.max())
    integral = bool(np.all(np.equal(np.floor(y), y)))
    if integral and low >= 0 and high <= 1:
        kind, classes = BINARY, 2
    elif integral and low >= 0 and high < 2**31:
        kind, classes = CLASSES, int(high) + 1
    else:
        kind, classes = CONTINUOUS, None
    return LabelSummary(
        column=column,
        kind=kind,
        classes=classes,
        in_unit_interval=low >= 0 and high <= 1,
        non_negative=low >= 0,
        positive=low > 0,
    )


def check_objective(objective: str) -> None:
    if objective not in _ACCEPTS:
        raise DatasetError(
            f"objective {objective!r} is not supported; choose one of {', '.join(OBJECTIVES)}"
        )


def check_labels(objective: str, summary: LabelSummary, params: dict[str, Any], where: str) -> None:
    """Raise DatasetError unless ``objective`` can train on labels like ``summary``.

    ``where`` names the data (a data set id, or "the joined data"); the message
    names the column and what the objective needs, never a value.
    """
    check_objective(objective)
    label = f"{where}: label column {summary.column!r}"
    if summary.kind not in _ACCEPTS[objective]:
        needs = {
            BINARY: "0 or 1",
            CLASSES: "class numbers 0, 1, 2, …",
            CONTINUOUS: "numbers",
        }
        wanted = " or ".join(needs[k] for k in _ACCEPTS[objective])
        raise DatasetError(
            f"{label} holds {summary.kind} values, but {objective} needs {wanted}; "
            "choose another objective or fix the labels"
        )
    if objective.startswith("multi:"):
        num_class = params.get("num_class")
        if isinstance(num_class, bool) or not isinstance(num_class, int) or num_class < 2:
            raise DatasetError(f"{objective} needs the parameter num_class (an integer ≥ 2)")
        if summary.classes is not None and summary.classes > num_class:
            raise DatasetError(
                f"{label} holds {summary.classes} classes, more than num_class = {num_class}"
            )
    ranges = {
        "reg:logistic": (summary.in_unit_interval, "values between 0 and 1"),
        "count:poisson": (summary.non_negative, "non-negative values"),
        "reg:tweedie": (summary.non_negative, "non-negative values"),
        "reg:gamma": (summary.positive, "positive values"),
        "reg:squaredlogerror": (summary.non_negative, "non-negative values"),
    }
    if objective in ranges and not ranges[objective][0]:
        raise DatasetError(
            f"{label} has values outside what {objective} needs: {ranges[objective][1]}"
        )


def merge_summaries(column: str, summaries: list[LabelSummary]) -> LabelSummary:
    """The summary of several label columns stacked together (a horizontal join)."""
    kinds = {s.kind for s in summaries}
    if CONTINUOUS in kinds:
        kind, classes = CONTINUOUS, None
    elif CLASSES in kinds:
        kind, classes = CLASSES, max(s.classes or 0 for s in summaries)
    else:
        kind, classes = BINARY, 2
    return LabelSummary(
        column=column,
        kind=kind,
        classes=classes,
        in_unit_interval=all(s.in_unit_interval for s in summaries),
        non_negative=all(s.non_negative for s in summaries),
        positive=all(s.positive for s in summaries),
    )
