"""`detente party propose` and `approve`: job terms written by one party, consented to by each."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

import party_client as party
from party_client.cli.options import PolicyOption
from party_client.pins import show_fingerprint
from protocols.cli_convention import EXIT_ERROR, JsonOption, emit_json, err, out

if TYPE_CHECKING:
    from protocols.documents import JobTerms


def propose(
    dataset: Annotated[list[str], typer.Option(help="Data set id (repeat, in join order)")],
    label: Annotated[
        str | None,
        typer.Option(help="Label column (default: the one the data sets' manifests name)"),
    ] = None,
    join: Annotated[
        str,
        typer.Option(
            help="horizontal: the data sets' rows together (same columns); vertical: their "
            "columns, on the rows whose ids all of them hold"
        ),
    ] = "horizontal",
    id_column: Annotated[
        list[str] | None,
        typer.Option(
            "--id",
            help="Identifier column: COL for every data set, or DATASET=COL for one (repeat)",
        ),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            help="XGBoost objective, e.g. binary:logistic, multi:softprob, reg:squarederror"
        ),
    ] = "binary:logistic",
    rounds: Annotated[int, typer.Option(help="Boosting rounds")] = 200,
    seed: Annotated[int, typer.Option(help="Training seed")] = 0,
    param: Annotated[
        list[str] | None,
        typer.Option(help="XGBoost parameter KEY=VALUE (e.g. max_depth=6, num_class=4)"),
    ] = None,
    min_rows: Annotated[
        int,
        typer.Option("--min-rows", min=1, help="Refuse to train on fewer (joined) rows than this"),
    ] = 1,
    validation_fraction: Annotated[
        float,
        typer.Option(
            "--validation-fraction",
            min=0.0,
            max=0.5,
            help="Rows held out inside the enclave for validation (by seed; per class for "
            "classification)",
        ),
    ] = 0.0,
    early_stopping_rounds: Annotated[
        int | None,
        typer.Option(
            "--early-stopping-rounds",
            min=1,
            help="Stop when the validation metric has not improved for this many rounds",
        ),
    ] = None,
    metrics_every: Annotated[
        int | None,
        typer.Option(
            "--metrics-every", min=1, help="Released metrics every N rounds (default: at the end)"
        ),
    ] = None,
    live_metrics: Annotated[
        bool,
        typer.Option(
            "--live-metrics",
            help="Let the enclave show the metrics to the coordinator IN THE CLEAR while it "
            "trains (its operator and dashboard see them; needs --output metrics and "
            "--metrics-every)",
        ),
    ] = False,
    recipient: Annotated[
        list[str] | None, typer.Option(help="Party to receive the results (default: all owners)")
    ] = None,
    output: Annotated[
        list[str] | None,
        typer.Option(
            help="Released output (repeat): model, metrics, importance, predictions "
            "(each owner its own rows'); default: model, or nothing with --sealed"
        ),
    ] = None,
    model_format: Annotated[
        str, typer.Option("--model-format", help="Released model format: json or ubj")
    ] = "json",
    sealed: Annotated[
        bool,
        typer.Option(
            "--sealed",
            help="Keep the model in the enclave: nobody receives it, the --query parties query it",
        ),
    ] = False,
    query: Annotated[
        list[str] | None,
        typer.Option(
            "--query",
            help="With --sealed: a party that may query the model, NAME=ROWS or "
            "NAME=ROWS/PER_DAY (rows in all, and per UTC day); repeat",
        ),
    ] = None,
    answer: Annotated[
        str,
        typer.Option(
            "--answer",
            help="With --sealed: what a query returns, probability (the model's output) or "
            "class (classification only)",
        ),
    ] = "probability",
    digits: Annotated[
        int | None,
        typer.Option(
            "--digits",
            min=0,
            max=15,
            help="With --answer probability: round answers to this many decimals",
        ),
    ] = None,
    job_id: Annotated[str | None, typer.Option(help="Job id (default: random)")] = None,
    max_seconds: Annotated[
        int | None,
        typer.Option(
            "--max-seconds", min=1, help="Longest the job may run (default: the coordinator's)"
        ),
    ] = None,
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Propose an XGBoost job over data sets; every owner must approve it.

    The terms are checked against the data sets' signed manifests first (the
    objective against their labels, the label's place, --min-rows against
    their rows): nothing is proposed that the enclave would refuse. Without
    --recipient the results go to exactly the data owners, and the proposal
    fails if an owner's registration is missing.

    With --sealed the model stays in the enclave: nobody takes it home, not
    even its owners; the parties named by --query score rows with it (`detente
    party predict`) within their budgets, and the owners retire it together
    (`detente party retire`).
    """
    from protocols.documents.terms import ANSWERS, JOINS, MODEL_FORMATS, OUTPUTS
    from protocols.objectives import OBJECTIVES

    _choice("--join", join, JOINS)
    _choice("--objective", objective, OBJECTIVES)
    _choice("--model-format", model_format, MODEL_FORMATS)
    _choice("--answer", answer, ANSWERS)
    outputs = output if output is not None else ([] if sealed else ["model"])
    for item in outputs:
        _choice("--output", item, OUTPUTS)
    grants = [_grant(item) for item in query or []]
    every, each = _id_columns(id_column or [], dataset)
    params = _params(param or [])
    home = party.PartyHome.default()
    terms = party.propose(
        home,
        home.policy(policy),
        dataset,
        label,
        every,
        rounds,
        params,
        seed,
        recipient,
        outputs,
        job_id,
        max_seconds=max_seconds,
        join=join,
        id_columns=each,
        objective=objective,
        min_rows=min_rows,
        validation_fraction=validation_fraction,
        early_stopping_rounds=early_stopping_rounds,
        metrics_every=metrics_every,
        model_format=model_format,
        sealed=sealed,
        queriers=grants,
        answer=answer,
        digits=digits,
        live_metrics=live_metrics,
    )
    if json_out:
        emit_json({"job_id": terms.job_id})
    else:
        out.print(
            f"proposed {terms.job_id}; next: each owner runs `detente party approve {terms.job_id}`"
        )


