"""Benchmark: verification time per quote, simulated and real.

    .venv/bin/python -m experiments.bench_attestation [--repeat 200] [--vectors DIR]

Cases, each verified ``--repeat`` times after one warm-up (median, 95th
percentile and mean per quote, in milliseconds):

- a SIMULATION SGX quote from a real libos sim platform: chain to the pinned
  simulation root, QE report binding, QE and ISV report signatures;
- the same quote as evidence (``verify_evidence``: identity document, every
  policy rule, REPORTDATA binding);
- the real SGX quote of tests/vectors/sgx-dcap/: the same checks to the
  pinned Intel SGX Root CA, then with its collateral (TCB info, QE identity,
  CRLs checked by dcap-qvl) inside the collateral's validity window;
- the real TDX v4 quote with its collateral;
- loading and validating a collateral JSON document (done once per fetch).

Quote generation and RA-TLS handshakes are not measured here.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from libos.sim import SimPlatform
from protocols import quote_layout, quote_verify, statements
from protocols.attestation import Evidence, report_data_for, verify_evidence
from protocols.collateral import Collateral
from protocols.documents import IdentityDocument
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.policy import AttestationPolicy

DEFAULT_VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors" / "sgx-dcap"
# Inside both samples' collateral windows (tests/vectors/README.md).
IN_WINDOW = datetime.fromtimestamp(1751000000, UTC)


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up: imports, first-use caches
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def simulated_evidence(directory: Path) -> tuple[Evidence, bytes, AttestationPolicy, SimPlatform]:
    platform = SimPlatform(directory)
    key = SigningKey.generate()
    nonce = bytes(range(32))
    identity = IdentityDocument(
        backend="sim",
        hpke_key=HpkePrivateKey.generate().public_key,
        signing_key=key.verify_key,
        tls_public_key_sha256="00" * 32,
    ).to_dict()
    envelope = statements.sign(statements.IDENTITY, identity, key)
    mrenclave = hashlib.sha256(b"bench enclave").digest()
    report = quote_layout.ReportBody(
        cpu_svn=bytes(16),
        misc_select=0,
        attributes=(0x05).to_bytes(8, "little") + (0x03).to_bytes(8, "little"),
        mr_enclave=mrenclave,
        mr_signer=hashlib.sha256(b"bench signer").digest(),
        isv_prod_id=1,
        isv_svn=1,
        report_data=report_data_for(envelope.payload, nonce),
    )
    evidence = Evidence(envelope.to_bytes(), platform.quote(report), "sim")
    policy = AttestationPolicy.from_dict(
        {
            "mrenclave": [mrenclave.hex()],
            "allow_simulation": True,
            "simulation_roots": [platform.root_fingerprint],
        }
    )
    return evidence, nonce, policy, platform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS)
    args = parser.parse_args()

    intel = [quote_verify.intel_sgx_root()]
    sgx = (args.vectors / "sgx_quote").read_bytes()
    sgx_text = (args.vectors / "sgx_quote_collateral.json").read_text()
    sgx_collateral = Collateral.from_json(sgx_text)
    tdx = (args.vectors / "tdx_quote").read_bytes()
    tdx_collateral = Collateral.from_json((args.vectors / "tdx_quote_collateral.json").read_text())

    with tempfile.TemporaryDirectory() as tmp:
        evidence, nonce, policy, platform = simulated_evidence(Path(tmp) / "platform")
        sim_root = [platform.root_certificate]
        cases: list[tuple[str, int, Callable[[], object]]] = [
            (
                "SIMULATION SGX quote: chain + signatures",
                len(evidence.quote),
                lambda: quote_verify.verify_quote(evidence.quote, sim_root),
            ),
            (
                "SIMULATION evidence: verify_evidence (all rules)",
                len(evidence.quote),
                lambda: verify_evidence(evidence, nonce, policy),
            ),
            (
                "real SGX quote v3: chain + signatures",
                len(sgx),
                lambda: quote_verify.verify_quote(sgx, intel, IN_WINDOW),
            ),
            (
                "real SGX quote v3 + collateral (dcap-qvl)",
                len(sgx),
                lambda: quote_verify.verify_quote(sgx, intel, IN_WINDOW, collateral=sgx_collateral),
            ),
            (
                "real TDX quote v4 + collateral (dcap-qvl)",
                len(tdx),
                lambda: quote_verify.verify_quote(tdx, intel, IN_WINDOW, collateral=tdx_collateral),
            ),
            (
                "load + validate SGX collateral JSON",
                len(sgx_text),
                lambda: Collateral.from_json(sgx_text),
            ),
        ]
        print(f"verification time per quote, {args.repeat} runs each (ms)")
        print(f"{'case':<52} {'bytes':>6} {'median':>8} {'p95':>8} {'mean':>8}")
        for name, size, fn in cases:
            samples = sorted(timed(fn, args.repeat))
            p95 = samples[min(len(samples) - 1, int(0.95 * len(samples)))]
            print(
                f"{name:<52} {size:>6} {statistics.median(samples):>8.3f} {p95:>8.3f} "
                f"{statistics.fmean(samples):>8.3f}"
            )


if __name__ == "__main__":
    main()
