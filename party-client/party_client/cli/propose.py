"""`detente party propose`: job terms written by one party, from a job file or from options.

A job file (`propose --template` writes a commented one) and the options say
the same things and go through the same checks (:class:`party_client.JobSpec`).
They are never mixed: a job file with an option that would change its terms
is a usage error, so that what is proposed is exactly what the file says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import party_client as party
from party_client.cli.consent import print_review
from party_client.cli.options import PolicyOption
from protocols.cli_convention import JsonOption, UsageError, emit_json, out

# The options that write terms, with their flags: none of them goes with a job file.
TERM_OPTIONS = {
    "dataset": "--dataset",
    "label": "--label",
    "join": "--join",
    "id_column": "--id",
    "objective": "--objective",
    "rounds": "--rounds",
    "seed": "--seed",
    "param": "--param",
    "min_rows": "--min-rows",
    "validation_fraction": "--validation-fraction",
    "early_stopping_rounds": "--early-stopping-rounds",
    "metrics_every": "--metrics-every",
    "live_metrics": "--live-metrics",
    "recipient": "--recipient",
    "output": "--output",
    "model_format": "--model-format",
    "sealed": "--sealed",
    "query": "--query",
    "answer": "--answer",
    "digits": "--digits",
    "job_id": "--job-id",
    "max_seconds": "--max-seconds",
}


def propose(
    ctx: typer.Context,
    job_file: Annotated[
        Path | None,
        typer.Argument(
            help="A job file (TOML) with the job's terms; with --template, the file to write",
            show_default=False,
        ),
    ] = None,
    template: Annotated[
        bool,
        typer.Option(
            "--template",
            help="Write a commented job file to JOB_FILE (or print it) and propose nothing",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the terms as proposing would, and show them in plain words; send nothing",
        ),
    ] = False,
    dataset: Annotated[
        list[str] | None,
        typer.Option(help="Data set id, or OWNER/ID (repeat, in join order)"),
    ] = None,
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
    """Propose an XGBoost job, from a job file or options; every data owner must approve it.

    `detente party propose --template job.toml` writes a commented job file
    that says everything the options say; `detente party propose job.toml`
    proposes what it says, and --dry-run shows the terms in plain words and
    what was checked, proposing nothing. A job file goes with --policy,
    --dry-run and --json only: an option that would change its terms is a
    usage error (exit 2), never silently merged.

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
    given = [flag for name, flag in TERM_OPTIONS.items() if _given(ctx, name)]
    if template:
        _template(job_file, given, dry_run, json_out)
        return
    if job_file is not None:
        if given:
            raise UsageError(
                f"{job_file} holds the job's terms, and {', '.join(given)} would change them: "
                "write them in the file instead (a job file and term options are never mixed)"
            )
        spec = party.load_job_file(job_file)
    elif not dataset:
        raise UsageError(
            "name the data sets with --dataset (repeat), or give a job file: `detente party "
            "propose JOB.toml` (`detente party propose --template JOB.toml` writes one)"
        )
    else:
        from protocols.documents.terms import ANSWERS, JOINS, MODEL_FORMATS, OUTPUTS
        from protocols.objectives import OBJECTIVES

        _choice("--join", join, JOINS)
        _choice("--objective", objective, OBJECTIVES)
        _choice("--model-format", model_format, MODEL_FORMATS)
        _choice("--answer", answer, ANSWERS)
        for item in output or []:
            _choice("--output", item, OUTPUTS)
        every, each = _id_columns(id_column or [], [d.rpartition("/")[2] for d in dataset])
        spec = party.JobSpec(
            datasets=dataset,
            job_id=job_id,
            join=join,
            label=label,
            id_column=every,
            id_columns=each,
            objective=objective,
            rounds=rounds,
            seed=seed,
            params=_params(param or []),
            min_rows=min_rows,
            max_seconds=max_seconds,
            validation_fraction=validation_fraction,
            early_stopping_rounds=early_stopping_rounds,
            metrics_every=metrics_every,
            live_metrics=live_metrics,
            recipients=recipient,
            outputs=output,
            model_format=model_format,
            sealed=sealed,
            queriers=[_grant(item) for item in query or []],
            answer=answer,
            digits=digits,
        )
    home = party.PartyHome.default()
    done = party.propose_spec(home, home.policy(policy), spec, dry_run=dry_run)
    if dry_run:
        _show_dry_run(done, job_file, json_out)
    elif json_out:
        emit_json({"job_id": done.terms.job_id})
    else:
        job_id = done.terms.job_id
        out.print(f"proposed {job_id}; next: each owner runs `detente party approve {job_id}`")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (on the command line or by its environment
    variable), not left to its default. By the source's name: Typer bundles its own click,
    whose ParameterSource is not click's."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _template(job_file: Path | None, given: list[str], dry_run: bool, json_out: bool) -> None:
    """--template: the job file to FILE (--json: ``{"written": FILE}``), or printed (--json:
    ``{"template": TEXT}``)."""
    if given or dry_run:
        extra = ", ".join([*given, *(["--dry-run"] if dry_run else [])])
        raise UsageError(f"--template writes a job file and proposes nothing: drop {extra}")
    if job_file is None:
        if json_out:
            emit_json({"template": party.jobfile_template()})
        else:
            sys.stdout.write(party.jobfile_template())
        return
    party.write_template(job_file)
    if json_out:
        emit_json({"written": str(job_file)})
        return
    out.print(
        f"wrote {job_file}: edit it, then check it with `detente party propose {job_file} "
        "--dry-run`",
        highlight=False,
        markup=False,
    )


def _show_dry_run(done: party.Proposal, job_file: Path | None, json_out: bool) -> None:
    reviewed = done.review
    assert reviewed is not None
    owners = {d.owner_key: d.owner_name or d.owner_key[:16] + "…" for d in reviewed.datasets}
    if json_out:
        emit_json(
            {
                "dry_run": True,
                "proposed": False,
                "job_id": done.terms.job_id,
                "terms": json.loads(json.dumps(done.terms.to_dict(), default=str)),
                "review": reviewed.to_dict(),
                "checks": done.checks,
                "approvers": list(owners.values()),
            }
        )
        return
    out.print("[bold]DRY RUN[/]: nothing was proposed; these terms would be:", highlight=False)
    print_review(reviewed, refused="you could not approve")
    out.print(
        f"  must be approved by: {', '.join(owners.values())} (each data owner)",
        highlight=False,
        markup=False,
    )
    out.print("checked:")
    for check in done.checks:
        out.print(f"  ok  {check}", highlight=False, markup=False)
    out.print(
        "when proposed, the coordinator also checks the terms' expiry and its limits "
        "(rounds × rows, seconds); each owner checks them again before it approves"
    )
    again = (
        f"`detente party propose {job_file}`" if job_file else "the same command without --dry-run"
    )
    out.print(f"next: propose them with {again}", highlight=False, markup=False)


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
