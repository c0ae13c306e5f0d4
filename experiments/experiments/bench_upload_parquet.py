"""Benchmark: a party's upload of a Parquet file against raw gRPC streaming of as many bytes.

    .venv/bin/python -m experiments.bench_upload_parquet [--mib 1024] [--features 31]
        [--workdir DIR] [--json]

Generates a Parquet file of about ``--mib`` MiB (float32 feature columns of a
fixed seed, an int64 id and a 0/1 label) in a temporary folder, starts a
coordinator and a SIMULATION enclave worker as processes (detente.cluster),
initialises and attests a party, and uploads the file through the party
library (:func:`party_client.upload`) in a child process of its own, which
reports when sealing ended and sending began. In the same run it streams as
many bytes as the sealed data set has (its ciphertext size) over loopback
TLS gRPC to a server that only counts them (the raw baseline of
:mod:`experiments.bench_upload`). Prints the throughput of each (MB/s,
10^6 bytes per second), the ratio of the upload to the raw stream — whole
(reading, checking, sealing, sending, the coordinator's check) and of its
sending phase alone — and the upload process's peak resident memory
(``ru_maxrss`` of the child).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIB = 1 << 20
LABEL = "label"
ID = "id"
ROW_GROUP = 1 << 18


@dataclass(frozen=True)
class ParquetUploadFigures:
    parquet_bytes: int
    rows: int
    ciphertext_bytes: int
    seal_seconds: float  # reading, checking and sealing into the spool
    send_seconds: float  # sending the spool and the coordinator's check
    raw_seconds: float  # the same number of bytes over raw TLS gRPC
    peak_rss_bytes: int  # the upload process
    party_cpu_seconds: float = 0.0  # CPU time of the upload process (user + system)
    coordinator_cpu_seconds: float = 0.0  # CPU time the coordinator spent meanwhile

    @property
    def upload_mb_s(self) -> float:
        return self.ciphertext_bytes / (self.seal_seconds + self.send_seconds) / 1e6

    @property
    def send_mb_s(self) -> float:
        return self.ciphertext_bytes / self.send_seconds / 1e6

    @property
    def raw_mb_s(self) -> float:
        return self.ciphertext_bytes / self.raw_seconds / 1e6

    @property
    def ratio(self) -> float:
        return self.upload_mb_s / self.raw_mb_s

    @property
    def send_ratio(self) -> float:
        return self.send_mb_s / self.raw_mb_s


def generate(path: Path, mebibytes: float, features: int = 31, seed: int = 0) -> int:
    """Write a Parquet file of about ``mebibytes`` MiB (row group by row group, so the
    generator never holds the table); its row count."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_bytes = 4 * features + 8 + 1
    rows = max(1, int(mebibytes * MIB / row_bytes))
    rng = np.random.default_rng(seed)
    fields = [(f"f{f:02d}", pa.float32()) for f in range(features)]
    schema = pa.schema([(ID, pa.int64()), *fields, (LABEL, pa.int8())])
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            columns: list[Any] = [np.arange(start, start + n, dtype=np.int64)]
            columns += [rng.standard_normal(n, dtype=np.float32) for _ in range(features)]
            columns.append(rng.integers(0, 2, size=n, dtype=np.int8))
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    return rows


