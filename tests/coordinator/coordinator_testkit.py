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

import atexit
import contextlib
import dataclasses
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator import JobLimits, RunningCoordinator, issue_enrollment, start
from enclave_worker.identity import EnclaveIdentity, ratls_credentials
from libos.image import Measurement
from libos.runtime import SimRuntime
from libos.sim import SimPlatform
from protocols import grpc_status, hpke, tls
from protocols.documents import (
    Approval,
    Budget,
    DatasetManifest,
    JobTerms,
    ModelRetirement,
    OutputRecord,
    PredictionAnswer,
    PredictionQuery,
    Querier,
    Recipient,
    Registration,
    ResultStatement,
)
from protocols.errors import DetenteError
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.policy import AttestationPolicy
from protocols.request_auth import RequestSigner
from protocols.statements import Envelope
from protocols.stream import seal_stream
from protocols.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, enclave_pb2, enclave_pb2_grpc

MRENCLAVE = "ab" * 32
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


Script = Callable[["FakeEnclave", grpc.ServicerContext], Iterator[enclave_pb2.RunJobResponse]]


def default_script(
    fake: FakeEnclave, context: grpc.ServicerContext
) -> Iterator[enclave_pb2.RunJobResponse]:
    yield enclave_pb2.RunJobResponse(
        progress=enclave_pb2.Progress(kind="progress", text="round 1/5")
    )
    model = fake.model
    for i in range(0, len(model), 600_000):
        yield enclave_pb2.RunJobResponse(
            output=enclave_pb2.OutputChunk(name="model", data=model[i : i + 600_000])
        )
    yield enclave_pb2.RunJobResponse(output=enclave_pb2.OutputChunk(name="metrics", data=b"m" * 10))
    yield enclave_pb2.RunJobResponse(result_statement=fake_result_statement(fake.local.spec.terms))


FAKE_ENCLAVE_KEY = SigningKey.generate()


def fake_result_statement(
    terms: bytes,
    outputs: tuple[str, ...] = ("model", "metrics"),
    sealed_model: str | None = None,
) -> bytes:
    """A result statement signed by the FAKE enclave's key, wrapping each output to every
    recipient of ``terms`` (the wrapped keys are placeholders), naming ``sealed_model``."""
    terms_envelope = Envelope.from_bytes(terms)
    terms = JobTerms.verify(terms_envelope)
    wrapped = {r.signing_key.hex: b"placeholder" for r in terms.recipients}
    statement = ResultStatement(
        job_id=terms.job_id,
        terms_digest=terms_envelope.digest,
        mrenclave=MRENCLAVE,
        outputs=[OutputRecord(name, "00" * 32, dict(wrapped)) for name in outputs],
        summary={},
        sealed_model=sealed_model,
    )
    return statement.sign(FAKE_ENCLAVE_KEY).to_bytes()


def sealing_script(
    fake: FakeEnclave, context: grpc.ServicerContext
) -> Iterator[enclave_pb2.RunJobResponse]:
    """What an enclave that seals the model streams: metrics, and a statement naming the
    model (``fake.sealed_as`` if set, else the job id)."""
    terms = fake.local.spec.terms
    job_id = JobTerms.verify(Envelope.from_bytes(terms)).job_id
    yield enclave_pb2.RunJobResponse(output=enclave_pb2.OutputChunk(name="metrics", data=b"m" * 10))
    yield enclave_pb2.RunJobResponse(
        result_statement=fake_result_statement(terms, ("metrics",), fake.sealed_as or job_id)
    )


PredictScript = Callable[
    ["FakeEnclave", PredictionQuery, Envelope, grpc.ServicerContext],
    Iterator[enclave_pb2.PredictResponse],
]


def answering_script(
    fake: FakeEnclave, query: PredictionQuery, envelope: Envelope, context: grpc.ServicerContext
) -> Iterator[enclave_pb2.PredictResponse]:
    """Answer every query: ``fake.answer`` in pieces, then an answer signed by the FAKE key."""
    for i in range(0, len(fake.answer), 700_000):
        yield enclave_pb2.PredictResponse(chunk=fake.answer[i : i + 700_000])
    answer = PredictionAnswer(
        model_id=query.model_id,
        query_id=query.query_id,
        query_digest=envelope.digest,
        rows=query.rows,
        columns=["prediction"],
        ciphertext_sha256=hashlib.sha256(fake.answer).hexdigest(),
        wrapped_key=b"wrapped-to-the-querier",
        remaining=Budget(1000 - query.rows, None),
    )
    yield enclave_pb2.PredictResponse(answer=answer.sign(FAKE_ENCLAVE_KEY).to_bytes())


