"""The fake enclave the coordinator tests run against: a real gRPC server on loopback with
RA-TLS credentials from a simulated platform, answering RunJob, Predict and the pool's
status and health calls from scripts a test writes (what the enclave would send back).

Used through :mod:`coordinator_testkit`, which re-exports these names.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_worker.identity import EnclaveIdentity, ratls_credentials
from libos.image import Measurement
from libos.runtime import SimRuntime
from libos.sim import SimPlatform
from protocols import grpc_status, tls
from protocols.documents import (
    Budget,
    JobTerms,
    OutputRecord,
    PredictionAnswer,
    PredictionQuery,
    ResultStatement,
)
from protocols.errors import DetenteError
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.policy import AttestationPolicy
from protocols.statements import Envelope
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc

MRENCLAVE = "ab" * 32
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
