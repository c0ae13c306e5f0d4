"""The values and errors of the party's Python API: :class:`Dataset`, :class:`Prediction`,
:class:`JobFailed` and :class:`JobTimeout`.

:class:`~party_client.api.Party` returns them; ``party_client.api`` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocols.errors import DetenteError

if TYPE_CHECKING:
    import pyarrow as pa

    from party_client.job_handle import Job
    from protocols.documents import Budget


class JobTimeout(DetenteError):
    """:meth:`Job.wait` ran out of time; ``job`` is the job as it was last seen."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(DetenteError):
    """The job ended failed or cancelled; ``job`` holds its state and error."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


@dataclass(frozen=True)
class Dataset:
    """A data set as this party sees it: its verified manifest's facts.

    ``owner`` is the owner's registered name ("" if the coordinator lists no
    registration for its key); ``label`` the label column it was uploaded
    with (None: it has none, as in a vertical job's non-label parties).
    ``id_column`` is known for this party's own uploads only (it is not in
    the manifest).
    """

    dataset_id: str
    owner: str
    owner_key: str
    rows: int
    ciphertext_size: int
    label: str | None
    yours: bool
    id_column: str | None = None
    categorical: list[str] = field(default_factory=list)
    withdrawn_at: int = 0  # ms since the epoch (coordinator's clock) its owner withdrew it

    @property
    def ref(self) -> str:
        """``owner/dataset-id``, the form :meth:`Party.propose` also accepts."""
        return f"{self.owner}/{self.dataset_id}" if self.owner else self.dataset_id


@dataclass(frozen=True)
class Prediction:
    """A sealed model's answer: ``table`` (the id column first if one was kept, then
    ``prediction``, ``prediction_0`` … or ``class``), the rows scored and the budget left."""

    model_id: str
    query_id: str
    rows: int
    columns: list[str]
    remaining: Budget
    simulation: bool
    table: pa.Table = field(repr=False)

    def to_numpy(self) -> Any:
        """The answer's columns as an array: one column a vector, several a matrix."""
        import numpy as np

        values = [self.table.column(c).to_numpy() for c in self.columns]
        return values[0] if len(values) == 1 else np.column_stack(values)