def refusing_script(error: DetenteError) -> PredictScript:
    """Refuse every query with ``error``, as a worker does (catalogue code and trailer)."""

    def script(
        fake: FakeEnclave, query: PredictionQuery, envelope: Envelope, context: Any
    ) -> Iterator[enclave_pb2.PredictResponse]:
        grpc_status.abort(context, error)
        yield from ()  # pragma: no cover

    return script


@functools.cache
def _sim_platform() -> tuple[SimPlatform, Path]:
    folder = Path(tempfile.mkdtemp(prefix="detente-coordinator-tests-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return SimPlatform(folder / "platform"), folder


# One enclave identity per measurement, shared by the FAKE workers of that measurement
# (as workers of one pool share theirs) and kept across a FAKE worker's restart.
_IDENTITIES: dict[str, EnclaveIdentity] = {}


def fake_enclave_credentials(
    mrenclave: str = MRENCLAVE, own_identity: bool = False
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh RA-TLS key and its certificate for the enclave identity of ``mrenclave``
    made in this process (FAKE: no image, no launcher) on a real SIMULATION platform;
    with ``own_identity``, a new identity of its own (a worker that did not join)."""
    platform, folder = _sim_platform()
    measurement = Measurement(mrenclave, "5a" * 32, "sim", False, 1, 1, 0)
    runtime = SimRuntime(measurement, folder / f"instance-{mrenclave[:8]}", platform)
    if own_identity:
        identity = EnclaveIdentity(
            SigningKey.generate(), HpkePrivateKey.generate(), "sim", mrenclave
        )
    else:
        identity = _IDENTITIES.setdefault(
            mrenclave,
            EnclaveIdentity(SigningKey.generate(), HpkePrivateKey.generate(), "sim", mrenclave),
        )
    return ratls_credentials(identity, runtime)


def fake_enclave_policy(mrenclave: str = MRENCLAVE) -> AttestationPolicy:
    """A policy that trusts the FAKE enclave's SIMULATION evidence for ``mrenclave``."""
    return AttestationPolicy(
        mrenclave=(mrenclave,),
        allow_simulation=True,
        simulation_roots=(_sim_platform()[0].root_fingerprint,),
    )


class FakeEnclave(enclave_pb2_grpc.EnclaveServicer):
    """FAKE enclave: records what it is sent and answers from a script.

    A call waits for ``release`` (at most 10 s) before its script runs; a call
    the coordinator cancels while it waits sets ``cancelled`` and ends.
    """

    def __init__(self) -> None:
        self.specs: list[enclave_pb2.JobSpec] = []
        self.chunks: list[tuple[str, bytes]] = []
        self.nonces: list[bytes] = []
        self.model = os.urandom(1_500_000)
        self.script: Script = default_script
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.cancelled = threading.Event()
        # Sealed models: what the enclave is sent, and how it answers.
        self.sealed_as: str | None = None
        self.queries: list[bytes] = []
        self.query_rows: list[bytes] = []
        self.answer = os.urandom(1_500_000)
        self.predict_script: PredictScript = answering_script
        self.retirements: list[enclave_pb2.RetireModelRequest] = []
        self.retire_error: DetenteError | None = None
        # Withdrawals: what the enclave is sent, and an error to refuse them with.
        self.withdrawals: list[enclave_pb2.WithdrawDatasetRequest] = []
        self.withdraw_error: DetenteError | None = None
        # The worker pool's view (GetStatus, health): job slots, running jobs, draining.
        self.slots = 1
        self.running: list[str] = []
        self.draining = False
        self.refuse_when_full = True  # answer WorkerBusy past ``slots``, as a real worker does
        self.accepts: int | None = None  # jobs it really takes at once, if not ``slots``
        self.local = threading.local()  # the spec of the call this thread serves
        self.health: Any = None  # its gRPC health servicer, once served
        self._lock = threading.Lock()

    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> enclave_pb2.WorkerStatus:
        with self._lock:
            return enclave_pb2.WorkerStatus(
                slots=self.slots,
                busy=len(self.running),
                job_ids=list(self.running),
                backend="sim",
                mrenclave=MRENCLAVE,
                draining=self.draining,
            )

    def GetEvidence(self, request: Any, context: grpc.ServicerContext) -> enclave_pb2.Evidence:
        self.nonces.append(request.nonce)
        return enclave_pb2.Evidence(
            identity=b"identity-" + request.nonce, quote=b"Q" * 100, backend="sim"
        )

    def RunJob(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        job_id = ""
        for request in request_iterator:
            if request.WhichOneof("part") == "spec":
                job_id = JobTerms.verify(Envelope.from_bytes(request.spec.terms)).job_id
                with self._lock:
                    capacity = self.slots if self.accepts is None else self.accepts
                    if self.refuse_when_full and len(self.running) >= capacity:
                        context.set_trailing_metadata(((grpc_status.ERROR_TRAILER, "WorkerBusy"),))
                        context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"every job slot of this worker is taken ({self.slots})",
                        )
                    self.running.append(job_id)
                self.specs.append(request.spec)
                self.local.spec = request.spec
            else:
                self.chunks.append((request.chunk.dataset_id, request.chunk.data))
        try:
            self.started.set()
            deadline = time.monotonic() + 10
            while not self.release.wait(0.05) and time.monotonic() < deadline:
                if not context.is_active():
                    self.cancelled.set()
                    return
            yield from self.script(self, context)
        finally:
            with self._lock:
                if job_id in self.running:
                    self.running.remove(job_id)

    def Predict(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        first = next(request_iterator)
        assert first.WhichOneof("part") == "query"
        self.queries.append(first.query)
        self.query_rows.append(b"".join(r.chunk for r in request_iterator))
        envelope = Envelope.from_bytes(first.query)
        query = PredictionQuery.verify(envelope)
        yield from self.predict_script(self, query, envelope, context)

    def RetireModel(
        self, request: enclave_pb2.RetireModelRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.RetireModelResponse:
        self.retirements.append(request)
        if self.retire_error is not None:
            grpc_status.abort(context, self.retire_error)
        return enclave_pb2.RetireModelResponse()

    def WithdrawDataset(
        self, request: enclave_pb2.WithdrawDatasetRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.WithdrawDatasetResponse:
        self.withdrawals.append(request)
        if self.withdraw_error is not None:
            grpc_status.abort(context, self.withdraw_error)
        return enclave_pb2.WithdrawDatasetResponse(checkpoints_removed=1)

    def received(self, dataset_id: str) -> bytes:
        return b"".join(d for i, d in self.chunks if i == dataset_id)


def fake_server(
    fake: FakeEnclave,
    address: str = "127.0.0.1:0",
    mrenclave: str = MRENCLAVE,
    own_identity: bool = False,
) -> tuple[grpc.Server, str]:
    """Serve ``fake`` at ``address`` under a new RA-TLS identity claiming ``mrenclave``,
    with the standard gRPC health service saying SERVING, as a real worker's; started."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from coordinator.enclave_client import HEALTH_SERVICE

    server = grpc.server(futures.ThreadPoolExecutor(8), options=CHANNEL_OPTIONS)
    enclave_pb2_grpc.add_EnclaveServicer_to_server(fake, server)
    checks = health.HealthServicer()
    for service in ("", HEALTH_SERVICE):
        checks.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    fake.health = checks
    bound = server.add_secure_port(
        address, tls.server_credentials(*fake_enclave_credentials(mrenclave, own_identity))
    )
    assert bound, f"cannot listen on {address}"
    server.start()
    return server, f"{address.rsplit(':', 1)[0]}:{bound}"


@contextlib.contextmanager
def serve_fake_enclave(
    fake: FakeEnclave | None = None, mrenclave: str = MRENCLAVE, own_identity: bool = False
) -> Iterator[tuple[FakeEnclave, str, grpc.Server]]:
    """A FAKE enclave worker on a free loopback port (:func:`fake_server`); stopped on exit."""
    fake = fake or FakeEnclave()
    server, address = fake_server(fake, mrenclave=mrenclave, own_identity=own_identity)
    try:
        yield fake, address, server
    finally:
        fake.release.set()
        server.stop(0).wait()
