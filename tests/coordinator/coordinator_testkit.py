"""Builders for coordinator tests: parties, sealed data sets, terms, approvals,
a real coordinator on port 0 with a real channel, and a fake enclave.

(A module with a unique name, imported by conftest.py and the tests, because
tests/ folders have no __init__.py and `coordinator` is the package under test.)

The enclave here is a fake (a real gRPC server with scripted answers) because
the coordinator's tests are about relaying; the real worker is exercised by
the end-to-end tests. The fake serves TLS with a real RA-TLS certificate: an
enclave identity made in this process on a real SIMULATION platform (no
image is built), so the coordinator's RA-TLS check runs for real.

Every call through ``Harness.stub`` is TLS pinned to the coordinator's
certificate and signed like a party's: RegisterParty by the key it registers,
an upload, proposal or approval by the key that signed its statement,
anything else by ``Harness.acting`` (by default the first registered party;
when nobody is registered yet, an unregistered key, which the coordinator
refuses). ``Harness.sent_by(party)`` signs every call with ``party``'s key,
statement or not, to send a statement signed by someone else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from coordinator_fake_enclave import (  # noqa: F401 (re-exported)
    FAKE_ENCLAVE_KEY,
    MRENCLAVE,
    FakeEnclave,
    Script,
    answering_script,
    default_script,
    fake_enclave_credentials,
    fake_enclave_policy,
    fake_result_statement,
    fake_server,
    refusing_script,
    sealing_script,
    serve_fake_enclave,
)

from coordinator import JobLimits, RunningCoordinator, issue_enrollment, start
from protocols import hpke, tls
from protocols.documents import (
    Approval,
    DatasetManifest,
    JobTerms,
    ModelRetirement,
    PredictionQuery,
    Querier,
    Recipient,
    Registration,
)
from protocols.errors import DetenteError
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.policy import AttestationPolicy
from protocols.request_auth import RequestSigner
from protocols.statements import Envelope
from protocols.stream import seal_stream
from protocols.wire.v1 import coordinator_pb2, coordinator_pb2_grpc

# For pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True) (conftest.db_url).
BOTH_DATABASES = ["sqlite", "postgresql"]
# Private keys of every Party made here, by public key hex: the harness signs
# requests with them.
KEYS: dict[str, SigningKey] = {}


@dataclass
class Party:
    name: str
    key: SigningKey = field(default_factory=SigningKey.generate)
    hpke: HpkePrivateKey = field(default_factory=HpkePrivateKey.generate)

    def __post_init__(self) -> None:
        KEYS[self.key.verify_key.hex] = self.key

    @property
    def hex(self) -> str:
        return self.key.verify_key.hex

    def registration(self) -> bytes:
        return (
            Registration(self.name, self.key.verify_key, self.hpke.public_key)
            .sign(self.key)
            .to_bytes()
        )

    def recipient(self) -> Recipient:
        return Recipient(self.name, self.key.verify_key, self.hpke.public_key)


@dataclass
class SealedDataset:
    dataset_id: str
    manifest: Envelope
    ciphertext: bytes

    @property
    def manifest_bytes(self) -> bytes:
        return self.manifest.to_bytes()


ENCLAVE_HPKE = HpkePrivateKey.generate()


def seal_dataset(
    owner: Party,
    dataset_id: str,
    plaintext: bytes = b"id,x,label\n1,0.5,1\n2,0.25,0\n",
    signer: SigningKey | None = None,
    chunk_size: int = 1 << 20,
) -> SealedDataset:
    """Encrypt ``plaintext`` like the party client does and sign its manifest."""
    data_key = os.urandom(32)
    ciphertext = seal_stream(data_key, plaintext, dataset_id.encode(), chunk_size=chunk_size)
    enclave_key = ENCLAVE_HPKE.public_key
    wrapped = hpke.wrap_key(data_key, enclave_key, hpke.data_key_info(dataset_id, enclave_key))
    manifest = DatasetManifest(
        dataset_id=dataset_id,
        name=f"{dataset_id} of {owner.name}",
        owner_key=owner.key.verify_key,
        schema_sha256="00" * 32,
        row_count=2,
        ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(),
        ciphertext_size=len(ciphertext),
        wrapped_key=wrapped,
        sealed_to_mrenclave=MRENCLAVE,
        sealed_to_hpke_key=enclave_key,
    )
    return SealedDataset(dataset_id, manifest.sign(signer or owner.key), ciphertext)


def job_terms(
    proposer: Party,
    job_id: str,
    datasets: list[SealedDataset],
    recipients: list[Party] | None = None,
    signer: SigningKey | None = None,
    digests: dict[str, str] | None = None,
    num_rounds: int = 5,
    max_seconds: int | None = None,
) -> Envelope:
    digests = digests or {}
    terms = JobTerms(
        job_id=job_id,
        datasets=[(d.dataset_id, digests.get(d.dataset_id, d.manifest.digest)) for d in datasets],
        join="horizontal",
        objective="binary:logistic",
        label="label",
        params={"max_depth": 3},
        num_rounds=num_rounds,
        seed=7,
        allowed_mrenclaves=[MRENCLAVE],
        outputs=["model", "metrics"],
        recipients=[p.recipient() for p in (recipients or [proposer])],
        expires_at=4_000_000_000,
        proposer=proposer.hex,
        max_seconds=max_seconds,
    )
    return terms.sign(signer or proposer.key)


def sealed_terms(
    proposer: Party,
    job_id: str,
    datasets: list[SealedDataset],
    queriers: list[Party],
    recipients: list[Party] | None = None,
) -> Envelope:
    """Terms that seal the model: ``queriers`` may score 1,000 rows each (100 a day)."""
    terms = JobTerms.verify(job_terms(proposer, job_id, datasets, recipients))
    sealed = dataclasses.replace(
        terms,
        outputs=["metrics"],
        model="sealed",
        queriers=[
            Querier(q.name, q.key.verify_key, q.hpke.public_key, 1000, 100) for q in queriers
        ],
        answer="probability",
        answer_digits=3,
    )
    return sealed.sign(proposer.key)


def prediction_query(
    querier: Party,
    model_id: str,
    rows: int = 10,
    rows_ciphertext: bytes = b"",
    query_id: str = "q-1",
) -> bytes:
    """A query signed by ``querier`` (the rows' ciphertext stands in for a sealed table)."""
    return (
        PredictionQuery(
            model_id=model_id,
            query_id=query_id,
            issued_at=int(time.time()),
            rows=rows,
            ciphertext_sha256=hashlib.sha256(rows_ciphertext).hexdigest(),
            wrapped_key=b"wrapped-to-the-enclave",
            sealed_to_mrenclave=MRENCLAVE,
            sealed_to_hpke_key=ENCLAVE_HPKE.public_key,
        )
        .sign(querier.key)
        .to_bytes()
    )


def retirement(owner: Party, model_id: str, terms_digest: str) -> bytes:
    return ModelRetirement(model_id, terms_digest).sign(owner.key).to_bytes()


def approval(party: Party, job_id: str, terms: Envelope) -> bytes:
    return Approval(job_id, terms.digest).sign(party.key).to_bytes()


def upload_requests(
    manifest: bytes, ciphertext: bytes, piece: int = 4096
) -> Iterator[coordinator_pb2.UploadDatasetRequest]:
    yield coordinator_pb2.UploadDatasetRequest(manifest=manifest)
    for i in range(0, len(ciphertext), piece):
        yield coordinator_pb2.UploadDatasetRequest(ciphertext=ciphertext[i : i + piece])


# --------------------------------------------------------------------------- coordinator


class Harness:
    """A coordinator in this process and a real channel to it; restartable.

    With an enclave, the coordinator's enclave policy is ``enclave_policy`` or,
    by default, one that trusts the FAKE enclave's SIMULATION evidence.
    ``limits`` are the operator's job limits (the coordinator's defaults if None).
    """

    def __init__(
        self,
        home: Path,
        enclave: str | None = None,
        enclave_policy: AttestationPolicy | None = None,
        limits: JobLimits | None = None,
        db_url: str | None = None,
        enclaves: tuple[str, ...] = (),
    ) -> None:
        self.home = home
        self.db_url = db_url
        self.enclave = enclave
        self.enclaves = enclaves
        self.enclave_policy = enclave_policy
        self.limits = limits
        self.running: RunningCoordinator | None = None
        self.channel: grpc.Channel | None = None
        self.stub: Any = None
        self.unregistered = SigningKey.generate()
        self.acting: Party | None = None
        self.sender: Party | None = None
        self.start()

    def start(self) -> None:
        policy = self.enclave_policy or (
            fake_enclave_policy() if self.enclave or self.enclaves else None
        )
        self.running = start(
            self.home,
            self.db_url,
            enclave=self.enclave,
            enclave_policy=policy,
            limits=self.limits,
            enclaves=self.enclaves,
            worker_check_seconds=0.2,
        )
        certificate = tls.load_certificate(self.running.certificate_path.read_bytes(), "cert")
        self.channel = tls.pinned_channel(self.running.address, certificate, CHANNEL_OPTIONS)
        signer = RequestSigner(self.unregistered, key_for=self.signing_key_for)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(
            grpc.intercept_channel(self.channel, signer)
        )

    def signing_key_for(self, method: str, request: Any) -> SigningKey | None:
        """The key a party would sign ``request`` with (see the module docstring)."""
        if self.sender is not None:
            return self.sender.key
        statement = {
            "/RegisterParty": "registration",
            "/UploadDataset": "manifest",
            "/BeginUpload": "manifest",
            "/ProposeJob": "terms",
            "/ApproveJob": "approval",
            "/RejectJob": "rejection",
        }
        for suffix, name in statement.items():
            if method.endswith(suffix):
                try:
                    signer = Envelope.from_bytes(getattr(request, name)).signer.hex
                except DetenteError:
                    break
                if signer in KEYS:
                    return KEYS[signer]
        if method.endswith("/RegisterParty"):
            return None
        if self.acting is not None:
            return self.acting.key
        assert self.running is not None
        for party in self.running.store.list_parties():
            if party.signing_key in KEYS:
                return KEYS[party.signing_key]
        return None

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.running is not None:
            self.running.stop(grace=0.5)
            self.running = None

    def restart(self, enclave: str | None = None) -> None:
        self.stop()
        if enclave is not None:
            self.enclave = enclave
        self.start()

    # conveniences
    def enroll(self, name: str) -> str:
        """A one-time enrollment token for ``name``, as `detente coordinator enroll` issues."""
        assert self.running is not None
        token, _ = issue_enrollment(self.running.store, name)
        return token

    def register(self, *parties: Party) -> None:
        for p in parties:
            self.stub.RegisterParty(
                coordinator_pb2.RegisterPartyRequest(
                    registration=p.registration(), enrollment_token=self.enroll(p.name)
                )
            )

    @contextlib.contextmanager
    def as_party(self, party: Party) -> Iterator[Any]:
        """Sign the calls made in this block (that carry no statement) as ``party``."""
        previous, self.acting = self.acting, party
        try:
            yield self.stub
        finally:
            self.acting = previous

    @contextlib.contextmanager
    def sent_by(self, party: Party) -> Iterator[Any]:
        """Sign every call made in this block as ``party``, whoever signed its statement."""
        previous, self.sender = self.sender, party
        try:
            yield self.stub
        finally:
            self.sender = previous

    def upload(self, dataset: SealedDataset) -> coordinator_pb2.Dataset:
        return self.stub.UploadDataset(upload_requests(dataset.manifest_bytes, dataset.ciphertext))

    def propose(self, terms: Envelope) -> coordinator_pb2.Job:
        return self.stub.ProposeJob(coordinator_pb2.ProposeJobRequest(terms=terms.to_bytes()))

    def approve(self, party: Party, job_id: str, terms: Envelope) -> coordinator_pb2.Job:
        return self.stub.ApproveJob(
            coordinator_pb2.ApproveJobRequest(
                job_id=job_id, approval=approval(party, job_id, terms)
            )
        )

    def job(self, job_id: str) -> coordinator_pb2.Job:
        return self.stub.GetJob(coordinator_pb2.GetJobRequest(job_id=job_id))

    def wait_idle(self, timeout: float = 10.0) -> None:
        assert self.running is not None
        assert self.running.handler.scheduler.wait_idle(timeout), "scheduler did not finish"


# --------------------------------------------------------------------------- fake enclave
