"""Benchmark: upload throughput through a real coordinator against raw TLS gRPC.

    .venv/bin/python -m experiments.bench_upload [--mib 256] [--repeat 3] [--json]

Starts a coordinator process (`detente coordinator serve`: TLS, signed
requests, blob store with fsync) on loopback, registers a party with an
enrollment token, and uploads ``--mib`` MiB of ciphertext under a signed
manifest through the coordinator's UploadDataset stream, in the pieces a
party sends (protocols.stream.CHUNK_SIZE). In the same run it streams the
same pieces over TLS gRPC to a trivial server in another process that only
counts them: the most any relay over this transport could do on this
machine. Prints MB/s (10^6 bytes per second) of each, best of ``--repeat``,
and their ratio.

The ciphertext is random bytes: the coordinator never reads inside a data
set, it checks only the manifest's signature and the content's size and
SHA-256 (docs/protocol.md), so no enclave is needed here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

SINK_METHOD = "/detente.bench.Sink/Put"
TIMEOUT = 600.0


@dataclass(frozen=True)
class UploadFigures:
    mebibytes: int
    coordinator_mb_s: float
    raw_mb_s: float
    coordinator_peak_rss_mib: float

    @property
    def ratio(self) -> float:
        return self.coordinator_mb_s / self.raw_mb_s


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set of process ``pid`` so far (Linux VmHWM), 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _pieces(data: bytes) -> list[bytes]:
    from protocols.stream import CHUNK_SIZE

    return [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]


# --------------------------------------------------------------------------- raw TLS gRPC


def _serve_sink(ready: Any, stop: Any) -> None:
    """A TLS gRPC server whose one method counts the bytes streamed to it (another process)."""
    from concurrent.futures import ThreadPoolExecutor

    from protocols import tls
    from protocols.grpc_status import CHANNEL_OPTIONS

    def put(requests: Iterator[bytes], context: Any) -> bytes:
        return str(sum(len(r) for r in requests)).encode()

    key = tls.generate_key()
    cert = tls.self_signed_certificate(key, "detente-bench-sink")
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=CHANNEL_OPTIONS)
    handler = grpc.stream_unary_rpc_method_handler(put)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("detente.bench.Sink", {"Put": handler})]
    )
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(key, cert))
    server.start()
    ready.send((port, tls.certificate_pem(cert)))
    stop.wait(TIMEOUT * 4)
    server.stop(grace=1).wait()


def raw_seconds(
    pieces: Sequence[bytes] | Callable[[], Iterator[bytes]], repeat: int, total: int | None = None
) -> float:
    """Best time to stream ``pieces`` over loopback TLS gRPC to a server that only counts them.

    ``pieces`` is a list, or a function giving them afresh for each run (with
    ``total``, their size), so a large stream need not be held in memory.
    """
    from protocols import tls
    from protocols.grpc_status import CHANNEL_OPTIONS

    if callable(pieces):
        make = pieces
        if total is None:
            raise ValueError("give the total size of pieces made by a function")
    else:
        listed = pieces
        total = sum(len(p) for p in listed)

        def make() -> Iterator[bytes]:
            return iter(listed)

    ctx = multiprocessing.get_context("spawn")
    ready_recv, ready_send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    process = ctx.Process(target=_serve_sink, args=(ready_send, stop), daemon=True)
    process.start()
    try:
        if not ready_recv.poll(60):
            raise RuntimeError("the raw TLS gRPC sink did not start within 60 s")
        port, pem = ready_recv.recv()
        cert = tls.load_certificate(pem, "sink certificate")
        best = float("inf")
        with tls.pinned_channel(f"127.0.0.1:{port}", cert, CHANNEL_OPTIONS) as channel:
            put = channel.stream_unary(SINK_METHOD, None, None)  # bytes as they are
            for _ in range(repeat):
                started = time.perf_counter()
                counted = int(put(make(), timeout=TIMEOUT))
                best = min(best, time.perf_counter() - started)
                if counted != total:
                    raise RuntimeError(f"the sink counted {counted} bytes, not {total}")
        return best
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.kill()


# --------------------------------------------------------------------------- the coordinator


def _registered_party(c: Any, coord_home: Path, address: str) -> Any:
    """A party's signing key, enrolled by the operator and registered at the coordinator."""
    from party_client.remote import Coordinator
    from protocols import tls
    from protocols.documents import Registration
    from protocols.keys import HpkePrivateKey, SigningKey

    token = json.loads(
        c.run(["coordinator", "enroll", "--home", str(coord_home), "--name", "bench", "--json"])
    )["token"]
    key = SigningKey.generate()
    registration = Registration("bench", key.verify_key, HpkePrivateKey.generate().public_key)
    cert = tls.load_certificate((coord_home / "coordinator-tls.crt").read_bytes(), "certificate")
    with Coordinator(address, cert, key) as remote:
        remote.register(registration.sign(key).to_bytes(), token)
    return key, cert


