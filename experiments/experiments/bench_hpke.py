"""Benchmark: HPKE wrap and unwrap of a 32-byte data key, for each suite.

    .venv/bin/python -m experiments.bench_hpke [--n 2000] [--repeat 5] [--json]

For DHKEM(X25519) and MLKEM768-X25519 (protocols/SPEC.md §4) it times
``hpke.wrap_key`` (encapsulation + AES-256-GCM seal) and ``hpke.unwrap_key``
(decapsulation + open) with the info string of a real data key, and reports
the per-operation time of the fastest of ``--repeat`` batches of ``--n``
operations (the least disturbed by other load; the JSON also has the median),
plus the sizes a party pays for in manifests and identity documents.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from protocols import hpke
from protocols.keys import HpkePrivateKey, Kem


def _per_op_us(fn: Callable[[], object], n: int, repeat: int) -> tuple[float, float]:
    """(best, median) microseconds per call over ``repeat`` batches of ``n`` calls."""
    batches = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter() - start) / n * 1e6)
    return round(min(batches), 1), round(statistics.median(batches), 1)


def measure(kem: Kem, n: int, repeat: int) -> dict[str, Any]:
    private = HpkePrivateKey.generate(kem)
    public = private.public_key
    key = os.urandom(32)
    info = hpke.data_key_info("ds-bench", public)
    wrapped = hpke.wrap_key(key, public, info)
    assert hpke.unwrap_key(wrapped, private, info) == key
    wrap = _per_op_us(lambda: hpke.wrap_key(key, public, info), n, repeat)
    unwrap = _per_op_us(lambda: hpke.unwrap_key(wrapped, private, info), n, repeat)
    keygen = _per_op_us(lambda: HpkePrivateKey.generate(kem), max(1, n // 10), repeat)
    return {
        "kem": kem.label,
        "wrap_us": wrap[0],
        "unwrap_us": unwrap[0],
        "keygen_us": keygen[0],
        "wrap_us_median": wrap[1],
        "unwrap_us_median": unwrap[1],
        "keygen_us_median": keygen[1],
        "wrapped_bytes": len(wrapped),
        "public_key_bytes": len(public.raw),
        "private_key_bytes": len(private.private_raw()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="operations per batch")
    parser.add_argument("--repeat", type=int, default=5, help="batches; the fastest is reported")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    rows = [measure(kem, args.n, args.repeat) for kem in Kem]
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return
    print(f"HPKE key wrapping, best of {args.repeat} batches of {args.n} (µs per operation)")
    print(
        f"{'suite':<16}{'wrap':>9}{'unwrap':>9}{'keygen':>9}{'wrapped B':>11}{'pk B':>7}{'sk B':>7}"
    )
    for r in rows:
        print(
            f"{r['kem']:<16}{r['wrap_us']:>9}{r['unwrap_us']:>9}{r['keygen_us']:>9}"
            f"{r['wrapped_bytes']:>11}{r['public_key_bytes']:>7}{r['private_key_bytes']:>7}"
        )


if __name__ == "__main__":
    main()
