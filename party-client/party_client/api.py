"""The party's Python API: one object per party, one connection per object.

A :class:`Party` is this party's identity (its home folder), its attestation
policy and one gRPC connection to the coordinator, reused by every call and
closed by :meth:`Party.close` (or the ``with`` statement). Each method is one
step of the library (:mod:`party_client.datasets`, :mod:`~party_client.proposal`,
:mod:`~party_client.consent`, :mod:`~party_client.job_control`,
:mod:`~party_client.outputs`, :mod:`~party_client.queries`,
:mod:`~party_client.models`) given that connection; nothing here verifies less
than the CLI does, which calls the same functions.

>>> from party_client import Party
>>> with Party.from_home() as bank:                       # doctest: +SKIP
...     bank.attest()
...     ds = bank.upload("loans.csv", label="default", id_column="ID")
...     job = bank.propose([ds, "insurer/claims"], num_boost_round=50)
...     booster = job.wait(timeout=600).model()

A data owner that will not approve a job rejects it (:meth:`Party.reject`):
signed, with its reason, for good.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import party_client.datasets as data_sets
import party_client.models as sealed_models
from party_client import consent, job_control, outputs, proposal, queries, withdrawal
from party_client.home import PartyHome
from party_client.remote import Coordinator
from protocols.documents import ANSWER_PROBABILITY, DatasetManifest, JobTerms
from protocols.errors import DetenteError, IntegrityError, SetupError, WrongState
from protocols.statements import Envelope

if TYPE_CHECKING:
    import pyarrow as pa
    import xgboost as xgb

    from protocols.attestation import VerifiedEnclave
    from protocols.documents import Budget
    from protocols.keys import SigningKey
    from protocols.policy import AttestationPolicy

# How often Job.wait asks the coordinator (seconds): a job takes seconds at least.
POLL_SECONDS = 0.3


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


class Party:
    """This party: its identity, its attestation policy and one connection to the coordinator.

    >>> bank = Party.from_home()          # DETENTE_HOME or ~/.config/detente  # doctest: +SKIP
    >>> bank.attest().simulation          # doctest: +SKIP
    True
    >>> bank.close()                      # doctest: +SKIP
    """

    def __init__(
        self,
        home: PartyHome,
        policy: AttestationPolicy | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.home = home
        self.name: str = home.config()["name"]  # refuses a folder with no identity
        self._policy = policy
        self._timeout = timeout
        self._remote: Coordinator | None = None

    @classmethod
    def from_home(
        cls,
        path: Path | str | None = None,
        policy: Path | str | AttestationPolicy | None = None,
        timeout: float = 60.0,
        passphrase: str | None = None,
    ) -> Party:
        """The party whose home is ``path`` (default: ``DETENTE_HOME`` or
        ``~/.config/detente``), as `detente party init` created it; ``policy`` an
        attestation policy (or its file) instead of the home's ``policy.toml``.

        Keys encrypted under a passphrase (`detente party init --encrypt-keys`) are
        opened with ``passphrase``, else ``DETENTE_PASSPHRASE``, else a prompt on a
        terminal; a wrong one raises :class:`~party_client.keyfile.WrongPassphrase`.
        """
        home = PartyHome(Path(path)) if path is not None else PartyHome.default()
        home.passphrase = passphrase
        if isinstance(policy, str | Path):
            policy = home.policy(Path(policy))
        return cls(home, policy, timeout)

    @classmethod
    def init(
        cls,
        home: Path | str | None,
        name: str,
        coordinator: str,
        coordinator_cert: Path | str | None = None,
        *,
        token: str = "",
        encrypt_keys: bool = False,
        passphrase: str | None = None,
        key: Path | str | SigningKey | None = None,
        policy: Path | str | None = None,
        pq: bool = False,
        timeout: float = 60.0,
    ) -> Party:
        """Create and register this party's identity in ``home`` (None: ``DETENTE_HOME`` or
        ``~/.config/detente``), as `detente party init` does; the party, ready to use.

        ``coordinator_cert`` is the certificate `detente coordinator serve` printed
        (pinned: needed the first time), ``token`` the one-time enrollment token of
        `detente coordinator enroll`, ``policy`` an attestation policy file copied
        into the home. ``encrypt_keys`` writes the keys encrypted under
        ``passphrase`` (else ``DETENTE_PASSPHRASE``); ``key`` signs with an existing
        Ed25519 key (a PEM/DER PKCS#8 or raw file) instead of a new one.

        >>> bank = Party.init("~/bank", "bank", "coord.example:7000", "coordinator.crt",
        ...                   token=TOKEN, policy="policy.toml")   # doctest: +SKIP
        """
        from party_client.onboarding import init_home

        where = PartyHome(Path(home).expanduser()) if home is not None else PartyHome.default()
        init_home(
            where,
            name,
            coordinator,
            Path(coordinator_cert) if coordinator_cert is not None else None,
            token=token,
            encrypt_keys=encrypt_keys,
            passphrase=passphrase,
            key=Path(key) if isinstance(key, str | Path) else key,
            policy=Path(policy) if policy is not None else None,
            pq=pq,
        )
        return cls(where, None, timeout)

    def __repr__(self) -> str:
        return f"<Party {self.name} at {self.home.root}>"

    # A Party is a handle on an identity and a connection: copies (scikit-learn's clone of an
    # estimator holding one) share it.
    def __copy__(self) -> Party:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Party:
        return self

    @property
    def policy(self) -> AttestationPolicy:
        if self._policy is None:
            self._policy = self.home.policy()
        return self._policy

    @property
    def remote(self) -> Coordinator:
        """The connection every call of this party uses (opened on first use)."""
        if self._remote is None:
            self._remote = Coordinator.for_home(self.home, self._timeout)
        return self._remote

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    def __enter__(self) -> Party:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the enclave ------------------------------------------------------------

    def attest(self) -> VerifiedEnclave:
        """Verify the enclave's evidence for a fresh nonce under this party's policy and keep
        the record; raises :class:`~protocols.attestation.EvidenceRefused` naming each
        failing rule."""
        from party_client.enclave import attest

        return attest(self.home, self.policy, remote=self.remote)

    def _attested(self) -> None:
        """Attest again if the record is missing or older than the policy allows."""
        try:
            self.home.attested_enclave(self.policy)
        except SetupError:
            self.attest()

    # -- data sets --------------------------------------------------------------

    def upload(
        self,
        path: Path | str,
        label: str | None = None,
        id_column: str | None = None,
        dataset_id: str | None = None,
        schema: Mapping[str, str] | Path | str | None = None,
        progress: data_sets.ProgressCallback | None = None,
        *,
        publish_schema: bool = False,
        display_name: str = "",
        resume: bool = False,
    ) -> Dataset:
        """Validate a CSV or Parquet file, seal it to the attested enclave (attested now if
        the record is missing or too old), sign its manifest and upload it.

        ``schema`` maps columns to ``"numeric"`` or ``"categorical"`` (or names
        a schema file, as ``--schema``); ``progress`` is called with
        :class:`~party_client.UploadProgress` as batches are sealed and sent.

        If sending fails (:class:`~party_client.UploadInterrupted`: a cut network, a
        coordinator restart, or this process killed), the sealed copy stays in the
        home and ``resume=True`` sends the rest of it from the last byte the
        coordinator acknowledged: the same ciphertext under the same signed manifest
        (``dataset_id`` picks one of several interrupted uploads of ``path``).

        >>> ds = bank.upload("loans.csv", label="default", resume=True)      # doctest: +SKIP

        >>> ds = bank.upload("loans.csv", label="default", id_column="ID")  # doctest: +SKIP
        >>> ds.rows, ds.ref                                                   # doctest: +SKIP
        (600, 'bank/bank-5c1f0a9e2b7d')
        """
        from party_client.tables import load_schema

        kinds = load_schema(Path(schema)) if isinstance(schema, str | Path) else schema
        if not resume:
            self._attested()
        done = data_sets.upload(
            self.home,
            self.policy,
            Path(path),
            label,
            id_column,
            dataset_id,
            publish_schema=publish_schema,
            display_name=display_name,
            column_kinds=kinds,
            progress=progress,
            resume=resume,
            remote=self.remote,
        )
        return Dataset(
            done.dataset_id,
            self.name,
            self.home.signing_key().verify_key.hex,
            done.rows,
            done.ciphertext_size,
            done.label,
            True,
            id_column,
            done.categorical,
        )

    def names(self) -> dict[str, str]:
        """Registered names by signing key (hex), registrations verified."""
        from party_client.identity import fetch_registrations

        return {k: r.name for k, r in fetch_registrations(self.remote).items()}

    def datasets(self) -> list[Dataset]:
        """The data sets this party may see (its own, and those of its jobs), each manifest
        verified under its owner's key; a withdrawn one has ``withdrawn_at`` set once its
        owner's signed withdrawal verifies."""
        me = self.home.signing_key().verify_key.hex
        names = self.names()
        found = []
        for record in data_sets.list_datasets(self.home, remote=self.remote):
            manifest = DatasetManifest.verify(Envelope.from_bytes(record.manifest, "manifest"))
            if manifest.dataset_id != record.dataset_id:
                raise IntegrityError(
                    f"the coordinator lists data set {record.dataset_id!r} with the signed "
                    f"manifest of {manifest.dataset_id!r}: refused"
                )
            seen = self._dataset(manifest, names, me)
            if record.withdrawn_at:
                # The owner's statement, checked here: a coordinator cannot fake one.
                withdrawal.check_statement(record.withdrawal, record.manifest)
                seen = dataclasses.replace(seen, withdrawn_at=record.withdrawn_at)
            found.append(seen)
        return found

    def dataset(self, ref: str) -> Dataset:
        """One data set by id or ``owner/dataset-id`` (the owner checked by its registered
        name); its manifest verified."""
        owner, _, dataset_id = ref.rpartition("/")
        _, manifest = data_sets.fetch_manifest(self.remote, dataset_id)
        found = self._dataset(manifest, self.names(), self.home.signing_key().verify_key.hex)
        if owner and found.owner != owner:
            raise SetupError(
                f"data set {dataset_id!r} is owned by {found.owner or 'an unregistered key'!r}, "
                f"not {owner!r}: check the name in {ref!r}; nothing was proposed"
            )
        return found

    def _dataset(self, manifest: DatasetManifest, names: dict[str, str], me: str) -> Dataset:
        key = manifest.owner_key.hex
        mine = key == me
        return Dataset(
            manifest.dataset_id,
            names.get(key, ""),
            key,
            manifest.row_count,
            manifest.ciphertext_size,
            manifest.label.column if manifest.label is not None else None,
            mine,
        )

    # -- jobs -------------------------------------------------------------------

    def propose(
        self,
        datasets: Sequence[Dataset | str],
        join: str = "horizontal",
        objective: str = proposal.OBJECTIVE,
        params: Mapping[str, Any] | None = None,
        num_boost_round: int = 200,
        recipients: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        validation_fraction: float = 0.0,
        early_stopping_rounds: int | None = None,
        sealed: bool = False,
        queriers: Mapping[str, int | tuple[int, int]] | Iterable[proposal.QueryGrant] = (),
        *,
        label: str | None = None,
        id_column: str | None = None,
        id_columns: Mapping[str, str] | None = None,
        seed: int = 0,
        job_id: str | None = None,
        min_rows: int = 1,
        metrics_every: int | None = None,
        model_format: str = "json",
        answer: str = ANSWER_PROBABILITY,
        digits: int | None = None,
        expires_in: int = 24 * 3600,
        max_seconds: int | None = None,
        live_metrics: bool = False,
    ) -> Job:
        """Sign and propose job terms over ``datasets`` (:class:`Dataset` objects, ids, or
        ``owner/dataset-id``). Checked before anything is sent, as
        :func:`party_client.propose` checks them.

        ``outputs`` defaults to ``["model"]`` (none for a ``sealed`` model);
        ``recipients`` (registered names) to the data owners. ``queriers`` of
        a sealed model map a registered name to its row budget, or to
        ``(total, per_day)``. In a vertical join the id column of each of this
        party's own :class:`Dataset` objects is used unless ``id_column`` or
        ``id_columns`` says otherwise. ``live_metrics`` lets the coordinator see the
        metrics in the clear while the job trains (needs ``metrics`` among
        ``outputs`` and ``metrics_every``).

        >>> job = bank.propose([ds, "insurer/claims"], join="vertical",
        ...                    params={"max_depth": 6}, num_boost_round=300,
        ...                    recipients=["bank", "insurer"])            # doctest: +SKIP
        """
        ids: list[str] = []
        columns: dict[str, str] = {}
        for item in datasets:
            if isinstance(item, Dataset):
                ids.append(item.dataset_id)
                if item.id_column is not None and join == "vertical":
                    columns[item.dataset_id] = item.id_column
            elif "/" in item:
                ids.append(self.dataset(item).dataset_id)
            else:
                ids.append(item)
        if id_column is not None:
            columns = {}
        columns.update(id_columns or {})
        grants = _grants(queriers)
        self._attested()
        terms = proposal.propose(
            self.home,
            self.policy,
            ids,
            label,
            id_column,
            num_boost_round,
            dict(params or {}),
            seed,
            list(recipients) if recipients else None,
            list(outputs) if outputs is not None else ([] if sealed else ["model"]),
            job_id,
            expires_in,
            max_seconds,
            join=join,
            id_columns=columns,
            objective=objective,
            min_rows=min_rows,
            validation_fraction=validation_fraction,
            early_stopping_rounds=early_stopping_rounds,
            metrics_every=metrics_every,
            model_format=model_format,
            sealed=sealed,
            queriers=grants,
            answer=answer,
            digits=digits,
            live_metrics=live_metrics,
            remote=self.remote,
        )
        return self.job(terms.job_id)

    def jobs(self) -> list[Job]:
        """The jobs this party takes part in (proposer, data owner, recipient or querier)."""
        return [Job(self, v) for v in job_control.jobs(self.home, remote=self.remote)]

    def job(self, job_id: str) -> Job:
        """One job, its terms verified (NotFound through the coordinator if it is not yours
        to see)."""
        return Job(self, job_control.fetch_job(self.home, job_id, remote=self.remote))

    def _job(self, job: Job | str) -> Job:
        return job if isinstance(job, Job) else self.job(job)

    def review(self, job: Job | str) -> consent.Review:
        """What approving ``job`` means for this party (who receives what, the model's fate)
        and what stands in the way (``refusals``, ``warnings``); nothing is signed."""
        job = self._job(job).refresh()
        return consent.review(self.home, self.policy, job.view, remote=self.remote)

    def approve(self, job: Job | str, yes: bool = False) -> consent.Review:
        """Review ``job`` and sign this party's approval of its exact terms.

        Refuses (:class:`~protocols.errors.ConsentError`) terms the review
        refuses, and terms with warnings (for example, you receive nothing)
        unless ``yes`` accepts them, as `detente party approve --yes` does.
        """
        reviewed = self.review(job)
        view = consent.sign_approval(self.home, reviewed, yes, remote=self.remote)
        if isinstance(job, Job):
            job.view = view
        return reviewed

    def cancel(self, job: Job | str, reason: str = "") -> Job:
        return self._job(job).cancel(reason)

    def reject(self, job: Job | str, reason: str) -> Job:
        """Refuse ``job`` as one of its data owners, with ``reason`` (one line, at most 500
        characters): signed, shown to its parties, and the job never runs."""
        job = self._job(job)
        job.view = job_control.reject(self.home, job.job_id, reason, remote=self.remote)
        return job

    # -- sealed models ----------------------------------------------------------

    def models(self) -> list[sealed_models.ModelView]:
        """The sealed models this party owns or may query."""
        return sealed_models.models(self.home, remote=self.remote)

    def model(self, model_id: str) -> sealed_models.ModelView:
        """One sealed model (its id is the id of the job that trained it)."""
        return sealed_models.model(self.home, model_id, remote=self.remote)

    def predict(
        self,
        model_id: str | Job,
        data: Any,
        id_column: str | None = None,
        schema: Mapping[str, str] | None = None,
    ) -> Prediction:
        """Score rows with a sealed model: ``data`` a CSV or Parquet path, a
        :class:`pyarrow.Table` or what :func:`pyarrow.table` reads (a dict of columns, a
        pandas DataFrame). ``id_column`` (of a file) stays on this machine and is put
        back next to the answer. The rows are sealed to the attested enclave and the
        answer verified under its key before it is opened.

        >>> bank.predict("job-1a2b", "new-customers.csv", id_column="ID").table  # doctest: +SKIP
        """
        from party_client import tables

        model_id = model_id.job_id if isinstance(model_id, Job) else model_id
        self._attested()
        with queries.QuerySession(self.home, model_id, self.policy, remote=self.remote) as s:
            if isinstance(data, str | Path):
                scan = tables.TableScan(Path(data), None, id_column, dict(schema or {}))
                query_id = queries._query_id()
                sealed, ids = queries.seal_rows(scan, model_id, query_id, None)
                table = s.ask(sealed, query_id)[1]
                if ids is not None and id_column is not None:
                    table = table.add_column(0, id_column, ids)
            else:
                table = s.predict_table(data, dict(schema) if schema else None)
            last = s.last
        assert last is not None
        return Prediction(
            model_id, last.query_id, last.rows, last.columns, last.remaining, s.simulation, table
        )

    def withdrawal_plan(self, dataset: Dataset | str) -> withdrawal.WithdrawalPlan:
        """What withdrawing this party's ``dataset`` would cancel (nothing is signed)."""
        dataset_id = dataset.dataset_id if isinstance(dataset, Dataset) else dataset
        return withdrawal.withdrawal_plan(self.home, dataset_id, remote=self.remote)

    def withdraw(self, dataset: Dataset | str) -> withdrawal.Withdrawn:
        """Withdraw this party's ``dataset`` for good: the coordinator deletes its
        ciphertext and cancels the jobs waiting on it, and every enclave worker refuses it
        and destroys the checkpoints and sealed models trained on it (protocols/SPEC.md
        §3.11). :attr:`~party_client.Withdrawn.pending` lists workers that have not
        acknowledged yet (the coordinator re-sends to them).

        >>> bank.withdraw("loans-2024").cancelled_jobs                 # doctest: +SKIP
        """
        dataset_id = dataset.dataset_id if isinstance(dataset, Dataset) else dataset
        return withdrawal.withdraw(self.home, dataset_id, remote=self.remote)

    def retire(self, model_id: str | Job) -> sealed_models.ModelView:
        """Sign this owner's retirement of a sealed model; with every owner's, the enclave
        destroys it (:attr:`~party_client.ModelView.retired`)."""
        model_id = model_id.job_id if isinstance(model_id, Job) else model_id
        return sealed_models.retire(self.home, model_id, remote=self.remote)


def _grants(
    queriers: Mapping[str, int | tuple[int, int]] | Iterable[proposal.QueryGrant],
) -> list[proposal.QueryGrant]:
    if isinstance(queriers, Mapping):
        grants = []
        for name, budget in queriers.items():
            total, per_day = budget if isinstance(budget, tuple) else (budget, None)
            grants.append(proposal.QueryGrant(name, int(total), per_day))
        return grants
    return list(queriers)
