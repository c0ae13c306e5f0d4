"""Benchmark: the peak memory and the throughput of a party's upload, through the real CLI.

    .venv/bin/python -m experiments.bench_party_upload [--rows 1000000] [--features 50]
        [--categorical 2] [--workdir DIR] [--baseline CHECKOUT] [--json]

Generates a CSV of ``--rows`` rows (an integer id, ``--features`` numeric
columns, ``--categorical`` text columns and a 0/1 label), starts a
coordinator and a SIMULATION enclave worker as processes (detente.cluster),
initialises and attests a party, and runs `detente party upload` on the file
in its own process. Prints the upload's wall time and throughput, and its
peak resident memory (the process's ``ru_maxrss``) against the target of
issue 9: under 0.5 × the plaintext table size + 200 MiB, where the
plaintext table is the Arrow IPC stream the party seals (float32 numbers,
text categories) — smaller than the CSV file, so the stricter measure.

With ``--baseline CHECKOUT`` (another checkout of the repository, for
example the commit before streaming) the same upload runs with that
checkout's packages first on ``PYTHONPATH``, for a before/after figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIB = 1 << 20
COMPONENTS = ("protocols", "party-client", "coordinator", "libos", "enclave-worker", "detente")
LABEL = "label"


@dataclass(frozen=True)
class UploadFigures:
    code: str  # "this checkout" or the baseline's path
    rows: int
    csv_bytes: int
    plaintext_bytes: int  # the Arrow IPC stream sealed (ciphertext less its overhead)
    seconds: float
    peak_rss_bytes: int

    @property
    def target_bytes(self) -> float:
        return 0.5 * self.plaintext_bytes + 200 * MIB

    @property
    def csv_mb_s(self) -> float:
        return self.csv_bytes / 1e6 / self.seconds


def generate(path: Path, rows: int, features: int, categorical: int, seed: int = 0) -> None:
    """Write the CSV in slices, so the generator never holds the whole table either."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    words = np.array([f"cat-{n:03d}" for n in range(200)])
    step = 100_000
    with path.open("wb") as sink:
        writer = None
        for start in range(0, rows, step):
            n = min(step, rows - start)
            columns: dict[str, Any] = {"id": np.arange(start, start + n, dtype=np.int64)}
            for f in range(features):
                columns[f"f{f:02d}"] = np.round(rng.normal(size=n), 4)
            for c in range(categorical):
                columns[f"c{c}"] = words[rng.integers(0, len(words), size=n)]
            columns[LABEL] = rng.integers(0, 2, size=n, dtype=np.int8)
            table = pa.table(columns)
            if writer is None:
                writer = pacsv.CSVWriter(sink, table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()


def run_upload(
    root: Path, home: Path, csv: Path, dataset_id: str, env_extra: dict[str, str]
) -> tuple[float, int, dict[str, Any]]:
    """`detente party upload` in its own process: (seconds, peak RSS bytes, its --json)."""
    from detente.cluster import detente_command

    env = {k: v for k, v in os.environ.items() if not k.startswith("DETENTE_")}
    env.update({"DETENTE_HOME": str(home), "PYTHONUNBUFFERED": "1", **env_extra})
    args = [*detente_command(), "party", "upload", str(csv), "--label", LABEL, "--id", "id"]
    out = root / f"{dataset_id}.out"
    started = time.perf_counter()
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [*args, "--dataset-id", dataset_id, "--json"],
            env=env,
            stdout=sink,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        errors = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"upload failed ({process.returncode}):\n{errors.decode()[-3000:]}")
    # ru_maxrss is in KiB on Linux.
    return seconds, usage.ru_maxrss * 1024, json.loads(out.read_text().strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--categorical", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import tempfile

    from detente.cluster import cluster, start_roles

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-party-upload-"))
    workdir.mkdir(parents=True, exist_ok=True)
    csv = workdir / "table.csv"
    t0 = time.perf_counter()
    generate(csv, args.rows, args.features, args.categorical)
    generated = time.perf_counter() - t0
    figures = []
    with cluster(workdir) as c:
        roles = start_roles(c, workdir)
        home = workdir / "party"
        home.mkdir(exist_ok=True)
        roles.init_party(c, "bench", home)
        c.run(["party", "attest"], home)
        runs: list[tuple[str, dict[str, str]]] = [("this checkout", {})]
        if args.baseline is not None:
            path = os.pathsep.join(str(args.baseline / d) for d in COMPONENTS)
            runs.insert(0, (str(args.baseline), {"PYTHONPATH": path}))
        for n, (code, env) in enumerate(runs):
            seconds, peak, done = run_upload(workdir, home, csv, f"bench-{n}", env)
            size = int(done["ciphertext_size"])
            # Each sealed 1 MiB chunk carries a 16-byte tag, and the stream a 24-byte header.
            plaintext = size - 24 - 16 * -(-size // (MIB + 16))
            figures.append(
                UploadFigures(code, int(done["rows"]), csv.stat().st_size, plaintext, seconds, peak)
            )
    if args.json:
        print(json.dumps([asdict(f) for f in figures], sort_keys=True))
        return 0
    print(
        f"table: {args.rows:,} rows × {args.features} numeric + {args.categorical} text columns; "
        f"CSV {figures[0].csv_bytes / MIB:,.0f} MiB, sealed Arrow stream "
        f"{figures[0].plaintext_bytes / MIB:,.0f} MiB (generated in {generated:.0f} s)"
    )
    for f in figures:
        verdict = "under" if f.peak_rss_bytes < f.target_bytes else "OVER"
        print(
            f"{f.code}: upload {f.seconds:.1f} s ({f.csv_mb_s:.0f} MB/s of CSV), peak RSS "
            f"{f.peak_rss_bytes / MIB:,.0f} MiB = {f.peak_rss_bytes / f.plaintext_bytes:.2f} × "
            f"the plaintext table; target 0.5 × table + 200 MiB = {f.target_bytes / MIB:,.0f} "
            f"MiB: {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
