"""The party's channel to the (untrusted) coordinator.

Nothing received here is trusted: evidence, manifests, terms and result
statements are verified by the caller before use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from protocols.errors import DetenteError
from protocols.status import CHANNEL_OPTIONS
from protocols.wire.v1 import coordinator_pb2 as pb
from protocols.wire.v1 import coordinator_pb2_grpc

T = TypeVar("T")
UPLOAD_CHUNK = 1 << 20


class CoordinatorError(DetenteError):
    """The coordinator refused a request or could not be reached."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class Coordinator:
    def __init__(self, address: str, timeout: float = 60.0) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, timeout=self._timeout, **kwargs)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CoordinatorError(
                    f"cannot reach the coordinator at {self.address}: is it running?", code
                ) from None
            raise CoordinatorError(f"coordinator: {exc.details()}", code) from None

    def register(self, registration: bytes) -> Any:
        return self._call(
            self._stub.RegisterParty, pb.RegisterPartyRequest(registration=registration)
        )

    def parties(self) -> list[Any]:
        return list(self._call(self._stub.ListParties, pb.ListPartiesRequest()).parties)

    def evidence(self, nonce: bytes) -> Any:
        return self._call(self._stub.GetEvidence, pb.GetEvidenceRequest(nonce=nonce))

    def upload(self, manifest: bytes, ciphertext: bytes) -> Any:
        def messages() -> Iterator[Any]:
            yield pb.UploadDatasetRequest(manifest=manifest)
            for start in range(0, len(ciphertext), UPLOAD_CHUNK):
                yield pb.UploadDatasetRequest(ciphertext=ciphertext[start : start + UPLOAD_CHUNK])

        return self._call(self._stub.UploadDataset, messages())

    def datasets(self) -> list[Any]:
        return list(self._call(self._stub.ListDatasets, pb.ListDatasetsRequest()).datasets)

    def propose(self, terms: bytes) -> Any:
        return self._call(self._stub.ProposeJob, pb.ProposeJobRequest(terms=terms))

    def approve(self, job_id: str, approval: bytes) -> Any:
        return self._call(
            self._stub.ApproveJob, pb.ApproveJobRequest(job_id=job_id, approval=approval)
        )

    def job(self, job_id: str) -> Any:
        return self._call(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def jobs(self) -> list[Any]:
        return list(self._call(self._stub.ListJobs, pb.ListJobsRequest()).jobs)

    def fetch_output(self, job_id: str, name: str) -> bytes:
        def read() -> bytes:
            chunks = self._stub.FetchOutput(
                pb.FetchOutputRequest(job_id=job_id, name=name), timeout=self._timeout
            )
            return b"".join(c.data for c in chunks)

        return self._call(lambda timeout: read())