def _manifest(key: Any, dataset_id: str, data: bytes) -> bytes:
    """A signed manifest for ``data``, sealed to a made-up enclave (the coordinator never
    opens a data set)."""
    from protocols import hpke
    from protocols.documents import DatasetManifest
    from protocols.keys import HpkePrivateKey

    enclave_key = HpkePrivateKey.generate().public_key
    return (
        DatasetManifest(
            dataset_id=dataset_id,
            name="",
            owner_key=key.verify_key,
            schema_sha256="00" * 32,
            row_count=1,
            ciphertext_sha256=hashlib.sha256(data).hexdigest(),
            ciphertext_size=len(data),
            wrapped_key=hpke.wrap_key(
                os.urandom(32), enclave_key, hpke.data_key_info(dataset_id, enclave_key)
            ),
            sealed_to_mrenclave="ab" * 32,
            sealed_to_hpke_key=enclave_key,
        )
        .sign(key)
        .to_bytes()
    )


def coordinator_upload_seconds(
    address: str, cert: Any, key: Any, data: bytes, pieces: Sequence[bytes], repeat: int
) -> float:
    """Best time to upload ``data`` (as ``pieces``) through the coordinator's signed stream."""
    from protocols import tls
    from protocols.grpc_status import CHANNEL_OPTIONS
    from protocols.request_auth import RequestSigner
    from protocols.wire.v1 import coordinator_pb2 as pb
    from protocols.wire.v1 import coordinator_pb2_grpc

    best = float("inf")
    with tls.pinned_channel(address, cert, CHANNEL_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(
            grpc.intercept_channel(channel, RequestSigner(key))
        )
        for n in range(repeat):
            manifest = _manifest(key, f"bench-{n}-{os.urandom(4).hex()}", data)

            def messages(manifest: bytes = manifest) -> Iterator[Any]:
                yield pb.UploadDatasetRequest(manifest=manifest)
                for piece in pieces:
                    yield pb.UploadDatasetRequest(ciphertext=piece)

            started = time.perf_counter()
            reply = stub.UploadDataset(messages(), timeout=TIMEOUT)
            best = min(best, time.perf_counter() - started)
            if reply.size != len(data):
                raise RuntimeError(f"the coordinator stored {reply.size} bytes, not {len(data)}")
    return best


def measure(mebibytes: int, repeat: int, workdir: Path) -> UploadFigures:
    from detente.cluster import cluster

    data = os.urandom(mebibytes << 20)
    pieces = _pieces(data)
    with cluster(workdir) as c:
        coord = workdir / "coordinator"
        port_file = coord / "port"
        serve = ["coordinator", "serve", "--home", str(coord), "--port-file", str(port_file)]
        port = c.spawn("coordinator", serve, port_file, coord)
        address = f"127.0.0.1:{port}"
        key, cert = _registered_party(c, coord, address)
        through = coordinator_upload_seconds(address, cert, key, data, pieces, repeat)
        peak = peak_rss_bytes(c.processes[0].popen.pid)
    raw = raw_seconds(pieces, repeat)
    return UploadFigures(mebibytes, len(data) / through / 1e6, len(data) / raw / 1e6, peak / 2**20)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of ciphertext per upload")
    parser.add_argument("--repeat", type=int, default=3, help="uploads of each kind; best kept")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="detente-bench-upload-") as tmp:
        figures = measure(args.mib, args.repeat, Path(tmp))
    if args.json:
        print(json.dumps({**asdict(figures), "ratio": figures.ratio}))
        return
    print(f"{figures.mebibytes} MiB of ciphertext, best of {args.repeat}")
    print(f"raw TLS gRPC stream to a counting server: {figures.raw_mb_s:8.1f} MB/s")
    print(f"upload through the coordinator:           {figures.coordinator_mb_s:8.1f} MB/s")
    print(f"ratio coordinator / raw:                  {figures.ratio:8.3f}")
    print(f"coordinator peak RSS:                     {figures.coordinator_peak_rss_mib:8.1f} MiB")


if __name__ == "__main__":
    main()
