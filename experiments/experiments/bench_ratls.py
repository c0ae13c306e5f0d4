"""Benchmark: an RA-TLS channel setup against a plain pinned-TLS one, to the same enclave.

    .venv/bin/python -m experiments.bench_ratls [--repeat 50] [--workdir DIR]

Builds the enclave image and starts the real worker (SIMULATION backend) as
its own process, then measures, each on a fresh connection:

- RA-TLS (what the coordinator does before every enclave call,
  ``coordinator.enclave_client.EnclaveClient``): read the server certificate
  over a bare TLS handshake, verify its evidence under the attestation policy,
  open a gRPC channel pinned to that certificate, first RPC (GetEvidence);
- plain TLS: open a gRPC channel pinned to the same, already known
  certificate, first RPC (GetEvidence).

It prints the median and mean of each, the RA-TLS parts (certificate fetch,
evidence verification) and the ratio of the medians. Quotes are SIMULATION
quotes: a hardware quote's verification adds its collateral checks.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from coordinator.enclave_client import EnclaveClient
from detente.cluster import cluster, start_enclave
from protocols import ratls, tls
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.policy import AttestationPolicy
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc

WARMUP = 3


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _ms(values: list[float]) -> str:
    return (
        f"median {statistics.median(values) * 1e3:7.2f} ms, "
        f"mean {statistics.fmean(values) * 1e3:7.2f} ms"
    )


def measure(address: str, policy: AttestationPolicy, repeat: int) -> dict[str, list[float]]:
    client = EnclaveClient(address, policy)
    der, _ = client.verify()
    certificate = tls.load_certificate(der, "enclave certificate")

    def ra_tls() -> None:
        client.get_evidence(secrets.token_bytes(32))

    def plain_tls() -> None:
        with tls.pinned_channel(address, certificate, CHANNEL_OPTIONS) as channel:
            enclave_pb2_grpc.EnclaveStub(channel).GetEvidence(
                enclave_pb2.EvidenceRequest(nonce=secrets.token_bytes(32)), timeout=30
            )

    results: dict[str, list[float]] = {"ra-tls": [], "tls": [], "fetch": [], "verify": []}
    for i in range(WARMUP + repeat):
        # Alternate the order so drift in the machine's load hits both alike.
        pair = [("ra-tls", ra_tls), ("tls", plain_tls)]
        for name, fn in pair if i % 2 else reversed(pair):
            elapsed = _timed(fn)
            if i >= WARMUP:
                results[name].append(elapsed)
        start = time.perf_counter()
        presented = tls.peer_certificate(address)
        fetch = time.perf_counter() - start
        start = time.perf_counter()
        ratls.verify_ratls_certificate(presented, policy)
        verify = time.perf_counter() - start
        if i >= WARMUP:
            results["fetch"].append(fetch)
            results["verify"].append(verify)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_ratls", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="measured connections of each kind")
    parser.add_argument("--workdir", type=Path, help="keep the enclave's files here")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="detente-bench-ratls-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with cluster(root) as c:
            port, _, policy_path = start_enclave(c, root)
            policy = AttestationPolicy.load(policy_path)
            results = measure(f"127.0.0.1:{port}", policy, args.repeat)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print("SIMULATION enclave (real worker process, loopback); fresh connection each time")
    print(f"connections measured: {args.repeat} of each kind (after {WARMUP} warm-up)")
    print(f"plain TLS   (pinned channel + first RPC):          {_ms(results['tls'])}")
    print(f"RA-TLS      (fetch + verify + channel + first RPC): {_ms(results['ra-tls'])}")
    print(f"  of which certificate fetch (bare TLS handshake):  {_ms(results['fetch'])}")
    print(f"  of which evidence verification:                   {_ms(results['verify'])}")
    ratio = statistics.median(results["ra-tls"]) / statistics.median(results["tls"])
    print(f"ratio RA-TLS / plain TLS (medians): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
