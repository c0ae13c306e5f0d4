"""The three-party demo: every role a real process, every party step the real CLI.

Steps: split a CSV into N parties (by a column's values, or in contiguous
blocks), hold out a stratified 20 % test set, start a coordinator and a
SIMULATION enclave worker (detente.cluster), then for each party `init`,
`attest`, `upload`; one party proposes, all approve, all fetch and decrypt the
model. Finally the demo compares the enclave's model with XGBoost trained in
plaintext on the same joined rows with the same parameters: predictions must
be identical.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from detente.cluster import cluster, start_roles
from detente.evaluation import roc_auc, stratified_split
from protocols.cli_convention import warn_simulation
from protocols.errors import DetenteError

__all__ = [
    "DEFAULT_ID",
    "DEFAULT_LABEL",
    "DEFAULT_SPLIT",
    "DemoError",
    "default_data",
    "features",
    "main",
    "split_parties",
]

DEFAULT_DATA_FILE = "UCI_Credit_Card.csv"
DEFAULT_LABEL = "default.payment.next.month"
DEFAULT_ID = "ID"
DEFAULT_SPLIT = "EDUCATION"
TEST_FRACTION = 0.2
SPLIT_SEED = 0
JOB_TIMEOUT = 900.0


class DemoError(DetenteError):
    """The demo's data or options do not allow the run (a missing column, too few groups)."""


@contextmanager
def default_data() -> Iterator[Path]:
    """The bundled UCI credit data set as a file (package data, read where it is installed)."""
    resource = importlib.resources.files("detente") / "data" / DEFAULT_DATA_FILE
    with importlib.resources.as_file(resource) as path:
        yield path


def split_parties(table: Any, parties: int, split_by: str | None) -> list[tuple[str, Any]]:
    """Rows → N parties: by the values of ``split_by`` (largest groups first), or in blocks."""
    import numpy as np
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
    out = []
    for i, values in enumerate(groups):
        mask = pc.is_in(table.column(split_by), value_set=__import__("pyarrow").array(values))
        out.append((f"party{i + 1}", table.filter(mask)))
    return out


def features(table: Any, label: str, id_column: str | None) -> tuple[Any, Any, list[str]]:
    """Plaintext feature rule: every column but label and id, in order, as float32."""
    import numpy as np

    names = [n for n in table.column_names if n not in (label, id_column)]
    x = np.column_stack(
        [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in names]
    )
    y = table.column(label).to_numpy(zero_copy_only=False).astype(np.float32)
    return x, y, names


