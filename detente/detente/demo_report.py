"""What `detente demo` prints once the flow ran: each party alone, the joint model, and
whether the enclave's model (or, with --sealed, its answers) equals plaintext XGBoost."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # detente.demo imports this module: its types only for the checker
    from detente.demo import Party, Run, Task


def _plaintext(named: list[tuple[str, Any]], label: str, id_column: str | None, join: str) -> Any:
    """The joined rows as the enclave joins them (protocols.training), in plaintext."""
    from protocols import training

    ids = {dataset_id: id_column for dataset_id, _ in named}
    if join == "vertical":
        return training.join_vertical(named, ids, label)
    return training.join_horizontal(named, ids)


def _fit(joined: Any, label: str, terms: Any) -> Any:
    """XGBoost trained in plaintext on ``joined`` with the terms' parameters, and a function
    predicting rows with it as the enclave would (protocols.training's categories)."""
    import xgboost as xgb

    from protocols import training

    x, y, names = training.training_table(joined, label)
    categories = {
        n: training.categories_of([joined], n)
        for n in names
        if training.is_categorical(joined.schema.field(n).type)
    }
    model = xgb.train(
        terms.train_params(),
        xgb.DMatrix(x, label=y, enable_categorical=True),
        num_boost_round=terms.num_rounds,
    )

    def ready(rows: Any) -> Any:
        table = training.prediction_table(rows, categories, names)
        return xgb.DMatrix(table, enable_categorical=True)

    return model, ready


def _fit_and_score(joined: Any, test: Any, label: str, terms: Any, task: Task) -> tuple[Any, float]:
    """Train in plaintext on ``joined`` with the terms' parameters; predict and score ``test``."""
    model, ready = _fit(joined, label, terms)
    matrix = ready(test)
    truth = test.column(label).to_numpy(zero_copy_only=False)
    predictions = model.predict(matrix)
    return (predictions, matrix), task.score(truth, predictions)


def report(
    shared: list[Party],
    test: Any,
    label: str,
    id_column: str | None,
    join: str,
    task: Task,
    run: Run,
    started: float,
) -> int:
    import numpy as np
    import xgboost as xgb

    if len(set(run.models.values())) != 1:
        from detente.demo import DemoError

        raise DemoError("recipients decrypted different models")
    terms = run.terms
    named = [(p.dataset_id, p.table) for p in shared]
    joined = _plaintext(named, label, id_column, join)
    print()
    for party in shared:
        alone = (
            party.table if join == "horizontal" else _with_label(party, joined, label, id_column)
        )
        own = alone.drop_columns([id_column]) if id_column in alone.column_names else alone
        _, score = _fit_and_score(own, test, label, terms, task)
        # Vertically, only one party holds the label: the others' figure is what their
        # columns alone would reach if they had it.
        who = f"{party.name} alone" if join == "horizontal" else f"{party.name}'s columns alone"
        print(f"{who} ({party.about}): {task.score_name} {score:.4f}")
    (plain, ready), _ = _fit_and_score(joined, test, label, terms, task)
    enclave_model = xgb.Booster()
    enclave_model.load_model(bytearray(next(iter(run.models.values()))))
    joint = enclave_model.predict(ready)
    truth = test.column(label).to_numpy(zero_copy_only=False)
    print(
        f"joint model from the enclave ({joined.num_rows} rows): "
        f"{task.score_name} {task.score(truth, joint):.4f}"
    )
    identical = bool(np.array_equal(joint, plain))
    print(f"identical to plaintext: {'yes' if identical else 'no'}")
    _print_timings(run, started)
    return 0 if identical else 1


def report_sealed(
    shared: list[Party],
    held_out: dict[str, Any],
    label: str,
    id_column: str | None,
    task: Task,
    run: Run,
    started: float,
) -> int:
    """Each party's score on its own held-out rows through the sealed model, the budget left,
    and whether every answer equals what the same model trained in plaintext predicts."""
    import numpy as np

    named = [(p.dataset_id, p.table) for p in shared]
    joined = _plaintext(named, label, id_column, "horizontal")
    model, ready = _fit(joined, label, run.terms)
    print()
    print(f"model sealed in the enclave ({joined.num_rows} rows), released to nobody")
    identical = True
    for party in shared:
        rows = held_out[party.name]
        answers = run.answers[party.name]
        columns = [n for n in answers.column_names if n.startswith("prediction")]
        enclave = np.column_stack(
            [answers.column(n).to_numpy(zero_copy_only=False) for n in columns]
        ).astype(np.float32)
        if enclave.shape[1] == 1:
            enclave = enclave[:, 0]
        plain = model.predict(ready(rows))
        identical = identical and bool(np.array_equal(enclave, plain))
        truth = rows.column(label).to_numpy(zero_copy_only=False)
        left = run.remaining[party.name]
        print(
            f"{party.name} scored its {rows.num_rows:,} held-out rows through the enclave: "
            f"{task.score_name} {task.score(truth, enclave):.4f}; budget left "
            f"{left['total_rows']:,} rows"
        )
    print(f"identical to plaintext: {'yes' if identical else 'no'}")
    _print_timings(run, started)
    return 0 if identical else 1


def _with_label(party: Party, joined: Any, label: str, id_column: str | None) -> Any:
    """A party's columns on the joined rows, with the label: what it could learn alone."""
    names = [n for n in party.table.column_names if n not in (label, id_column)]
    return joined.select([*names, label])


def _print_timings(run: Run, started: float) -> None:
    timings = {
        e["text"].split()[0]: e["text"].split()[1]
        for e in run.status.get("events", [])
        if e["kind"] == "timing" and len(e["text"].split()) > 1
    }
    t = run.timings
    print()
    print(
        f"wall time {time.perf_counter() - started:.1f}s: start {t['start']:.1f}s, "
        f"attest {t['attest']:.2f}s, upload {t['upload']:.2f}s, "
        f"approve+train+release+download {t['job']:.1f}s"
        + (f", queries {t['queries']:.2f}s " if "queries" in t else " ")
        + f"(in the enclave: {', '.join(f'{k} {v}' for k, v in timings.items())})"
    )
