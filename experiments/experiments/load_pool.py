"""Load: many parties at once against one coordinator and a pool of enclave workers.

    .venv/bin/python -m experiments.load_pool [--parties 20] [--jobs 10] [--workers 2]
        [--rows 400] [--rounds 20] [--timeout 900] [--workdir DIR] [--json]

Starts, as processes on loopback, ``--workers`` enclave workers of one
measurement sharing one identity (the first, the others ``--join`` it) and a
coordinator that runs jobs on all of them (``detente.cluster``). Then, timed:

* ``--parties`` parties, each a thread of this process driving the
  ``party_client`` library with its own home, all at once: register (with a
  one-time token the operator issued beforehand, untimed), attest the enclave
  through the coordinator, seal and upload a data set of ``--rows`` rows;
* ``--jobs`` jobs, all at once: party 2k proposes a horizontal job over its
  own and party 2k+1's data set, both approve, both wait for it and decrypt
  the model; the coordinator spreads them over the workers.

Prints the operations completed per kind, the p50/p99 latency of each
request kind (each timed call is one library call: a registration, an
attestation, an upload, a proposal, an approval, a status poll, a download of
the results), how the jobs spread over the workers and overlapped, the total
time, and whether `detente coordinator audit verify` passes at the end.

Bounded: every wait asks one deadline (``--timeout``); at the end every
process it started is stopped by its process id (the cluster harness).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.scale_flows import ID, LABEL, Deadline, generate

POLL_SECONDS = 0.5


@dataclass
class Latencies:
    """Seconds each timed call took, by operation; failures counted apart."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, operation: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            result = call()
        except Exception as exc:
            with self._lock:
                self.failures.setdefault(operation, []).append(f"{type(exc).__name__}: {exc}")
            raise
        with self._lock:
            self.seconds.setdefault(operation, []).append(time.perf_counter() - started)
        return result

    def table(self) -> dict[str, dict[str, float]]:
        out = {}
        for operation, values in self.seconds.items():
            ordered = sorted(values)
            out[operation] = {
                "completed": len(ordered),
                "failed": len(self.failures.get(operation, [])),
                "p50_ms": 1000 * statistics.median(ordered),
                "p99_ms": 1000 * _percentile(ordered, 0.99),
            }
        for operation, errors in self.failures.items():
            out.setdefault(
                operation, {"completed": 0, "failed": len(errors), "p50_ms": 0.0, "p99_ms": 0.0}
            )
        return out


def _percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of sorted values."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _party(
    lat: Latencies,
    root: Path,
    name: str,
    coordinator: str,
    cert: Path,
    policy_file: Path,
    token: str,
    csv: Path,
) -> Any:
    """Register, attest and upload as one party; its home."""
    import party_client
    from party_client.home import PartyHome

    home = PartyHome(root / f"home-{name}")
    home.pin_coordinator_certificate(cert)
    policy = home.policy(policy_file)
    lat.timed("register", lambda: party_client.init(home, name, coordinator, False, token))
    home.policy_path.write_text(policy_file.read_text())
    lat.timed("attest", lambda: party_client.attest(home, policy))
    lat.timed("upload", lambda: party_client.upload(home, policy, csv, LABEL, ID, f"{name}-ds"))
    return home


def _job(
    lat: Latencies,
    homes: tuple[Any, Any],
    names: tuple[str, str],
    rounds: int,
    out: Path,
    deadline: Deadline,
) -> dict[str, Any]:
    """One job over two parties' data sets: propose, approve, wait, decrypt."""
    import party_client

    first = homes[0]
    policy = first.policy()
    terms = lat.timed(
        "propose",
        lambda: party_client.propose(
            first,
            policy,
            [f"{names[0]}-ds", f"{names[1]}-ds"],
            LABEL,
            ID,
            rounds,
            {},
            0,
            None,
            ["model", "metrics"],
        ),
    )
    for home in homes:
        lat.timed("approve", functools.partial(_approve, home, terms.job_id))
    while True:
        job = lat.timed("status", lambda: party_client.fetch_job(first, terms.job_id))
        if job.state in ("succeeded", "failed", "cancelled"):
            break
        deadline.left(f"job {terms.job_id}")
        time.sleep(POLL_SECONDS)
    if job.state != "succeeded":
        raise RuntimeError(f"job {terms.job_id} ended {job.state}: {job.error}")
    for n, home in enumerate(homes):
        folder = out / f"{terms.job_id}-{n}"
        lat.timed("results", functools.partial(party_client.results, home, terms.job_id, folder))
    return {"job_id": terms.job_id, "events": [(e.at, e.kind, e.text) for e in job.events]}


def _approve(home: Any, job_id: str) -> Any:
    import party_client

    return party_client.approve(home, home.policy(), job_id)


