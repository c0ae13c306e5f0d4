"""How many rows each querier scored, and which query ids it used recently.

One :class:`Usage` per querier and model, kept in the encrypted mount
(models.store) and rewritten — one committed EFS write — by every query
charged: rows in all, rows on the current UTC day by the enclave's clock,
and the ids of the queries issued within ``QUERY_WINDOW_SECONDS`` (older ids
are pruned: a query that old is refused for its time anyway).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from protocols import canonical
from protocols.documents import QUERY_WINDOW_SECONDS, Budget, PredictionQuery, Querier
from protocols.errors import BudgetExhausted, FormatError, IntegrityError

USAGE_VERSION = 1


def utc_day(now: float) -> str:
    """The UTC date of ``now`` (Unix seconds), as the per-day budget counts days."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


@dataclass
class Usage:
    """A querier's use of one model: rows in all, rows on ``day``, recent query ids."""

    total: int = 0
    day: str = ""
    today: int = 0
    recent: dict[str, int] = field(default_factory=dict)  # query id → issued_at

    def to_bytes(self) -> bytes:
        return canonical.dumps(
            {
                "version": USAGE_VERSION,
                "total_rows": self.total,
                "day": self.day,
                "rows_on_day": self.today,
                "recent": self.recent,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> Usage:
        doc = canonical.loads(data, what)
        if doc.get("version") != USAGE_VERSION:
            raise FormatError(f"{what} has version {doc.get('version')!r}, not {USAGE_VERSION}")
        recent = canonical.field(doc, "recent", dict, what)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in recent.values()):
            raise FormatError(f"{what} recent query times must be integers")
        return cls(
            _count(doc, "total_rows", what),
            canonical.field(doc, "day", str, what),
            _count(doc, "rows_on_day", what),
            dict(recent),
        )

    def rows_today(self, now: float) -> int:
        return self.today if self.day == utc_day(now) else 0

    def remaining(self, querier: Querier, now: float) -> Budget:
        """The rows ``querier`` may still score: in all, and today (None: no daily limit)."""
        today = None
        if querier.per_day is not None:
            today = max(querier.per_day - self.rows_today(now), 0)
        return Budget(max(querier.total - self.total, 0), today)

    def check(self, querier: Querier, query: PredictionQuery, now: float) -> None:
        """Refuse a query id seen in the window (IntegrityError) or rows over the budget."""
        self.check_replay(query, now)
        self.check_budget(querier, query, now)

    def check_replay(self, query: PredictionQuery, now: float) -> None:
        """Refuse a query whose id was answered within the window (IntegrityError)."""
        if query.query_id in self.pruned(now).recent:
            raise IntegrityError(
                f"query {query.query_id!r} of model {query.model_id!r} was already answered: "
                "a query is answered once (send a new query with a fresh id)"
            )

    def check_budget(self, querier: Querier, query: PredictionQuery, now: float) -> None:
        """Refuse rows over what ``querier`` has left, in all or today (BudgetExhausted)."""
        left = self.remaining(querier, now)
        today_short = left.today is not None and query.rows > left.today
        if query.rows > left.total or today_short:
            when = "today" if today_short and query.rows <= left.total else "in all"
            raise BudgetExhausted(
                f"querier {querier.name!r} asks model {query.model_id!r} for {query.rows:,} rows "
                f"but has {left.describe()} left (over its budget {when}): query fewer rows"
                + (", or wait for the next UTC day" if when == "today" else "")
            )

    def pruned(self, now: float) -> Usage:
        """This usage without the query ids too old to be answered again."""
        oldest = now - QUERY_WINDOW_SECONDS
        recent = {q: t for q, t in self.recent.items() if t >= oldest}
        return Usage(self.total, self.day, self.today, recent)

    def charged(self, query: PredictionQuery, now: float) -> Usage:
        """This usage once ``query``'s rows are charged and its id remembered."""
        usage = self.pruned(now)
        day = utc_day(now)
        usage.today = usage.rows_today(now) + query.rows
        usage.day = day
        usage.total += query.rows
        usage.recent[query.query_id] = query.issued_at
        return usage


def _count(doc: dict[str, Any], name: str, what: str) -> int:
    value = canonical.field(doc, name, int, what)
    if isinstance(value, bool) or value < 0:
        raise FormatError(f"{what} {name} must be an integer ≥ 0")
    return int(value)
