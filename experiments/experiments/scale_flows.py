"""The scale benchmark's workload: data dealt to parties, the secure flows, plain XGBoost.

:mod:`experiments.bench_scale` runs these against a cluster and reports the
figures; :mod:`experiments.bench_predict` reuses the data generator.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.bench_upload import peak_rss_bytes

LABEL = "label"
ID = "ID"
SIGNAL_FEATURES = 10
MIB = 1 << 20
PARTY_MEMORY_FACTOR = 0.5  # targets: issue 9, "Scale"
PARTY_MEMORY_FIXED = 200 * MIB
JOB_MEMORY_FACTOR = 3.0


class Deadline:
    """One time budget for the whole run; every wait asks it how long it may wait."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self, what: str) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the benchmark ran out of its {self.seconds:.0f} s for {what}")
        return left


# --------------------------------------------------------------------------- data


@dataclass
class PartyData:
    name: str
    csv: Path
    rows: int
    table_bytes: int  # the plaintext table as Arrow holds it once read


def generate(root: Path, rows: int, features: int, parties: int, seed: int = 0) -> list[PartyData]:
    """Each party's rows as a CSV file: ``ID``, ``f0…``, ``label`` (1 with probability
    rising with the first features, so the model has something to learn)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=min(SIGNAL_FEATURES, features))
    bounds = np.linspace(0, rows, parties + 1).astype(int)
    out = []
    for n in range(parties):
        count = int(bounds[n + 1] - bounds[n])
        x = np.round(rng.normal(size=(count, features)), 4)
        logit = x[:, : len(weights)] @ weights + rng.logistic(size=count)
        columns = {ID: pa.array(np.arange(bounds[n], bounds[n + 1], dtype=np.int64))}
        columns.update({f"f{j}": pa.array(x[:, j]) for j in range(features)})
        columns[LABEL] = pa.array((logit > 0).astype(np.int64))
        table = pa.table(columns)
        name = f"party{n + 1}"
        folder = root / f"party-{name}"
        folder.mkdir(parents=True)
        path = folder / f"{name}.csv"
        pacsv.write_csv(table, path)
        out.append(PartyData(name, path, count, int(table.nbytes)))
    return out


# --------------------------------------------------------------------------- a party process


def _party_process(conn: Any, home: str) -> None:
    """One organisation's process: runs the library steps it is sent, one at a time."""
    import party_client
    from party_client.home import PartyHome

    party = PartyHome(Path(home))
    policy = party.policy()
    # Warm, like a party's service after its first data set: the library's modules and
    # what they import when they first run (the CLI flow pays for all of it every time).
    import numpy  # noqa: F401
    import pyarrow.compute
    import pyarrow.csv
    import pyarrow.parquet  # noqa: F401

    for name in ("upload", "propose", "approve", "results"):
        getattr(party_client, name)

    def upload(csv: str, dataset_id: str) -> dict[str, Any]:
        started = time.time()
        done = party_client.upload(party, policy, Path(csv), LABEL, ID, dataset_id)
        return {
            "start": started,
            "end": time.time(),
            "dataset_id": done.dataset_id,
            "ciphertext_size": done.ciphertext_size,
            "peak_rss": peak_rss_bytes(os.getpid()),
        }

    def propose(dataset_ids: list[str], rounds: int) -> dict[str, Any]:
        terms = party_client.propose(
            party, policy, dataset_ids, LABEL, ID, rounds, {}, 0, None, ["model", "metrics"]
        )
        return {"job_id": terms.job_id, "end": time.time()}

    def approve(job_id: str) -> dict[str, Any]:
        party_client.approve(party, policy, job_id)
        return {"end": time.time()}

    def results(job_id: str, out: str, timeout: float) -> dict[str, Any]:
        written = party_client.results(party, job_id, Path(out), timeout)
        return {"end": time.time(), "model": str(written["model"])}

    steps: dict[str, Callable[..., dict[str, Any]]] = {
        "upload": upload,
        "propose": propose,
        "approve": approve,
        "results": results,
    }
    # What the process holds before any data: the interpreter and the library's imports.
    conn.send(("ok", {"baseline_rss": peak_rss_bytes(os.getpid())}))
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        try:
            conn.send(("ok", steps[message[0]](*message[1:])))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class PartyProcess:
    """The parent's handle on a party process (spawned: nothing inherited)."""

    def __init__(self, name: str, home: Path, deadline: Deadline) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self._deadline = deadline
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_party_process, args=(child, str(home)), name=f"party-{name}", daemon=True
        )
        self._process.start()

    def send(self, *message: Any) -> None:
        self._conn.send(message)

    def receive(self, what: str) -> dict[str, Any]:
        if not self._conn.poll(self._deadline.left(f"{self.name}: {what}")):
            raise TimeoutError(f"{self.name} did not finish {what} in time")
        status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"{self.name} failed to {what}:\n{value}")
        return dict(value)

    def call(self, *message: Any) -> dict[str, Any]:
        self.send(*message)
        return self.receive(str(message[0]))

    def stop(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("stop",))
            except OSError:
                pass
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)


