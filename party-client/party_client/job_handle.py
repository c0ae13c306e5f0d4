"""A :class:`Job` handle: a job as this party last fetched it, waited on, and opened.

:meth:`Job.wait` polls the coordinator until the job succeeds (or raises
:class:`~party_client.api_types.JobFailed` or
:class:`~party_client.api_types.JobTimeout`); :meth:`Job.model`,
:meth:`Job.metrics`, :meth:`Job.importance` and :meth:`Job.predictions` verify
the enclave's result statement and decrypt this party's outputs once. Made by
:class:`~party_client.api.Party`; ``party_client.api`` re-exports it.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from party_client import consent, job_control, outputs
from party_client.api_types import JobFailed, JobTimeout
from protocols.errors import SetupError, WrongState

if TYPE_CHECKING:
    import pyarrow as pa
    import xgboost as xgb

    from party_client.api import Party
    from protocols.documents import JobTerms

# How often Job.wait asks the coordinator (seconds): a job takes seconds at least.
POLL_SECONDS = 0.3

ProgressArg = bool | Callable[[job_control.JobView], None]


class Job:
    """A job as this party last fetched it (:attr:`view`), with what can be done to it.

    Made by :meth:`Party.propose`, :meth:`Party.job` and :meth:`Party.jobs`;
    each call that asks the coordinator updates :attr:`view`.
    """

    def __init__(self, party: Party, view: job_control.JobView) -> None:
        self._party = party
        self.view = view
        self._outputs: dict[str, bytes] | None = None

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.state}>"

    @property
    def job_id(self) -> str:
        return self.view.job_id

    @property
    def state(self) -> str:
        """proposed, approved, running, succeeded, failed or cancelled (as last fetched)."""
        return self.view.state

    @property
    def terms(self) -> JobTerms:
        """The verified :class:`~protocols.documents.JobTerms`."""
        return self.view.terms

    @property
    def awaiting(self) -> list[str]:
        """Signing keys (hex) whose approvals the coordinator does not list yet."""
        return [k for k in self.view.required_approvers if k not in self.view.approvers]

    def refresh(self) -> Job:
        """Fetch the job again (its terms verified again)."""
        self.view = job_control.fetch_job(self._party.home, self.job_id, remote=self._party.remote)
        return self

    def wait(self, progress: ProgressArg = False, timeout: float | None = None) -> Job:
        """Wait until the job has succeeded; return it.

        ``progress``: True prints each new event to standard error; a callable
        is given the :class:`~party_client.JobView` whenever its state or
        events change. Raises :class:`JobFailed` if the job fails or is
        cancelled, :class:`JobTimeout` (naming the approvals still missing)
        after ``timeout`` seconds (None: wait as long as it takes).

        >>> job.wait(progress=True, timeout=600).model()  # doctest: +SKIP
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[str | None, int] = (None, -1)
        while True:
            self.refresh()
            mark = (self.state, len(self.view.events))
            if mark != seen:
                self._report(progress, seen[1])
                seen = mark
            if self.state == "succeeded":
                return self
            if self.state in job_control.FINISHED:
                detail = f": {self.view.error}" if self.view.error else ""
                if self.view.rejection is not None:
                    by = self.view.rejection.by
                    name = self._party.names().get(by) or by[:16] + "…"
                    detail = f" by {name}: {self.view.rejection.reason}"
                raise JobFailed(f"job {self.job_id} {self.state}{detail}", self)
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(self._late(timeout or 0), self)
            time.sleep(POLL_SECONDS)

    def _report(self, progress: ProgressArg, printed: int) -> None:
        if callable(progress):
            progress(self.view)
        elif progress:
            for event in self.view.events[max(printed, 0) :]:
                print(f"{self.job_id} {event.kind}: {event.text}", file=sys.stderr)

    def _late(self, timeout: float) -> str:
        if self.state == "proposed" and self.awaiting:
            names = self._party.names()
            missing = ", ".join(names.get(k, k[:16] + "…") for k in self.awaiting)
            return (
                f"job {self.job_id} is still proposed after {timeout:g} s: it awaits the "
                f"approval of {missing} (`detente party approve {self.job_id}`)"
            )
        return f"job {self.job_id} is still {self.state} after {timeout:g} s: wait longer"

    # -- outputs ----------------------------------------------------------------

    def results(self, out_dir: Path | str) -> dict[str, Path]:
        """Verify the enclave's result statement and write this party's outputs to
        ``out_dir`` (mode 0600); the paths by output name (see
        :func:`party_client.results`)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return outputs.results(self._party.home, self.job_id, out, remote=self._party.remote)

    def _released(self) -> dict[str, bytes]:
        """This party's outputs, verified and decrypted once (in a private temporary folder,
        removed at once), kept in memory by output name."""
        if self._outputs is None:
            folder = Path(tempfile.mkdtemp(prefix="detente-results-"))
            try:
                written = self.results(folder)
                self._outputs = {name: path.read_bytes() for name, path in written.items()}
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        return self._outputs

    def _output(self, name: str) -> bytes:
        if self.view.state != "succeeded":
            self.refresh()
        if name == "model" and self.terms.sealed:
            raise WrongState(
                f"job {self.job_id} sealed its model in the enclave: nobody receives it; query it "
                f"with Party.predict({self.job_id!r}, table)"
            )
        found = self._released().get(name)
        if found is None:
            raise SetupError(
                f"job {self.job_id} released no {name} to you: its terms release "
                f"{', '.join(self.terms.outputs) or 'nothing'} to "
                f"{', '.join(r.name for r in self.terms.recipients)}"
            )
        return found

    def model(self) -> xgb.Booster:
        """The released model as an :class:`xgboost.Booster`, from output bytes whose digest
        the enclave's signed result statement names, decrypted with this party's key."""
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(self._output("model")))
        return booster

    def metrics(self) -> dict[str, Any]:
        """The released metrics (``metrics.json``)."""
        return dict(json.loads(self._output("metrics")))

    def importance(self) -> dict[str, Any]:
        """The released feature importance (``importance.json``)."""
        return dict(json.loads(self._output("importance")))

    def predictions(self) -> dict[str, pa.Table]:
        """The predictions released to this party, one table per data set it owns."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        if self.view.state != "succeeded":
            self.refresh()
        if "predictions" not in self.terms.outputs:
            self._output("predictions")  # raises: not released
        return {
            name.removeprefix(outputs.PREDICTIONS): pacsv.read_csv(pa.BufferReader(data))
            for name, data in self._released().items()
            if name.startswith(outputs.PREDICTIONS)
        }

    # -- consent ----------------------------------------------------------------

    def review(self) -> consent.Review:
        """See :meth:`Party.review`."""
        return self._party.review(self)

    def approve(self, yes: bool = False) -> consent.Review:
        """See :meth:`Party.approve`."""
        return self._party.approve(self, yes=yes)

    def cancel(self, reason: str = "") -> Job:
        """Cancel the job (its proposer, or an owner before it runs)."""
        self.view = job_control.cancel(
            self._party.home, self.job_id, reason, remote=self._party.remote
        )
        return self