# The upload, in a child process of its own (its peak memory is the upload's alone).
_CHILD = """
import json, sys, time
from pathlib import Path
import party_client as party
from party_client.datasets import SENDING
home = party.PartyHome.default()
marks = {"start": time.perf_counter()}
def progress(p):
    if p.phase == SENDING and "sending" not in marks:
        marks["sending"] = time.perf_counter()
done = party.upload(home, home.policy(), Path(sys.argv[1]), sys.argv[2], sys.argv[3],
                    progress=progress)
end = time.perf_counter()
sending = marks.get("sending", end)
print(json.dumps({"size": done.ciphertext_size, "rows": done.rows,
                  "seal": sending - marks["start"], "send": end - sending}))
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc), 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upload_in_child(home: Path, table: Path, workdir: Path) -> tuple[dict[str, Any], int, float]:
    """Upload ``table`` as the party in ``home`` from a child process: its report, its
    peak resident memory in bytes (``ru_maxrss``, KiB on Linux) and its CPU seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETENTE_")}
    env.update({"DETENTE_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    out = workdir / "upload.json"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(table), LABEL, ID],
            env=env,
            stdout=sink,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        errors = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"upload failed ({process.returncode}):\n{errors.decode()[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return json.loads(out.read_text().strip().splitlines()[-1]), usage.ru_maxrss * 1024, cpu


def _repeated(size: int) -> Iterator[bytes]:
    """``size`` bytes in CHUNK_SIZE pieces (the transport does not look at them)."""
    from protocols.stream import CHUNK_SIZE

    block = os.urandom(CHUNK_SIZE)
    for start in range(0, size, CHUNK_SIZE):
        yield block[: min(CHUNK_SIZE, size - start)]


def measure(mebibytes: float, features: int, workdir: Path) -> ParquetUploadFigures:
    from detente.cluster import cluster, start_roles
    from experiments.bench_upload import raw_seconds

    table = workdir / "table.parquet"
    rows = generate(table, mebibytes, features)
    with cluster(workdir) as c:
        roles = start_roles(c, workdir)
        home = workdir / "party"
        home.mkdir(exist_ok=True)
        roles.init_party(c, "bench", home)
        c.run(["party", "attest"], home)
        coordinator = c.processes[-1].popen.pid  # start_roles starts it last
        before = cpu_seconds(coordinator)
        report, peak, party_cpu = upload_in_child(home, table, workdir)
        coordinator_cpu = cpu_seconds(coordinator) - before
    if report["rows"] != rows:
        raise RuntimeError(f"the upload reports {report['rows']} rows, not {rows}")
    size = int(report["size"])
    raw = raw_seconds(lambda: _repeated(size), 2, size)  # best of two: the machine is shared
    return ParquetUploadFigures(
        table.stat().st_size,
        rows,
        size,
        report["seal"],
        report["send"],
        raw,
        peak,
        party_cpu,
        coordinator_cpu,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=float, default=1024, help="size of the Parquet file")
    parser.add_argument("--features", type=int, default=31, help="float32 feature columns")
    parser.add_argument("--workdir", type=Path, default=None, help="kept if given")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        figures = measure(args.mib, args.features, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="detente-bench-parquet-") as tmp:
            figures = measure(args.mib, args.features, Path(tmp))
    if args.json:
        derived = {
            k: getattr(figures, k)
            for k in ("upload_mb_s", "send_mb_s", "raw_mb_s", "ratio", "send_ratio")
        }
        print(json.dumps({**asdict(figures), **derived}, sort_keys=True))
        return 0
    f = figures
    print(
        f"Parquet file {f.parquet_bytes / MIB:,.0f} MiB, {f.rows:,} rows; sealed data set "
        f"{f.ciphertext_bytes / MIB:,.0f} MiB (run took {time.perf_counter() - started:.0f} s)"
    )
    print(
        f"party upload, whole:   {f.upload_mb_s:8.1f} MB/s  (read+check+seal "
        f"{f.seal_seconds:.1f} s, send+check {f.send_seconds:.1f} s)"
    )
    print(f"party upload, sending: {f.send_mb_s:8.1f} MB/s")
    print(f"raw TLS gRPC stream:   {f.raw_mb_s:8.1f} MB/s")
    print(f"ratio upload / raw:    {f.ratio:8.3f} whole, {f.send_ratio:.3f} sending (target 0.7)")
    print(f"upload peak RSS:       {f.peak_rss_bytes / MIB:8.1f} MiB")
    print(
        f"CPU time: upload process {f.party_cpu_seconds:.1f} s, coordinator "
        f"{f.coordinator_cpu_seconds:.1f} s, in {f.seal_seconds + f.send_seconds:.1f} s of "
        f"wall time on {os.cpu_count()} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