def main(
    data: Path | None,
    label: str | None,
    id_column: str | None,
    split_by: str | None,
    parties: int,
    workdir: Path | None,
    rounds: int,
) -> int:
    """Run the demo (`detente demo`); the exit code: 0 when the models are identical."""
    if data is None:
        with default_data() as bundled:
            label = label or DEFAULT_LABEL
            id_column = id_column or DEFAULT_ID
            split_by = split_by or DEFAULT_SPLIT
            return main(bundled, label, id_column, split_by, parties, workdir, rounds)
    if label is None:
        raise typer.BadParameter("required with --data", param_hint="'--label'")
    keep = workdir is not None
    root = workdir or Path(tempfile.mkdtemp(prefix="detente-demo-"))
    if root.exists() and any(root.iterdir()):
        raise typer.BadParameter(
            f"{root} is not empty; choose a new folder", param_hint="'--workdir'"
        )
    root.mkdir(parents=True, exist_ok=True)
    try:  # a DemoError or ClusterError reaches the CLI's handler (protocols.cli_convention)
        return _run(data, label, id_column, split_by, parties, root, rounds)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _run(
    data: Path,
    label: str,
    id_column: str | None,
    split_by: str | None,
    parties: int,
    root: Path,
    rounds: int,
) -> int:
    import numpy as np
    import pyarrow.csv as pacsv
    import xgboost as xgb

    from party_client import fetch_job
    from party_client.home import PartyHome

    started = time.perf_counter()
    table = pacsv.read_csv(data)
    for column in (label, id_column):
        if column is not None and column not in table.column_names:
            raise DemoError(f"column {column!r} is not in {data}")
    y_all = table.column(label).to_numpy(zero_copy_only=False)
    try:
        train_idx, test_idx = stratified_split(y_all, TEST_FRACTION, SPLIT_SEED)
    except ValueError as exc:
        raise DemoError(f"cannot hold out a stratified test set by {label!r}: {exc}") from None
    train = table.take(np.sort(train_idx))
    test = table.take(np.sort(test_idx))
    split = split_parties(train, parties, split_by)
    warn_simulation()

    with cluster(root) as c:
        roles = start_roles(c, root)

        c.timings["start"] = time.perf_counter() - started

        homes: dict[str, Path] = {}
        dataset_ids = []
        t_attest = t_upload = 0.0
        for name, part in split:
            home = root / f"party-{name}"
            homes[name] = home
            home.mkdir()
            csv_path = home / f"{name}.csv"
            pacsv.write_csv(part, csv_path)
            roles.init_party(c, name, home)
            t0 = time.perf_counter()
            c.run(["party", "attest", "--explain"], home)
            t1 = time.perf_counter()
            args = [
                "party",
                "upload",
                str(csv_path),
                "--label",
                label,
                "--dataset-id",
                f"{name}-data",
                "--json",
            ]
            if id_column:
                args += ["--id", id_column]
            uploaded = json.loads(c.run(args, home))
            t_attest += t1 - t0
            t_upload += time.perf_counter() - t1
            dataset_ids.append(uploaded["dataset_id"])
            print(f"{name}: uploaded {uploaded['rows']} rows as {uploaded['dataset_id']}")
        c.timings["attest"], c.timings["upload"] = t_attest, t_upload

        first = next(iter(homes.values()))
        args = [
            "party",
            "propose",
            "--label",
            label,
            "--rounds",
            str(rounds),
            "--json",
            "--output",
            "model",
            "--output",
            "metrics",
        ]
        for dataset_id in dataset_ids:
            args += ["--dataset", dataset_id]
        if id_column:
            args += ["--id", id_column]
        job_id = json.loads(c.run(args, first))["job_id"]
        t0 = time.perf_counter()
        for home in homes.values():
            c.run(["party", "approve", job_id, "--yes"], home)
        models = {}
        for name, home in homes.items():
            out = home / "results"
            written = json.loads(
                c.run(
                    [
                        "party",
                        "results",
                        job_id,
                        "--out",
                        str(out),
                        "--wait",
                        str(JOB_TIMEOUT),
                        "--json",
                    ],
                    home,
                )
            )
            models[name] = Path(written["model"]).read_bytes()
        c.timings["job"] = time.perf_counter() - t0
        status = json.loads(c.run(["party", "status", job_id, "--json"], first))
        terms = _with_home(first, lambda: fetch_job(PartyHome.default(), job_id)).terms

    if len(set(models.values())) != 1:
        raise DemoError("recipients decrypted different models")
    params = terms.train_params()
    x_test, y_test, names = features(test, label, id_column)
    dtest = xgb.DMatrix(x_test, feature_names=names)

    def fit(part: Any) -> Any:
        x, y, names = features(part, label, id_column)
        dtrain = xgb.DMatrix(x, label=y, feature_names=names)
        return xgb.train(params, dtrain, num_boost_round=terms.num_rounds)

    print()
    for name, part in split:
        auc = roc_auc(y_test, fit(part).predict(dtest))
        print(f"{name} alone ({part.num_rows} rows): AUC {auc:.4f}")
    enclave_model = xgb.Booster()
    enclave_model.load_model(bytearray(next(iter(models.values()))))
    joint = enclave_model.predict(dtest)
    print(
        f"joint model from the enclave ({sum(p.num_rows for _, p in split)} rows): "
        f"AUC {roc_auc(y_test, joint):.4f}"
    )
    import pyarrow as pa

    plain = fit(pa.concat_tables([p for _, p in split])).predict(dtest)
    identical = bool(np.array_equal(joint, plain))
    print(f"identical to plaintext: {'yes' if identical else 'no'}")
    timings = {
        e["text"].split()[0]: e["text"].split()[1]
        for e in status["events"]
        if e["kind"] == "timing"
    }
    print()
    print(
        f"wall time {time.perf_counter() - started:.1f}s: start {c.timings['start']:.1f}s, "
        f"attest {c.timings['attest']:.2f}s, upload {c.timings['upload']:.2f}s, "
        f"approve+train+release+download {c.timings['job']:.1f}s "
        f"(in the enclave: {', '.join(f'{k} {v}' for k, v in timings.items())})"
    )
    return 0 if identical else 1


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
