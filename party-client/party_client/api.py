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

The party's identity, policy and connection are in
:mod:`party_client.party_connection`, the :class:`Job` handle in
:mod:`party_client.job_handle`, and the values and errors (:class:`Dataset`,
:class:`Prediction`, :class:`JobFailed`, :class:`JobTimeout`) in
:mod:`party_client.api_types`; they are all importable from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import party_client.datasets as data_sets
import party_client.models as sealed_models
from party_client import consent, job_control, proposal, queries, withdrawal
from party_client.api_types import Dataset, JobFailed, JobTimeout, Prediction
from party_client.job_handle import POLL_SECONDS, Job, ProgressArg
from party_client.party_connection import PartyConnection
from protocols.documents import ANSWER_PROBABILITY, DatasetManifest
from protocols.errors import IntegrityError, SetupError
from protocols.statements import Envelope

# The API's values, the Job handle and the connection live in their own modules; these names
# stay importable from here.
__all__ = [
    "POLL_SECONDS",
    "Dataset",
    "Job",
    "JobFailed",
    "JobTimeout",
    "Party",
    "Prediction",
    "ProgressArg",
]


class Party(PartyConnection):
    """This party: its identity, its attestation policy and one connection to the coordinator
    (:class:`~party_client.party_connection.PartyConnection`), and the library's steps.

    >>> bank = Party.from_home()          # DETENTE_HOME or ~/.config/detente  # doctest: +SKIP
    >>> bank.attest().simulation          # doctest: +SKIP
    True
    >>> bank.close()                      # doctest: +SKIP
    """

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
