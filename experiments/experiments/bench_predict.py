"""Benchmark: queries of a sealed model through the full path, against local ``Booster.predict``.

    .venv/bin/python -m experiments.bench_predict [--train-rows 100000] [--features 30]
        [--rounds 50] [--batches 1,100,10000,100000] [--workdir DIR] [--timeout 1800] [--json]

Starts the enclave worker and the coordinator as processes (``detente.cluster``),
has two parties upload generated rows and train a model sealed in the enclave
(through the CLI; not timed), and trains the same model in plaintext. Then,
in this process acting as the first party through the ``party_client``
library (one ``QuerySession``: one connection, the enclave verified once, and one
warm-up query first, as a running scoring service would have made),
it scores batches of 1, 100, 10,000 and 100,000 fresh rows: each query read
from an Arrow table, sealed to the attested enclave, signed, relayed by the
coordinator, checked and charged by the enclave, answered, verified and
decrypted. For each batch size it prints p50 and p99 latency and throughput,
and the same for local ``Booster.predict`` (a DMatrix of the same rows, then
predict) on the plaintext model; every answer is checked equal to the local
prediction.

The round trip is the p50 latency of a one-row query: the path's fixed cost
(signatures, sealing, the relay, the enclave's checks and budget commit).
Target (issue 10): a 10,000-row batch within 3 × local predict + one round trip.
Every role runs on loopback; every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.scale_flows import ID, LABEL, Deadline, generate

DEFAULT_BATCHES = (1, 100, 10_000, 100_000)
TARGET_BATCH = 10_000
TARGET_FACTOR = 3.0
WARM_UP_ROWS = 10


def repeats_for(rows: int) -> int:
    """How many times a batch of ``rows`` is sent: enough for a p99 of small batches."""
    if rows <= 100:
        return 100
    if rows <= 10_000:
        return 20
    return 5


@dataclass
class Figures:
    """Latencies (seconds) of one batch size, through the enclave and locally."""

    rows: int
    secure: list[float]
    local: list[float]

    @staticmethod
    def _p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def to_dict(self) -> dict[str, Any]:
        p50 = statistics.median(self.secure)
        local = statistics.median(self.local)
        return {
            "rows": self.rows,
            "queries": len(self.secure),
            "p50_s": p50,
            "p99_s": self._p(self.secure, 0.99),
            "rows_per_s": self.rows / p50,
            "local_p50_s": local,
            "local_p99_s": self._p(self.local, 0.99),
            "local_rows_per_s": self.rows / local,
            "ratio_p50": p50 / local,
        }


def _features(rows: int, features: int, seed: int) -> Any:
    """``rows`` fresh rows of the generated features (no id, no label), as an Arrow table."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(rows, features)), 4)
    return pa.table({f"f{j}": pa.array(x[:, j]) for j in range(features)})


def _plain_model(data: list[Any], terms: Any) -> Any:
    """The sealed job's model trained in plaintext on the same rows (the enclave's join rules)."""
    import pyarrow.csv as pacsv
    import xgboost as xgb

    from protocols import training

    named = [(f"d{n}", pacsv.read_csv(d.csv)) for n, d in enumerate(data)]
    joined = training.join_horizontal(named, {d: ID for d, _ in named})
    x, y, _ = training.training_table(joined, LABEL)
    matrix = xgb.DMatrix(x, label=y, enable_categorical=True)
    return xgb.train(terms.train_params(), matrix, num_boost_round=terms.num_rounds)


def _local_predict(booster: Any, table: Any) -> tuple[float, Any]:
    import numpy as np
    import xgboost as xgb

    started = time.perf_counter()
    x = np.column_stack([c.to_numpy() for c in table.columns]).astype(np.float32)
    predictions = booster.predict(xgb.DMatrix(x, feature_names=table.column_names))
    return time.perf_counter() - started, predictions