def _choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise typer.BadParameter(
            f"{value!r} is not one of {', '.join(choices)}", param_hint=f"'{option}'"
        )


def _grant(item: str) -> party.QueryGrant:
    """--query NAME=ROWS or NAME=ROWS/PER_DAY (digits may be grouped with _ or ,)."""
    name, sep, budget = item.partition("=")
    total, slash, per_day = budget.partition("/")
    try:
        if not sep or not name:
            raise ValueError
        rows = int(total.replace(",", ""))
        daily = int(per_day.replace(",", "")) if slash else None
    except ValueError:
        raise typer.BadParameter(
            f"{item!r} must be NAME=ROWS or NAME=ROWS/PER_DAY, for example bank-b=10000/1000",
            param_hint="'--query'",
        ) from None
    return party.QueryGrant(name, rows, daily)


def _params(items: list[str]) -> dict[str, Any]:
    """--param KEY=VALUE, each VALUE read as JSON if it is JSON, else as a string."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param {item!r} must be KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _id_columns(items: list[str], datasets: list[str]) -> tuple[str | None, dict[str, str]]:
    """--id COL (every data set) and --id DATASET=COL (one): the terms' id_column and
    id_columns."""
    every: str | None = None
    each: dict[str, str] = {}
    for item in items:
        dataset_id, sep, column = item.partition("=")
        if not sep:
            if every is not None:
                raise typer.BadParameter(
                    f"{every!r} and {item!r} both name the id column of every data set; name "
                    "one data set's with DATASET=COL",
                    param_hint="'--id'",
                )
            every = item
            continue
        if dataset_id not in datasets or not column:
            raise typer.BadParameter(
                f"{item!r} must be DATASET=COL with DATASET one of --dataset "
                f"({', '.join(datasets)})",
                param_hint="'--id'",
            )
        if dataset_id in each:
            raise typer.BadParameter(f"data set {dataset_id!r} is named twice", param_hint="'--id'")
        each[dataset_id] = column
    return every, each


def approve(
    job_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Approve without asking")] = False,
    accept_warnings: Annotated[
        bool,
        typer.Option(
            "--accept-warnings",
            help="With --yes: approve even if the review warns (for example, you receive nothing)",
        ),
    ] = False,
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show a job's terms, check them, and sign your approval of exactly what was shown.

    The terms are fetched once; the approval signs the digest of that very
    envelope. Refused without asking: your data set named with another
    manifest, an enclave your policy does not allow, a recipient that uses
    your name or key with other keys, a recipient whose keys differ from the
    ones you pinned for its name (see `detente party parties`), an owner left
    out of terms that release to the owners. A sealed model's queriers are
    checked as recipients are, and listed with their budgets.
    """
    home = party.PartyHome.default()
    checked = home.policy(policy)
    reviewed = party.review(home, checked, party.fetch_job(home, job_id))
    if json_out:
        emit_json(reviewed.to_dict())
    else:
        _print_review(reviewed)
    if reviewed.refusals:
        raise typer.Exit(EXIT_ERROR)
    accepted = accept_warnings
    if not yes:
        question = "Approve these exact terms?"
        if reviewed.warnings:
            question = f"Approve these exact terms, although {len(reviewed.warnings)} warning(s)?"
        if not typer.confirm(question):
            raise typer.Exit(EXIT_ERROR)
        accepted = True
    job = party.sign_approval(home, reviewed, accept_warnings=accepted)
    if not json_out:
        out.print(
            f"approved {job_id} ({len(job.approvers)}/{len(job.required_approvers)} approvals, "
            f"{job.state})"
        )