def _all(parties: Sequence[PartyProcess], *message: Any) -> list[dict[str, Any]]:
    """Send ``message`` to every party at once, then collect each answer."""
    for party in parties:
        party.send(*message)
    return [party.receive(str(message[0])) for party in parties]


# --------------------------------------------------------------------------- the two flows


@dataclass
class Flow:
    """One secure run, from the first upload to the last decrypted model."""

    name: str
    seconds: float = 0.0
    job_id: str = ""
    start: float = 0.0  # wall clock (time.time), comparable with the coordinator's events
    uploads: list[dict[str, Any]] = field(default_factory=list)
    done: float = 0.0
    models: list[Path] = field(default_factory=list)


def library_flow(
    homes: list[Path], data: list[PartyData], rounds: int, out: Path, deadline: Deadline
) -> Flow:
    processes = [PartyProcess(d.name, home, deadline) for d, home in zip(data, homes, strict=True)]
    try:
        # Imports done: each party is a process that was already running.
        baselines = [party.receive("start")["baseline_rss"] for party in processes]
        flow = Flow("library")
        started = time.perf_counter()
        flow.start = time.time()
        for party, d in zip(processes, data, strict=True):
            party.send("upload", str(d.csv), f"{d.name}-lib")
        flow.uploads = [
            {**party.receive("upload"), "baseline_rss": baseline}
            for party, baseline in zip(processes, baselines, strict=True)
        ]
        ids = [u["dataset_id"] for u in flow.uploads]
        flow.job_id = processes[0].call("propose", ids, rounds)["job_id"]
        _all(processes, "approve", flow.job_id)
        left = deadline.left("the job")
        fetched = _all_results(processes, flow.job_id, out, left)
        flow.seconds = time.perf_counter() - started
        flow.done = max(r["end"] for r in fetched)
        flow.models = [Path(r["model"]) for r in fetched]
        return flow
    finally:
        for party in processes:
            party.stop()


def _all_results(
    processes: Sequence[PartyProcess], job_id: str, out: Path, timeout: float
) -> list[dict[str, Any]]:
    for party in processes:
        party.send("results", job_id, str(out / party.name), timeout)
    return [party.receive("results") for party in processes]


@dataclass
class Finished:
    stdout: str
    end: float  # wall clock
    peak_rss: int


class CliProcess:
    """One `detente …` command as a process of its own, its peak memory sampled as it runs.

    VmHWM, read from /proc every few milliseconds (the last reading before it
    exits): the rusage of a child counts the high-water mark of the process that
    forked it, this benchmark's own, so it says nothing about the command.
    """

    def __init__(self, env: dict[str, str], args: list[str], home: Path, logs: Path) -> None:
        from detente.cluster import detente_command

        logs.mkdir(parents=True, exist_ok=True)
        stem = f"{args[0]}-{args[1]}-{time.monotonic_ns()}"
        self._out, self._err = logs / f"{stem}.out", logs / f"{stem}.err"
        self.command = f"`detente {' '.join(args)}`"
        self.peak_rss = 0
        self.end = 0.0
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self._popen = subprocess.Popen(
                [*detente_command(), *args],
                env={**env, "DETENTE_HOME": str(home)},
                stdout=out,
                stderr=err,
            )

    def poll(self) -> bool:
        """Sample its memory; True once it has exited."""
        if self.end:
            return True
        self.peak_rss = max(self.peak_rss, peak_rss_bytes(self._popen.pid))
        if self._popen.poll() is None:
            return False
        self.end = time.time()
        return True

    def finished(self) -> Finished:
        if self._popen.returncode != 0:
            raise RuntimeError(f"{self.command} failed:\n{self._err.read_text()[-3000:]}")
        return Finished(self._out.read_text(), self.end, self.peak_rss)

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait(10)


def wait_all(processes: list[CliProcess], deadline: Deadline) -> list[Finished]:
    try:
        while not all([p.poll() for p in processes]):
            deadline.left(", ".join(p.command for p in processes if not p.end))
            time.sleep(0.005)
    finally:
        for process in processes:
            process.kill()
    return [p.finished() for p in processes]


