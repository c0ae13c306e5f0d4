"""Benchmark: a three-party job at scale through the real processes, against plain XGBoost.

    .venv/bin/python -m experiments.bench_scale [--rows 1000000] [--features 50] [--rounds 100]
        [--parties 3] [--workdir DIR] [--timeout 3600] [--no-cli] [--json]

Generates a table (numeric features, an ``ID`` column and a binary label that
depends on some of the features) and deals its rows out to the parties as
CSV files. Starts the enclave worker and the coordinator as processes and
initialises and attests each party (``detente.cluster``; not timed: in
production they run before any job). Then, timed from the first upload to
the moment every party holds the decrypted model:

* **library**: each party is a process of its own (they are different
  organisations) that drives the flow through the ``party_client`` library,
  started and warmed up beforehand; the parties upload at the same time,
  the first proposes a job releasing the model and metrics to every owner,
  all approve, all fetch and decrypt the results;
* **CLI**: the same flow with one `detente party upload/propose/approve/results`
  process per step, as a person or a script would run it;

and, in the same run, **plain** XGBoost in a process of its own on the same
rows with the job's parameters and threads and the same evaluation (the
training set's metrics once, at the end, as the job releases them when the
terms set no stride): the CSV files loaded, a float32 DMatrix built, trained.

Prints secure / plain for each flow (the target through the library is
≤ 1.25, the project's goal 1.10), the stages of the library flow (the
enclave's own side from the job's ``timing`` events), upload throughput
against raw TLS gRPC streaming of as many bytes on this machine, and the
peak memory of each process as a multiple of its data: a party's upload
against its plaintext table (target < 0.5 × table + 200 MiB), the job process
against the float32 training matrix (target < 3 ×), and the coordinator.
Every role runs on loopback; every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.bench_upload import peak_rss_bytes, raw_seconds
from experiments.scale_flows import (
    JOB_MEMORY_FACTOR,
    MIB,
    PARTY_MEMORY_FACTOR,
    PARTY_MEMORY_FIXED,
    Deadline,
    Flow,
    cli_flow,
    generate,
    library_flow,
    plain,
)

# --------------------------------------------------------------------------- figures


def _events(home: Path, job_id: str) -> list[Any]:
    import party_client
    from party_client.home import PartyHome

    return list(party_client.fetch_job(PartyHome(home), job_id).events)


def _at(events: list[Any], kind: str, text: str) -> float:
    found = [e.at for e in events if e.kind == kind and e.text == text]
    if not found:
        raise RuntimeError(f"the job has no {kind} event {text!r}")
    return found[-1] / 1000.0


def enclave_timings(events: list[Any]) -> dict[str, float]:
    """The job's ``timing`` events ("NAME 1.234s"), by name, in seconds."""
    out: dict[str, float] = {}
    for event in events:
        if event.kind == "timing":
            name, _, value = event.text.rpartition(" ")
            if value.endswith("s"):
                out[name] = out.get(name, 0.0) + float(value[:-1])
    return out


def job_peak_bytes(events: list[Any]) -> int:
    """The job process's peak resident memory from its ``memory`` event (0 if none)."""
    for event in events:
        if event.kind == "memory":
            found = re.search(r"peak ([0-9.]+) MiB", event.text)
            if found:
                return int(float(found.group(1)) * MIB)
    return 0


def stages(flow: Flow, events: list[Any]) -> dict[str, float]:
    """Where a flow's time went, in seconds, adding up to its total.

    Wall clock across processes (the coordinator's events carry its time of
    day): the parties' own steps, then the job as the coordinator saw it,
    split by the enclave's ``timing`` events (each the seconds of one step of
    the job process, in order). "enclave start" is from the job's start at
    the coordinator to the job process's first step (connecting, the job
    process starting); "enclave rest" what the steps do not account for.
    """
    uploaded = max(u["end"] for u in flow.uploads)
    approved = _at(events, "state", "approved")  # the last approval reached the coordinator
    running = _at(events, "state", "running")
    succeeded = _at(events, "state", "succeeded")
    timings = enclave_timings(events)
    first = next((e for e in events if e.kind == "timing"), None)
    first_seconds = float(first.text.rpartition(" ")[2][:-1]) if first else 0.0
    began = (first.at / 1000.0 - first_seconds) if first else running
    out = {
        "upload": uploaded - flow.start,
        "propose+approve": approved - uploaded,
        "queue": running - approved,
        "enclave start": began - running,
    }
    out.update({f"enclave {name}": seconds for name, seconds in timings.items()})
    out["enclave rest"] = succeeded - running - out["enclave start"] - sum(timings.values())
    out["download+decrypt"] = flow.done - succeeded
    return out