def _training(terms: JobTerms) -> str:
    """The join, the objective and the rounds, as the review states them."""
    how = (
        "vertical join (the columns of all data sets, on the rows whose ids all of them hold)"
        if terms.join == "vertical"
        else "horizontal join (the rows of all data sets)"
    )
    return (
        f"{how}, objective {terms.objective}, label {terms.label!r}, {terms.num_rounds} rounds, "
        f"seed {terms.seed}"
    )


def _checks(terms: JobTerms) -> str:
    """Validation, early stopping, the metrics stride and the minimum rows."""
    parts = []
    if terms.validation_fraction > 0:
        parts.append(f"{terms.validation_fraction:.0%} of the rows held out for validation")
    else:
        parts.append("no validation rows")
    if terms.early_stopping_rounds:
        parts.append(f"early stopping after {terms.early_stopping_rounds} rounds without gain")
    every = f"every {terms.metrics_every} rounds" if terms.metrics_every else "at the end"
    parts.append(f"metrics {every}")
    parts.append(f"refuses fewer than {terms.min_rows} rows")
    return "; ".join(parts)


def _live_metrics(terms: JobTerms) -> str:
    """Whether the coordinator sees the metrics while the job trains, in plain words."""
    if not terms.live_metrics:
        return "none: the coordinator sees the rounds done, never a metric"
    names = terms.params.get("eval_metric", "the objective's default metric")
    names = ", ".join(map(str, names)) if isinstance(names, list) else str(names)
    rows = "validation rows" if terms.validation_fraction > 0 else "training rows"
    return (
        f"the enclave reports {names} on the {rows} every {terms.metrics_every} rounds to the "
        "coordinator IN THE CLEAR, rounded to 4 significant digits: its operator, its "
        "dashboard and its database see them while the job trains"
    )


