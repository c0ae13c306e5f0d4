"""The three-party demo: every role a real process, every party step the real CLI.

Steps: hold out a 20 % test set (stratified for classification), share the rest
among N parties — by rows (``--join horizontal``: by a column's values or in
blocks) or by columns (``--join vertical``: the parties hold different columns
about the same customers, keyed by the id column, the label with one of them)
—, start a coordinator and a SIMULATION enclave worker (detente.cluster), then
for each party `init`, `attest`, `upload`; one party proposes, all approve,
all fetch and decrypt the model. Finally the demo compares the enclave's model
with XGBoost trained in plaintext on the same joined rows (built by the same
rules, protocols.training) with the same parameters: predictions must be
identical.

The objective follows the label: 0/1 labels train ``binary:logistic`` (scored
by AUC), class numbers ``multi:softprob`` (accuracy), other numbers
``reg:squarederror`` (RMSE). Text columns are categorical features.

Without ``--data`` the demo uses the UCI credit data shipped with this package
(``detente/data/``; its README gives provenance and licence).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from detente import demo_report
from detente.cluster import Cluster, Roles, cluster, start_roles
from detente.evaluation import roc_auc, stratified_split
from protocols.cli_convention import warn_simulation
from protocols.errors import DetenteError

__all__ = [
    "DEFAULT_ID",
    "DEFAULT_LABEL",
    "DEFAULT_SPLIT",
    "VERTICAL_GROUPS",
    "DemoError",
    "default_data",
    "features",
    "main",
    "split_columns",
    "split_parties",
]

DEFAULT_DATA_FILE = "UCI_Credit_Card.csv"
DEFAULT_LABEL = "default.payment.next.month"
DEFAULT_ID = "ID"
DEFAULT_SPLIT = "EDUCATION"
# The bundled credit data by columns: what three lenders could each hold about
# the same customers (the label stays with the last, which granted the credit).
VERTICAL_GROUPS: list[tuple[str, list[str]]] = [
    ("repayment history", ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]),
    (
        "bills and payments",
        [f"BILL_AMT{i}" for i in range(1, 7)] + [f"PAY_AMT{i}" for i in range(1, 7)],
    ),
    ("demographics and limit", ["LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE"]),
]
# In a vertical demo each party lacks a few of the customers, so the join is a
# real intersection (seeded: the same rows every run).
VERTICAL_DROP_FRACTION = 0.02
TEST_FRACTION = 0.2
SPLIT_SEED = 0
JOB_TIMEOUT = 900.0
# With --sealed each party may score this many times its held-out rows.
QUERY_BUDGET_FACTOR = 2


class DemoError(DetenteError):
    """The demo's data or options do not allow the run (a missing column, too few groups)."""


@contextmanager
def default_data() -> Iterator[Path]:
    """The bundled UCI credit data set as a file (package data, read where it is installed)."""
    resource = importlib.resources.files("detente") / "data" / DEFAULT_DATA_FILE
    with importlib.resources.as_file(resource) as path:
        yield path


@dataclass
class Party:
    """One party of the demo: its rows (and columns), and whether it holds the label."""

    name: str
    table: Any  # pyarrow.Table
    has_label: bool
    about: str  # how the printout describes what it holds

    @property
    def dataset_id(self) -> str:
        return f"{self.name}-data"


@dataclass
class Options:
    """How the demo shares the data and what it asks of the enclave."""

    split_by: str | None
    parties: int
    rounds: int
    join: str
    sealed: bool  # keep the model in the enclave; each party scores its held-out rows
    # A loopback port: serve the coordinator's dashboard and keep the roles running after
    # the report until SIGINT/SIGTERM (None: stop at once).
    dashboard: int | None = None


@dataclass
class Task:
    """What the label asks for: the objective, its parameters and the score printed."""

    objective: str
    params: dict[str, Any]
    score_name: str
    score: Callable[[Any, Any], float]
    classification: bool