def upload_figures(flow: Flow, raw_mb_s: float) -> dict[str, float]:
    total = sum(int(u["ciphertext_size"]) for u in flow.uploads)
    seconds = max(u["end"] for u in flow.uploads) - min(u["start"] for u in flow.uploads)
    mb_s = total / seconds / 1e6
    return {"ciphertext_bytes": total, "mb_s": mb_s, "raw_mb_s": raw_mb_s, "ratio": mb_s / raw_mb_s}


def raw_throughput(total: int) -> float:
    """MB/s of one loopback TLS gRPC stream of ``total`` bytes to a counting server."""
    from protocols.stream import CHUNK_SIZE

    piece = os.urandom(CHUNK_SIZE)
    pieces = [piece] * max(1, total // CHUNK_SIZE)
    return len(pieces) * CHUNK_SIZE / raw_seconds(pieces, 2) / 1e6


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from detente.cluster import cluster, start_roles

    deadline = Deadline(args.timeout)
    data = generate(root, args.rows, args.features, args.parties)
    report: dict[str, Any] = {
        "rows": args.rows,
        "features": args.features,
        "parties": args.parties,
        "rounds": args.rounds,
        "plaintext_bytes": sum(d.table_bytes for d in data),
        "csv_bytes": sum(d.csv.stat().st_size for d in data),
    }
    with cluster(root) as c:
        roles = start_roles(c, root)
        homes = []
        for d in data:
            home = root / f"party-{d.name}" / "home"
            home.mkdir()
            roles.init_party(c, d.name, home)
            c.run(["party", "attest"], home)
            homes.append(home)
        coordinator_pid = next(p.popen.pid for p in c.processes if p.name == "coordinator")

        flow = library_flow(homes, data, args.rounds, root / "results", deadline)
        events = _events(homes[0], flow.job_id)
        report["library"] = {
            "seconds": flow.seconds,
            "job_id": flow.job_id,
            "stages": stages(flow, events),
            "enclave_timings": enclave_timings(events),
        }
        job_peak = job_peak_bytes(events)
        coordinator_peak = peak_rss_bytes(coordinator_pid)
        # Plain XGBoost between the secure runs and after them, with the job's own terms;
        # the faster of the two is the baseline (the machine is shared: never flatter).
        params = _train_params(homes[0], flow.job_id)
        plains = [plain(data, params, args.rounds, None, deadline)]
        cli = None
        if not args.no_cli:
            cli = cli_flow(c.env, homes, data, args.rounds, root / "results", deadline)
            report["cli"] = {
                "seconds": cli.seconds,
                "job_id": cli.job_id,
                "stages": stages(cli, _events(homes[0], cli.job_id)),
            }
        report["coordinator_peak_rss"] = peak_rss_bytes(coordinator_pid)
        report["coordinator_peak_rss_library"] = coordinator_peak

    plains.append(plain(data, params, args.rounds, flow.models[0], deadline))
    base = min(plains, key=lambda p: float(p["seconds"]))
    report["plain"] = base
    report["plain_runs"] = [p["seconds"] for p in plains]
    report["library"]["ratio"] = flow.seconds / base["seconds"]
    if cli is not None:
        report["cli"]["ratio"] = cli.seconds / base["seconds"]
    report["upload"] = upload_figures(
        flow, raw_throughput(sum(int(u["ciphertext_size"]) for u in flow.uploads))
    )
    report["memory"] = {
        "parties": [
            {
                "name": d.name,
                "table_bytes": d.table_bytes,
                "library_peak_rss": int(u["peak_rss"]),
                "library_baseline_rss": int(u["baseline_rss"]),
                "cli_peak_rss": int(cu["peak_rss"]) if cli else None,
                "target_bytes": int(PARTY_MEMORY_FACTOR * d.table_bytes + PARTY_MEMORY_FIXED),
            }
            for d, u, cu in zip(
                data, flow.uploads, cli.uploads if cli else flow.uploads, strict=True
            )
        ],
        "job_peak_rss": job_peak,
        "matrix_bytes": base["matrix_bytes"],
        "coordinator_peak_rss": report["coordinator_peak_rss"],
        "ciphertext_bytes": report["upload"]["ciphertext_bytes"],
    }
    report["identical_to_plaintext"] = plains[-1]["identical"]
    return report


def _train_params(home: Path, job_id: str) -> dict[str, Any]:
    import party_client
    from party_client.home import PartyHome

    return dict(party_client.fetch_job(PartyHome(home), job_id).terms.train_params())


def _mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def print_report(r: dict[str, Any]) -> None:
    base, lib = r["plain"], r["library"]
    print(
        f"{r['rows']} rows × {r['features']} features, {r['parties']} parties, {r['rounds']} "
        f"rounds; plaintext {_mib(r['plaintext_bytes'])} (CSV {_mib(r['csv_bytes'])}), "
        f"ciphertext {_mib(r['upload']['ciphertext_bytes'])}"
    )
    runs = ", ".join(f"{s:.2f}" for s in r["plain_runs"])
    print(
        f"plain XGBoost: {base['seconds']:.2f} s (CSV load {base['load']:.2f} s, DMatrix "
        f"{base['matrix']:.2f} s, train {base['train']:.2f} s, evaluation {base['eval']:.2f} s; "
        f"the faster of {runs} s)"
    )
    print(f"secure, party_client library, first upload → decrypted model: {lib['seconds']:.2f} s")
    print(f"secure / plain (library): {lib['ratio']:.3f}  (target ≤ 1.25; goal 1.10)")
    if "cli" in r:
        print(
            f"secure, detente CLI processes, first upload → decrypted model: "
            f"{r['cli']['seconds']:.2f} s"
        )
        print(f"secure / plain (CLI): {r['cli']['ratio']:.3f}")
    print("stages of the library flow (s):")
    for name, seconds in lib["stages"].items():
        print(f"  {name:<40} {seconds:8.2f}")
    if "cli" in r:
        print("stages of the CLI flow (s):")
        for name, seconds in r["cli"]["stages"].items():
            print(f"  {name:<40} {seconds:8.2f}")
    up = r["upload"]
    print(
        f"upload throughput: {up['mb_s']:.1f} MB/s ({r['parties']} parties at once, reading, "
        f"sealing and sending) against {up['raw_mb_s']:.1f} MB/s raw TLS gRPC; ratio "
        f"{up['ratio']:.3f}"
    )
    mem = r["memory"]
    print("peak memory:")
    for p in mem["parties"]:
        table = p["table_bytes"]
        peak = p["library_peak_rss"]
        print(
            f"  {p['name']} upload (library): {_mib(peak)} = {peak / table:.2f} × its plaintext "
            f"table ({_mib(table)}; {_mib(p['library_baseline_rss'])} before any data); target "
            f"< {_mib(p['target_bytes'])}: {'met' if peak < p['target_bytes'] else 'missed'}"
        )
        if p["cli_peak_rss"] is not None:
            print(
                f"  {p['name']} upload (CLI):     {_mib(p['cli_peak_rss'])} = "
                f"{p['cli_peak_rss'] / table:.2f} ×"
            )
    if mem["job_peak_rss"]:
        met = mem["job_peak_rss"] < JOB_MEMORY_FACTOR * mem["matrix_bytes"]
        print(
            f"  worker's job process: {_mib(mem['job_peak_rss'])} = "
            f"{mem['job_peak_rss'] / mem['matrix_bytes']:.2f} × the float32 training matrix "
            f"({_mib(mem['matrix_bytes'])}); target < {JOB_MEMORY_FACTOR:g} ×: "
            f"{'met' if met else 'missed'}"
        )
    print(
        f"  coordinator: {_mib(mem['coordinator_peak_rss'])} = "
        f"{mem['coordinator_peak_rss'] / mem['ciphertext_bytes']:.2f} × the ciphertext of one "
        f"run ({_mib(mem['ciphertext_bytes'])})"
    )
    print(f"  plain XGBoost process: {_mib(base['peak_rss'])}")
    print(f"model identical to plaintext: {'yes' if r['identical_to_plaintext'] else 'no'}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--parties", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep every file here (an empty folder)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for the whole run")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI flow")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        if args.workdir.exists() and any(args.workdir.iterdir()):
            parser.error(f"--workdir {args.workdir} is not empty")
        args.workdir.mkdir(parents=True, exist_ok=True)
        root = args.workdir
    else:
        root = Path(tempfile.mkdtemp(prefix="detente-bench-scale-"))
    try:
        report = run(args, root)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print_report(report)


if __name__ == "__main__":
    main()