def cli_flow(
    env: dict[str, str],
    homes: list[Path],
    data: list[PartyData],
    rounds: int,
    out: Path,
    deadline: Deadline,
) -> Flow:
    logs = out / "logs"

    def run_all(commands: list[tuple[list[str], Path]]) -> list[Finished]:
        return wait_all([CliProcess(env, args, home, logs) for args, home in commands], deadline)

    flow = Flow("CLI")
    started = time.perf_counter()
    flow.start = time.time()
    uploads = run_all(
        [
            (
                [
                    *("party", "upload", str(d.csv), "--label", LABEL, "--id", ID),
                    *("--dataset-id", f"{d.name}-cli", "--json"),
                ],
                home,
            )
            for d, home in zip(data, homes, strict=True)
        ]
    )
    flow.uploads = [
        {**json.loads(u.stdout), "start": flow.start, "end": u.end, "peak_rss": u.peak_rss}
        for u in uploads
    ]
    propose = [*("party", "propose", "--label", LABEL, "--id", ID, "--rounds", str(rounds))]
    propose += [*("--output", "model", "--output", "metrics", "--json")]
    for u in flow.uploads:
        propose += ["--dataset", u["dataset_id"]]
    (proposed,) = run_all([(propose, homes[0])])
    flow.job_id = json.loads(proposed.stdout)["job_id"]
    run_all([(["party", "approve", flow.job_id, "--yes"], home) for home in homes])
    wait = str(int(deadline.left("the job")))
    results = [*("party", "results", flow.job_id, "--wait", wait, "--json")]
    fetched = run_all(
        [([*results, "--out", str(out / f"cli-{n}")], home) for n, home in enumerate(homes)]
    )
    flow.seconds = time.perf_counter() - started
    flow.done = max(f.end for f in fetched)
    flow.models = [Path(json.loads(f.stdout)["model"]) for f in fetched]
    return flow


# --------------------------------------------------------------------------- plain XGBoost


def _plain_process(
    conn: Any, csvs: list[str], params: dict[str, Any], rounds: int, model: str
) -> None:
    # (``model``: the enclave's model, to compare predictions with; "" for none.)
    """Plain XGBoost as a data scientist runs it: load, matrix, train, evaluate once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import xgboost as xgb

    try:
        t0 = time.perf_counter()
        table = pa.concat_tables([pacsv.read_csv(path) for path in csvs])
        t1 = time.perf_counter()
        names = [n for n in table.column_names if n not in (LABEL, ID)]
        x = np.column_stack(
            [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in names]
        )
        y = table.column(LABEL).to_numpy(zero_copy_only=False).astype(np.float32)
        del table
        dtrain = xgb.DMatrix(x, label=y, feature_names=names)
        t2 = time.perf_counter()
        booster = xgb.train(params, dtrain, num_boost_round=rounds)
        t3 = time.perf_counter()
        booster.eval(dtrain, "train")
        t4 = time.perf_counter()
        identical = None
        if model:
            enclave = xgb.Booster()
            enclave.load_model(bytearray(Path(model).read_bytes()))
            sample = xgb.DMatrix(x[: min(len(x), 20000)], feature_names=names)
            identical = bool(np.array_equal(enclave.predict(sample), booster.predict(sample)))
        conn.send(
            (
                "ok",
                {
                    "load": t1 - t0,
                    "matrix": t2 - t1,
                    "train": t3 - t2,
                    "eval": t4 - t3,
                    "seconds": t4 - t0,
                    "peak_rss": peak_rss_bytes(os.getpid()),
                    "identical": identical,
                    "matrix_bytes": int(x.nbytes),
                },
            )
        )
    except Exception:
        conn.send(("error", traceback.format_exc()))


def plain(
    data: list[PartyData],
    params: dict[str, Any],
    rounds: int,
    model: Path | None,
    deadline: Deadline,
) -> dict[str, Any]:
    """Plain XGBoost in a fresh process; with ``model``, also whether it predicts the same."""
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    args = (child, [str(d.csv) for d in data], params, rounds, str(model or ""))
    process = ctx.Process(target=_plain_process, args=args, daemon=True)
    process.start()
    try:
        if not conn.poll(deadline.left("plain XGBoost")):
            raise TimeoutError("plain XGBoost did not finish in time")
        status, value = conn.recv()
        if status == "error":
            raise RuntimeError(f"plain XGBoost failed:\n{value}")
        return dict(value)
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