def _measure(
    session: Any, booster: Any, rows: int, table: Any, repeats: int, deadline: Deadline
) -> Figures:
    """Query ``table`` through ``session`` ``repeats`` times, and predict it locally as often."""
    import numpy as np

    secure, local = [], []
    for _ in range(repeats):
        deadline.left(f"queries of {rows} rows")
        started = time.perf_counter()
        answer = session.predict_table(table)
        secure.append(time.perf_counter() - started)
        seconds, expected = _local_predict(booster, table)
        local.append(seconds)
        got = answer.column("prediction").to_numpy().astype(np.float32)
        if not np.array_equal(got, expected):
            raise AssertionError(f"the enclave's answer to {rows} rows differs from local predict")
    return Figures(rows, secure, local)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import party_client
    from detente.cluster import cluster, start_roles
    from party_client.home import PartyHome

    deadline = Deadline(args.timeout)
    batches = [int(b) for b in args.batches.split(",")]
    repeats = {b: min(repeats_for(b), args.max_repeats) for b in batches}
    budget = sum(b * repeats[b] for b in batches) + WARM_UP_ROWS + 1000
    root = Path(args.workdir or tempfile.mkdtemp(prefix="detente-bench-predict-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        data = generate(root, args.train_rows, args.features, 2)
        with cluster(root) as c:
            roles = start_roles(c, root)
            homes = []
            for d in data:
                home = d.csv.parent
                roles.init_party(c, d.name, home)
                c.run(["party", "attest"], home)
                upload = ["party", "upload", str(d.csv), "--label", LABEL, "--id", ID]
                c.run([*upload, "--dataset-id", f"{d.name}-data"], home)
                homes.append(home)
            propose = ["party", "propose", "--label", LABEL, "--id", ID, "--json"]
            propose += ["--rounds", str(args.rounds), "--sealed", "--output", "metrics"]
            # The first party queries; the other may too (an owner left out must confirm).
            propose += ["--query", f"{data[0].name}={budget}", "--query", f"{data[1].name}=1000"]
            for d in data:
                propose += ["--dataset", f"{d.name}-data"]
            job_id = str(json.loads(c.run(propose, homes[0]))["job_id"])
            for home in homes:
                c.run(["party", "approve", job_id, "--yes"], home)
            wait = ["party", "results", job_id, "--out", str(root / "results")]
            c.run([*wait, "--wait", str(deadline.left("the job"))], homes[0])

            os.environ["DETENTE_HOME"] = str(homes[0])
            party = PartyHome.default()
            policy = party.policy()
            terms = party_client.fetch_job(party, job_id).terms
            booster = _plain_model(data, terms)

            # A scoring service: one session (one connection, the enclave verified once);
            # one warm-up query, as such a service would have answered already.
            with party_client.QuerySession(party, job_id, policy) as session:
                session.predict_table(_features(WARM_UP_ROWS, args.features, 1))
                figures = [
                    _measure(
                        session,
                        booster,
                        rows,
                        _features(rows, args.features, 100 + n),
                        repeats[rows],
                        deadline,
                    )
                    for n, rows in enumerate(batches)
                ]
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    report = [f.to_dict() for f in figures]
    round_trip = min((r["p50_s"] for r in report if r["rows"] == 1), default=None)
    target = next((r for r in report if r["rows"] == TARGET_BATCH), None)
    verdict = None
    if round_trip is not None and target is not None:
        bound = TARGET_FACTOR * target["local_p50_s"] + round_trip
        verdict = {"bound_s": bound, "p50_s": target["p50_s"], "met": target["p50_s"] <= bound}
    return {
        "train_rows": args.train_rows,
        "features": args.features,
        "rounds": args.rounds,
        "batches": report,
        "round_trip_s": round_trip,
        "target": verdict,
        "simulation": True,
    }


def print_report(r: dict[str, Any]) -> None:
    print(
        f"sealed model: {r['train_rows']:,} training rows × {r['features']} features, "
        f"{r['rounds']} rounds (SIMULATION enclave)"
    )
    print(
        f"{'rows':>8} {'queries':>7} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>11} "
        f"{'local p50 ms':>13} {'local rows/s':>13} {'p50 ratio':>9}"
    )
    for b in r["batches"]:
        print(
            f"{b['rows']:>8,} {b['queries']:>7} {b['p50_s'] * 1e3:>9.2f} {b['p99_s'] * 1e3:>9.2f} "
            f"{b['rows_per_s']:>11,.0f} {b['local_p50_s'] * 1e3:>13.2f} "
            f"{b['local_rows_per_s']:>13,.0f} {b['ratio_p50']:>9.1f}"
        )
    if r["round_trip_s"] is not None:
        print(f"round trip (p50 of a one-row query): {r['round_trip_s'] * 1e3:.2f} ms")
    if r["target"] is not None:
        t = r["target"]
        print(
            f"target: {TARGET_BATCH:,} rows within {TARGET_FACTOR:g} × local + one round trip = "
            f"{t['bound_s'] * 1e3:.1f} ms; measured p50 {t['p50_s'] * 1e3:.1f} ms: "
            f"{'met' if t['met'] else 'missed'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    parser.add_argument(
        "--max-repeats", type=int, default=100, help="send no batch size more often than this"
    )
    parser.add_argument("--workdir", help="keep every file here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
