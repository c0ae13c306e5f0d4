"""The party's library: what a data owner does, each step verifying what the coordinator sends.

Register and pin (:mod:`~party_client.identity`), attest the enclave
(:mod:`~party_client.enclave`), read tables in record batches
(:mod:`~party_client.tables`), seal and upload data sets through a private
spool file (:mod:`~party_client.datasets`, :mod:`~party_client.spool`),
propose jobs (:mod:`~party_client.proposal`), review and approve them
(:mod:`~party_client.consent`), follow them (:mod:`~party_client.job_control`),
collect their outputs (:mod:`~party_client.outputs`), query and retire
the models they seal in the enclave (:mod:`~party_client.queries`,
:mod:`~party_client.models`), and withdraw a data set
(:mod:`~party_client.withdrawal`). Every function returns dataclasses; protobuf
stays in :mod:`~party_client.remote`, the gRPC edge.

:class:`Party` (:mod:`~party_client.api`, on the connection of
:mod:`~party_client.party_connection`) gathers them for scripts and notebooks:
one object per party, one connection per object, :class:`Job` objects that wait
for and open their results (:mod:`~party_client.job_handle`), the values and
errors they return (:mod:`~party_client.api_types`), and the scikit-learn style estimators
:class:`SecureXGBClassifier` and :class:`SecureXGBRegressor`
(:mod:`~party_client.estimators`).

The names below are the API. Each loads its module on first use, so that
`detente --help` does not import gRPC and the crypto stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from party_client.api import Party
    from party_client.api_types import Dataset, JobFailed, JobTimeout, Prediction
    from party_client.consent import (
        DatasetView,
        QuerierView,
        RecipientView,
        Review,
        approve,
        review,
        sign_approval,
    )
    from party_client.datasets import (
        Uploaded,
        UploadInterrupted,
        UploadProgress,
        list_datasets,
        upload,
    )
    from party_client.doctor import Check, Diagnosis, diagnose
    from party_client.enclave import attest, enclave_summary
    from party_client.estimators import Columns, SecureXGBClassifier, SecureXGBRegressor
    from party_client.follow import JobUpdate, follow
    from party_client.home import PartyHome
    from party_client.identity import KnownParty, init, parties, pin, register
    from party_client.job_control import (
        JobView,
        RejectionView,
        cancel,
        fetch_job,
        jobs,
        reject,
        retry,
        wait,
    )
    from party_client.job_handle import Job
    from party_client.jobfile import (
        JobFileError,
        JobSpec,
        Proposal,
        jobfile_template,
        load_job_file,
        propose_spec,
        write_template,
    )
    from party_client.models import ModelOwner, ModelQuerier, ModelView, model, models, retire
    from party_client.outputs import results
    from party_client.proposal import DEFAULT_PARAMS, QueryGrant, propose
    from party_client.queries import (
        Predicted,
        QueryProgress,
        QuerySession,
        predict,
        predict_table,
    )
    from party_client.remote import CoordinatorError
    from party_client.table_schema import load_schema
    from party_client.withdrawal import (
        AffectedJob,
        WithdrawalPlan,
        Withdrawn,
        WorkerAck,
        withdraw,
        withdrawal_plan,
    )

_MODULE_OF = {
    "Check": "doctor",
    "Diagnosis": "doctor",
    "diagnose": "doctor",
    "Columns": "estimators",
    "SecureXGBClassifier": "estimators",
    "SecureXGBRegressor": "estimators",
    "Dataset": "api_types",
    "Job": "job_handle",
    "JobFailed": "api_types",
    "JobTimeout": "api_types",
    "Party": "api",
    "Prediction": "api_types",
    "DEFAULT_PARAMS": "proposal",
    "CoordinatorError": "remote",
    "DatasetView": "consent",
    "JobView": "job_control",
    "JobFileError": "jobfile",
    "JobSpec": "jobfile",
    "Proposal": "jobfile",
    "jobfile_template": "jobfile",
    "load_job_file": "jobfile",
    "propose_spec": "jobfile",
    "write_template": "jobfile",
    "JobUpdate": "follow",
    "KnownParty": "identity",
    "ModelOwner": "models",
    "ModelQuerier": "models",
    "ModelView": "models",
    "PartyHome": "home",
    "Predicted": "queries",
    "QuerierView": "consent",
    "QueryGrant": "proposal",
    "QueryProgress": "queries",
    "QuerySession": "queries",
    "RecipientView": "consent",
    "RejectionView": "job_control",
    "Review": "consent",
    "UploadProgress": "datasets",
    "Uploaded": "datasets",
    "UploadInterrupted": "datasets",
    "approve": "consent",
    "attest": "enclave",
    "cancel": "job_control",
    "enclave_summary": "enclave",
    "fetch_job": "job_control",
    "follow": "follow",
    "init": "identity",
    "jobs": "job_control",
    "list_datasets": "datasets",
    "load_schema": "table_schema",
    "model": "models",
    "models": "models",
    "parties": "identity",
    "pin": "identity",
    "predict": "queries",
    "predict_table": "queries",
    "propose": "proposal",
    "register": "identity",
    "reject": "job_control",
    "results": "outputs",
    "retire": "models",
    "retry": "job_control",
    "review": "consent",
    "sign_approval": "consent",
    "upload": "datasets",
    "wait": "job_control",
    "AffectedJob": "withdrawal",
    "WithdrawalPlan": "withdrawal",
    "Withdrawn": "withdrawal",
    "WorkerAck": "withdrawal",
    "withdraw": "withdrawal",
    "withdrawal_plan": "withdrawal",
}

__all__ = [
    "DEFAULT_PARAMS",
    "AffectedJob",
    "Check",
    "Columns",
    "CoordinatorError",
    "Dataset",
    "DatasetView",
    "Diagnosis",
    "Job",
    "JobFailed",
    "JobFileError",
    "JobSpec",
    "JobTimeout",
    "JobUpdate",
    "JobView",
    "KnownParty",
    "ModelOwner",
    "ModelQuerier",
    "ModelView",
    "Party",
    "PartyHome",
    "Predicted",
    "Prediction",
    "Proposal",
    "QuerierView",
    "QueryGrant",
    "QueryProgress",
    "QuerySession",
    "RecipientView",
    "RejectionView",
    "Review",
    "SecureXGBClassifier",
    "SecureXGBRegressor",
    "UploadInterrupted",
    "UploadProgress",
    "Uploaded",
    "WithdrawalPlan",
    "Withdrawn",
    "WorkerAck",
    "approve",
    "attest",
    "cancel",
    "diagnose",
    "enclave_summary",
    "fetch_job",
    "follow",
    "init",
    "jobfile_template",
    "jobs",
    "list_datasets",
    "load_job_file",
    "load_schema",
    "model",
    "models",
    "parties",
    "pin",
    "predict",
    "predict_table",
    "propose",
    "propose_spec",
    "register",
    "reject",
    "results",
    "retire",
    "retry",
    "review",
    "sign_approval",
    "upload",
    "wait",
    "withdraw",
    "withdrawal_plan",
    "write_template",
]

# Defined for the interpreter only: mypy reads the imports above, and so still
# reports a name that is not in the API.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module 'party_client' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"party_client.{module}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