def _answer(terms: JobTerms) -> str:
    """What an answer to a query of the sealed model holds."""
    if terms.answer == "class":
        return "the class only"
    what = "probabilities" if terms.objective.startswith(("binary:", "multi:")) else "values"
    if terms.answer_digits is None:
        return f"the model's {what}, unrounded"
    return f"the model's {what}, rounded to {terms.answer_digits} decimals"


def _print_model(reviewed: party.Review) -> None:
    """A sealed model, stated plainly: nobody receives it; who queries it, how much, and what."""
    terms = reviewed.job.terms
    p = out.print
    if not terms.sealed:
        return
    p(
        f"  model: [bold]SEALED[/] in the enclave as {terms.job_id!r}: nobody receives it, "
        "not even you; the parties below may query it, and every data owner must sign to "
        "retire it",
        highlight=False,
    )
    p(f"  each answer holds: {_answer(terms)}", highlight=False, markup=False)
    p("  may query it:")
    for q in reviewed.queriers:
        role = "you" if q.you else ("data owner" if q.owner else "not a data owner")
        daily = f", at most {q.rows_per_day:,} a day" if q.rows_per_day is not None else ""
        pin = {"pinned": "matches your pin", "new": "first seen: will be pinned"}.get(q.pin, q.pin)
        p(
            f"    {q.name} ({role}): {q.total_rows:,} rows in all{daily}; fingerprint "
            f"{show_fingerprint(q.fingerprint)} — {pin}",
            highlight=False,
            markup=False,
        )


def _print_review(reviewed: party.Review) -> None:
    """What approving means, as the party reads it before it signs."""
    terms = reviewed.job.terms
    p = out.print
    p(f"[bold]job {terms.job_id}[/] ({reviewed.job.state})")
    p(f"  terms digest: {reviewed.job.terms_digest}", highlight=False)
    p(f"  proposer: {terms.proposer[:16]}…", highlight=False)
    p(f"  trains: {_training(terms)}", highlight=False, markup=False)
    p(f"  checks: {_checks(terms)}", highlight=False, markup=False)
    p(f"  live metrics: {_live_metrics(terms)}", highlight=False, markup=False)
    p(f"  parameters: {json.dumps(terms.params, sort_keys=True)}", highlight=False, markup=False)
    expires = datetime.fromtimestamp(terms.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    limit = f", at most {terms.max_seconds} s" if terms.max_seconds else ""
    p(
        f"  enclave: {', '.join(terms.allowed_mrenclaves)}; expires {expires}{limit}",
        highlight=False,
    )
    p("  data sets:")
    for d in reviewed.datasets:
        who = "you" if d.yours else (d.owner_name or "unregistered owner")
        ids = terms.id_column_of(d.dataset_id)
        keyed = f", ids in {ids!r}" if ids else ""
        p(
            f"    {d.dataset_id}: {d.rows} rows{keyed}, owner {who} ({d.owner_key[:16]}…)",
            highlight=False,
            markup=False,
        )
    _print_model(reviewed)
    to = "the data owners" if terms.release_to == "owners" else "the named recipients"
    p(f"  releases {', '.join(terms.outputs) or 'nothing'} to {to}:")
    for r in reviewed.recipients:
        role = "you" if r.you else ("data owner" if r.owner else "not a data owner")
        pin = {"pinned": "matches your pin", "new": "first seen: will be pinned"}.get(r.pin, r.pin)
        p(
            f"    {r.name} ({role}), fingerprint {show_fingerprint(r.fingerprint)} — {pin}",
            highlight=False,
        )
    for output, names in reviewed.releases().items():
        what = f"model ({terms.model_format})" if output == "model" else output
        if output.startswith("predictions."):
            what += " (its owner's rows)"
        p(f"    {what} → {', '.join(names) or 'nobody'}", highlight=False, markup=False)
    for warning in reviewed.warnings:
        p(f"  [bold yellow]warning:[/] {warning}", highlight=False)
    for refusal in reviewed.refusals:
        err.print(f"  [bold red]refused:[/] {refusal}", highlight=False)