def _spread(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Which worker ran each job's last attempt, and how many jobs ran at once at most."""
    by_worker: dict[str, int] = {}
    spans = []
    requeued = 0
    for job in jobs:
        events = job["events"]
        workers = [t.rsplit(" ", 1)[-1] for _, k, t in events if k == "worker"]
        if workers:
            by_worker[workers[-1]] = by_worker.get(workers[-1], 0) + 1
        requeued += sum(1 for _, k, _t in events if k == "requeued")
        runs = [a for a, k, t in events if k == "state" and t == "running"]
        ends = [a for a, k, t in events if k == "state" and t == "succeeded"]
        if runs and ends:
            spans.append((runs[-1], ends[-1]))
    most = max((sum(1 for s, e in spans if s <= start < e) for start, _ in spans), default=0)
    return {"jobs_by_worker": by_worker, "most_at_once": most, "requeued": requeued}


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from detente.cluster import cluster

    deadline = Deadline(args.timeout)
    started = time.monotonic()
    data = generate(root / "data", args.rows * args.parties, 8, args.parties)
    lat = Latencies()
    report: dict[str, Any] = {"parties": args.parties, "jobs": args.jobs, "workers": args.workers}
    with cluster(root) as c:
        roles = start_pool(c, root, args.workers)
        tokens = {d.name: roles.enroll(c, d.name) for d in data}  # the operator, untimed
        timed_from = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.parties) as pool:
            futures = [
                pool.submit(
                    _party,
                    lat,
                    root,
                    d.name,
                    roles.coordinator,
                    roles.coordinator_cert,
                    roles.policy,
                    tokens[d.name],
                    d.csv,
                )
                for d in data
            ]
            homes = {}
            for d, future in zip(data, futures, strict=True):
                try:
                    homes[d.name] = future.result(timeout=deadline.left("the parties"))
                except Exception:
                    traceback.print_exc()
        report["parties_ready_seconds"] = time.monotonic() - timed_from
        pairs = [
            (data[2 * k].name, data[2 * k + 1].name)
            for k in range(min(args.jobs, len(data) // 2))
            if data[2 * k].name in homes and data[2 * k + 1].name in homes
        ]
        jobs_from = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, len(pairs))) as pool:
            futures = [
                pool.submit(
                    _job, lat, (homes[a], homes[b]), (a, b), args.rounds, root / "out", deadline
                )
                for a, b in pairs
            ]
            done = []
            for future in futures:
                try:
                    done.append(future.result(timeout=deadline.left("the jobs")))
                except Exception:
                    traceback.print_exc()
        report["jobs_seconds"] = time.monotonic() - jobs_from
        report["jobs_succeeded"] = len(done)
        report["spread"] = _spread(done)
        verify = c.run(
            ["coordinator", "audit", "verify", "--home", str(roles.coordinator_home), "--json"],
            check=False,
        )
        report["audit_verify"] = _audit_ok(verify)
    report["latency"] = lat.table()
    report["failures"] = {k: v[:3] for k, v in lat.failures.items()}
    report["total_seconds"] = time.monotonic() - started
    return report


def _audit_ok(output: str) -> dict[str, Any]:
    try:
        doc = json.loads(output)
    except ValueError:
        return {"ok": False, "output": output.strip()[-500:]}
    return {"ok": bool(doc.get("ok")), "entries": doc.get("entries")}


def start_pool(c: Any, root: Path, workers: int) -> Any:
    """``workers`` enclave workers sharing one identity and a coordinator using them all."""
    from detente.cluster import start_pool_roles

    roles, _ = start_pool_roles(c, root, workers)
    return roles


def print_report(r: dict[str, Any]) -> None:
    print(
        f"{r['parties']} parties, {r['jobs']} jobs over {r['workers']} workers "
        f"(loopback, every role a process)"
    )
    print(f"parties registered, attested and uploaded in {r['parties_ready_seconds']:.1f} s")
    print(
        f"jobs: {r['jobs_succeeded']}/{r['jobs']} succeeded in {r['jobs_seconds']:.1f} s; "
        f"by worker {r['spread']['jobs_by_worker']}, at most {r['spread']['most_at_once']} "
        f"at once, {r['spread']['requeued']} re-queued"
    )
    print(f"{'operation':<10} {'completed':>9} {'failed':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for operation, row in r["latency"].items():
        print(
            f"{operation:<10} {row['completed']:>9} {row['failed']:>6} "
            f"{row['p50_ms']:>9.1f} {row['p99_ms']:>9.1f}"
        )
    for operation, errors in r["failures"].items():
        print(f"  {operation} failed: {errors[0]}")
    audit = r["audit_verify"]
    print(
        "audit verify: "
        + (f"ok ({audit['entries']} entries)" if audit["ok"] else f"FAILED {audit}")
    )
    print(f"total {r['total_seconds']:.1f} s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="load_pool", description=__doc__.split("\n")[0])
    parser.add_argument("--parties", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=400, help="rows per party")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.parties < 2 or args.jobs < 1 or args.workers < 1:
        parser.error("--parties ≥ 2, --jobs ≥ 1 and --workers ≥ 1")
    if args.jobs * 2 > args.parties:
        parser.error("each job takes two parties: --jobs ≤ --parties / 2")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run(args, Path(tempfile.mkdtemp(prefix="load-pool-", dir=args.workdir)))
    else:
        with tempfile.TemporaryDirectory(prefix="load-pool-") as tmp:
            report = run(args, Path(tmp))
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print_report(report)
    ok = report["audit_verify"]["ok"] and report["jobs_succeeded"] == args.jobs
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