@dataclass
class Run:
    """What the cluster run returns to the report."""

    models: dict[str, bytes] = field(default_factory=dict)
    # --sealed: each party's answers on its own held-out rows, and the budget left after
    answers: dict[str, Any] = field(default_factory=dict)
    remaining: dict[str, dict[str, Any]] = field(default_factory=dict)
    terms: Any = None
    status: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- sharing the data


def split_parties(table: Any, parties: int, split_by: str | None) -> list[tuple[str, Any]]:
    """Rows → N parties: by the values of ``split_by`` (largest groups first), or in blocks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if split_by is None:
        bounds = np.linspace(0, table.num_rows, parties + 1).astype(int)
        return [
            (f"party{i + 1}", table.slice(bounds[i], bounds[i + 1] - bounds[i]))
            for i in range(parties)
        ]
    if split_by not in table.column_names:
        raise DemoError(f"--split-by column {split_by!r} is not in the data")
    counts = pc.value_counts(table.column(split_by)).to_pylist()
    counts.sort(key=lambda c: (-c["counts"], str(c["values"])))
    if len(counts) < parties:
        raise DemoError(
            f"column {split_by!r} has {len(counts)} values, fewer than {parties} parties"
        )
    groups = [[c["values"]] for c in counts[: parties - 1]]
    groups.append([c["values"] for c in counts[parties - 1 :]])
    return [
        (f"party{i + 1}", table.filter(pc.is_in(table.column(split_by), value_set=pa.array(v))))
        for i, v in enumerate(groups)
    ]


def split_columns(
    columns: list[str], parties: int, groups: list[tuple[str, list[str]]] | None = None
) -> list[tuple[str, list[str]]]:
    """Feature columns → N parties as (what they are about, names): the given ``groups``, or
    dealt out in turn (about nothing in particular: "")."""
    if (
        groups is not None
        and len(groups) == parties
        and all(c in columns for _, names in groups for c in names)
    ):
        return groups
    if len(columns) < parties:
        raise DemoError(
            f"the data has {len(columns)} feature columns, fewer than {parties} parties"
        )
    dealt: list[list[str]] = [[] for _ in range(parties)]
    for i, name in enumerate(columns):
        dealt[i % parties].append(name)
    return [("", names) for names in dealt]


def _vertical_parties(
    train: Any, label: str, id_column: str, parties: int, default: bool
) -> list[Party]:
    import numpy as np

    feature_names = [c for c in train.column_names if c not in (label, id_column)]
    groups = split_columns(feature_names, parties, VERTICAL_GROUPS if default else None)
    out = []
    for i, (about, names) in enumerate(groups):
        holder = i == len(groups) - 1
        keep = np.random.RandomState(SPLIT_SEED + i).random_sample(train.num_rows)
        rows = train.filter(keep >= VERTICAL_DROP_FRACTION)
        table = rows.select([id_column, *names, *([label] if holder else [])])
        count = f"{len(names)} column{'' if len(names) == 1 else 's'}"
        described = ", ".join(filter(None, [about, count]))
        out.append(Party(f"party{i + 1}", table, holder, described))
    return out


def _horizontal_parties(train: Any, parties: int, split_by: str | None) -> list[Party]:
    return [
        Party(name, part, True, f"{part.num_rows} rows")
        for name, part in split_parties(train, parties, split_by)
    ]


# --------------------------------------------------------------------------- the task


def _task(y: Any) -> Task:
    """Objective and score for labels ``y`` (protocols.objectives decides their kind)."""
    import numpy as np

    from protocols.objectives import BINARY, CLASSES, summarize_labels

    summary = summarize_labels("label", y, "the demo's data")
    if summary.kind == BINARY:
        return Task("binary:logistic", {"eval_metric": "auc"}, "AUC", roc_auc, True)
    if summary.kind == CLASSES:
        classes = int(summary.classes or 2)

        def accuracy(truth: Any, scores: Any) -> float:
            return float(np.mean(np.argmax(scores, axis=1) == truth))

        params = {"num_class": classes, "eval_metric": "mlogloss"}
        return Task("multi:softprob", params, "accuracy", accuracy, True)

    def rmse(truth: Any, predictions: Any) -> float:
        return float(np.sqrt(np.mean((predictions - truth) ** 2)))

    return Task("reg:squarederror", {"eval_metric": "rmse"}, "RMSE", rmse, False)


def _hold_out(table: Any, label: str, classification: bool) -> tuple[Any, Any]:
    import numpy as np

    y = table.column(label).to_numpy(zero_copy_only=False)
    if classification:
        try:
            train_idx, test_idx = stratified_split(y, TEST_FRACTION, SPLIT_SEED)
        except ValueError as exc:
            raise DemoError(f"cannot hold out a stratified test set by {label!r}: {exc}") from None
    else:
        order = np.random.RandomState(SPLIT_SEED).permutation(table.num_rows)
        cut = int(np.ceil(TEST_FRACTION * table.num_rows))
        test_idx, train_idx = order[:cut], order[cut:]
    return table.take(np.sort(train_idx)), table.take(np.sort(test_idx))


def features(table: Any, label: str, id_column: str | None) -> tuple[Any, Any, list[str]]:
    """Plaintext feature rule for numeric tables: every column but label and id, as float32."""
    import numpy as np

    names = [n for n in table.column_names if n not in (label, id_column)]
    x = np.column_stack(
        [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in names]
    )
    y = table.column(label).to_numpy(zero_copy_only=False).astype(np.float32)
    return x, y, names


# --------------------------------------------------------------------------- main


def main(
    data: Path | None,
    label: str | None,
    id_column: str | None,
    split_by: str | None,
    parties: int,
    workdir: Path | None,
    rounds: int,
    join: str = "horizontal",
    sealed: bool = False,
    dashboard: int | None = None,
) -> int:
    """Run the demo (`detente demo`); the exit code: 0 when the models are identical.

    ``dashboard`` (a loopback port, 0 for any free one): the coordinator also
    serves its dashboard, and after the report the demo keeps the roles running
    until SIGINT (Ctrl-C) or SIGTERM, having printed the address and login token.
    """
    if sealed and join != "horizontal":
        raise typer.BadParameter(
            "a sealed model answers queries with every feature column, and in a vertical "
            "demo no party holds them all: use --sealed with --join horizontal",
            param_hint="'--sealed'",
        )
    options = Options(split_by, parties, rounds, join, sealed, dashboard)
    if data is None:
        with default_data() as bundled:
            label = label or DEFAULT_LABEL
            id_column = id_column or DEFAULT_ID
            if join == "horizontal":
                options.split_by = split_by or DEFAULT_SPLIT
            return _main(bundled, label, id_column, options, workdir, True)
    return _main(data, label, id_column, options, workdir, False)


def _main(
    data: Path,
    label: str | None,
    id_column: str | None,
    options: Options,
    workdir: Path | None,
    default: bool,
) -> int:
    if label is None:
        raise typer.BadParameter("required with --data", param_hint="'--label'")
    if options.join == "vertical" and id_column is None:
        raise typer.BadParameter(
            "a vertical join matches rows by an id column: name it", param_hint="'--id'"
        )
    keep = workdir is not None
    root = workdir or Path(tempfile.mkdtemp(prefix="detente-demo-"))
    if root.exists() and any(root.iterdir()):
        raise typer.BadParameter(
            f"{root} is not empty; choose a new folder", param_hint="'--workdir'"
        )
    root.mkdir(parents=True, exist_ok=True)
    try:  # a DemoError or ClusterError reaches the CLI's handler (protocols.cli_convention)
        return _run(data, label, id_column, options, root, default)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _run(
    data: Path, label: str, id_column: str | None, options: Options, root: Path, default: bool
) -> int:
    import pyarrow.csv as pacsv

    started = time.perf_counter()
    table = pacsv.read_csv(data)
    for column in (label, id_column):
        if column is not None and column not in table.column_names:
            raise DemoError(f"column {column!r} is not in {data}")
    if table.column(label).null_count:
        raise DemoError(f"label column {label!r} has missing values")
    task = _task(table.column(label).to_numpy(zero_copy_only=False))
    train, test = _hold_out(table, label, task.classification)
    held_out: dict[str, Any] = {}
    if options.join == "vertical":
        assert id_column is not None
        shared = _vertical_parties(train, label, id_column, options.parties, default)
    else:
        shared = _horizontal_parties(train, options.parties, options.split_by)
        # Each party's own held-out rows, split as its training rows were.
        held_out = dict(split_parties(test, options.parties, options.split_by))
    warn_simulation()

    def report(run: Run) -> int:
        if options.sealed:
            return demo_report.report_sealed(shared, held_out, label, id_column, task, run, started)
        return demo_report.report(shared, test, label, id_column, options.join, task, run, started)

    return _run_cluster(shared, held_out, root, label, id_column, options, task, started, report)


def _run_cluster(
    shared: list[Party],
    held_out: dict[str, Any],
    root: Path,
    label: str,
    id_column: str | None,
    options: Options,
    task: Task,
    started: float,
    report: Callable[[Run], int],
) -> int:
    """Start the roles, drive every party through the real CLI, and report what they got.

    With ``options.dashboard`` (a port), keep the roles running after the report
    until SIGINT or SIGTERM, so the operator can look around the dashboard.
    """
    from party_client import fetch_job
    from party_client.home import PartyHome

    run = Run()
    port = options.dashboard
    board = ["--dashboard", f"127.0.0.1:{port}"] if port is not None else None
    with cluster(root) as c:
        roles = start_roles(c, root, board)
        run.timings["start"] = time.perf_counter() - started
        homes = {p.name: _contribute(c, roles, root, p, label, id_column, run) for p in shared}
        first = next(iter(homes.values()))
        budgets = {
            p.name: QUERY_BUDGET_FACTOR * held_out[p.name].num_rows
            for p in shared
            if options.sealed
        }
        job_id = _propose(c, first, shared, label, id_column, options, task, budgets)
        t0 = time.perf_counter()
        for home in homes.values():
            c.run(["party", "approve", job_id, "--yes"], home)
        for name, home in homes.items():
            out = home / "results"
            args = ["party", "results", job_id, "--out", str(out), "--wait", str(JOB_TIMEOUT)]
            written = json.loads(c.run([*args, "--json"], home))
            if not options.sealed:
                run.models[name] = Path(written["model"]).read_bytes()
        run.timings["job"] = time.perf_counter() - t0
        if options.sealed:
            t0 = time.perf_counter()
            for party in shared:
                job = (job_id, label, id_column)
                _score_held_out(c, homes[party.name], party, held_out[party.name], job, run)
            run.timings["queries"] = time.perf_counter() - t0
        run.status = json.loads(c.run(["party", "status", job_id, "--json"], first))
        run.terms = _with_home(first, lambda: fetch_job(PartyHome.default(), job_id)).terms
        code = report(run)
        if port is not None:
            _serve_dashboard(c, roles)
    return code


def _serve_dashboard(c: Cluster, roles: Roles) -> None:
    """Print the dashboard's address and token; wait for SIGINT/SIGTERM or a role's exit.

    The cluster then stops every role by its process id (detente.cluster).
    """
    import signal
    import threading

    from coordinator.dashboard import TOKEN_FILE_NAME
    from coordinator.dashboard.service import URL_FILE_NAME

    home = roles.coordinator_home
    url = (home / URL_FILE_NAME).read_text().strip()
    token = (home / TOKEN_FILE_NAME).read_text().strip()
    print()
    print(f"dashboard: {url}")
    print(f"login token: {token}  (also in {home / TOKEN_FILE_NAME}, mode 0600)")
    print("the coordinator and the enclave keep running; Ctrl-C stops them", flush=True)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Bounded by the roles: if one of them exits, there is nothing left to show.
        while not stopping.wait(0.5):
            if any(p.popen.poll() is not None for p in c.processes):
                print("a role exited: stopping the demo", flush=True)
                break
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("stopping the coordinator and the enclave", flush=True)


def _contribute(
    c: Cluster, roles: Roles, root: Path, party: Party, label: str, id_column: str | None, run: Run
) -> Path:
    """`init`, `attest` and `upload` as ``party``; returns its home."""
    import pyarrow.csv as pacsv

    home = root / f"party-{party.name}"
    home.mkdir()
    csv_path = home / f"{party.name}.csv"
    pacsv.write_csv(party.table, csv_path)
    roles.init_party(c, party.name, home)
    t0 = time.perf_counter()
    c.run(["party", "attest", "--explain"], home)
    t1 = time.perf_counter()
    args = ["party", "upload", str(csv_path), "--dataset-id", party.dataset_id, "--json"]
    args += ["--label", label] if party.has_label else []
    args += ["--id", id_column] if id_column else []
    uploaded = json.loads(c.run(args, home))
    run.timings["attest"] = run.timings.get("attest", 0.0) + t1 - t0
    run.timings["upload"] = run.timings.get("upload", 0.0) + time.perf_counter() - t1
    print(f"{party.name}: uploaded {uploaded['rows']} rows as {uploaded['dataset_id']}")
    return home


def _propose(
    c: Cluster,
    home: Path,
    shared: list[Party],
    label: str,
    id_column: str | None,
    options: Options,
    task: Task,
    budgets: dict[str, int],
) -> str:
    args = ["party", "propose", "--label", label, "--rounds", str(options.rounds), "--json"]
    args += ["--join", options.join, "--objective", task.objective]
    # The owners let the coordinator see the metric while it trains: the dashboard's curve.
    args += ["--live-metrics", "--metrics-every", str(max(1, options.rounds // 20))]
    if options.sealed:
        # Nobody takes the model home; each party may score its held-out rows (twice over).
        args += ["--sealed", "--output", "metrics"]
        for name, rows in budgets.items():
            args += ["--query", f"{name}={rows}"]
    else:
        args += ["--output", "model", "--output", "metrics"]
    for key, value in task.params.items():
        args += ["--param", f"{key}={value}"]
    for party in shared:
        args += ["--dataset", party.dataset_id]
    if id_column:
        args += ["--id", id_column]
    return str(json.loads(c.run(args, home))["job_id"])


def _score_held_out(
    c: Cluster, home: Path, party: Party, rows: Any, job: tuple[str, str, str | None], run: Run
) -> None:
    """`detente party predict` as ``party`` on its own held-out rows (the label dropped, the
    ids kept at home by --id); the answers and the budget left go to ``run``."""
    import pyarrow.csv as pacsv

    job_id, label, id_column = job
    path, out = home / "held-out.csv", home / "held-out.predictions.csv"
    pacsv.write_csv(rows.drop_columns([label]), path)
    args = ["party", "predict", job_id, str(path), "--out", str(out), "--json"]
    args += ["--id", id_column] if id_column else []
    answer = json.loads(c.run(args, home))
    run.answers[party.name] = pacsv.read_csv(out)
    run.remaining[party.name] = answer["remaining"]


def _with_home(home: Path, fn: Any) -> Any:
    previous = os.environ.get("DETENTE_HOME")
    os.environ["DETENTE_HOME"] = str(home)
    try:
        return fn()
    finally:
        if previous is None:
            del os.environ["DETENTE_HOME"]
        else:
            os.environ["DETENTE_HOME"] = previous
