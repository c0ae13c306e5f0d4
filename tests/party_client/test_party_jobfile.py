"""Job files: the template parses, and every bad file is refused naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from party_client.jobfile import (
    TEMPLATE,
    JobFileError,
    JobSpec,
    load_job_file,
    write_template,
)
from party_client.proposal import QueryGrant

SEALED = """
datasets = ["a-data", "b-data"]
model = "sealed"
[release]
outputs = ["metrics"]
[sealed]
answer = "probability"
digits = 3
[sealed.queriers]
alice = 1000
bob = { rows = 500, per_day = 50 }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_the_template_parses_into_every_option(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    write_template(path)
    assert path.read_text() == TEMPLATE
    spec = load_job_file(path)
    assert spec.datasets == ["party1/party1-data", "party2/party2-data"]
    assert (spec.join, spec.objective, spec.label) == (
        "horizontal",
        "binary:logistic",
        "default.payment.next.month",
    )
    assert (spec.rounds, spec.min_rows, spec.validation_fraction) == (50, 100, 0.2)
    assert (spec.early_stopping_rounds, spec.metrics_every) == (10, 10)
    assert spec.live_metrics is False
    assert spec.params == {"max_depth": 4, "eta": 0.1}
    assert spec.outputs == ["model", "metrics"] and not spec.sealed
    with pytest.raises(JobFileError, match="exists"):
        write_template(path)


def test_a_sealed_job_file(tmp_path: Path) -> None:
    spec = load_job_file(write(tmp_path, SEALED))
    assert spec.sealed and spec.released_outputs() == ["metrics"]
    assert spec.queriers == [QueryGrant("alice", 1000), QueryGrant("bob", 500, 50)]
    assert (spec.answer, spec.digits) == ("probability", 3)


def test_every_commented_key_of_the_template_is_a_key(tmp_path: Path) -> None:
    """Uncommenting the template's examples gives a file that still parses."""
    text = TEMPLATE.replace('# job_id = "credit-2026-01"', 'job_id = "credit-2026-01"')
    text = text.replace("# max_seconds = 3600", "max_seconds = 3600")
    text = text.replace('# recipients = ["party1", "party2"]', 'recipients = ["party1", "party2"]')
    text = text.replace("# id_columns = {", "id_columns = {")
    spec = load_job_file(write(tmp_path, text))
    assert spec.job_id == "credit-2026-01" and spec.max_seconds == 3600
    assert spec.recipients == ["party1", "party2"]
    assert spec.id_columns == {"party1-data": "ID", "party2-data": "customer_id"}


BAD = [
    ('datasets = ["a"]\ncolour = "blue"\n', "unknown key(s) 'colour'"),
    ('datasets = ["a"]\n[release]\nrecipient = ["x"]\n', "unknown key(s) [release] 'recipient'"),
    ('datasets = ["a"]\n[validation]\nfrac = 0.1\n', "[validation] 'frac'"),
    ('datasets = ["a"]\n[extra]\nx = 1\n', "unknown key(s) 'extra'"),
    ('datasets = ["a"]\nrounds = "ten"\n', "rounds must be a whole number, not 'ten'"),
    ('datasets = ["a"]\nrounds = true\n', "rounds must be a whole number, not True"),
    ('datasets = ["a"]\nrounds = 0\n', "rounds must be at least 1"),
    ('datasets = "a"\n', "datasets must be a list, not 'a'"),
    ("datasets = []\n", "datasets name at least one data set"),
    ('datasets = ["a"]\njoin = "diagonal"\n', "join is 'diagonal', not one of"),
    ('datasets = ["a"]\nobjective = "rank:magic"\n', "objective is 'rank:magic'"),
    ('datasets = ["a"]\nmin_rows = 0\n', "min_rows must be at least 1"),
    ('datasets = ["a"]\n[validation]\nfraction = 0.7\n', "validation_fraction must be from 0"),
    ('datasets = ["a"]\n[validation]\nmetrics_every = 0\n', "metrics_every must be at least 1"),
    ('datasets = ["a"]\n[validation]\nlive_metrics = 1\n', "live_metrics must be a true or false"),
    ('datasets = ["a"]\n[release]\noutputs = ["weights"]\n', "outputs is 'weights'"),
    ('datasets = ["a"]\n[release]\nmodel_format = "pickle"\n', "model_format is 'pickle'"),
    ('datasets = ["a"]\n[id_columns]\nb = "ID"\n', "id_columns names data set 'b'"),
    ('datasets = ["a"]\n[params]\n', None),  # an empty [params] is fine
    ('datasets = ["a"]\nmodel = "hidden"\n', "model is 'hidden'"),
    ('datasets = ["a"]\nmodel = "sealed"\n', 'model = "sealed" needs a [sealed.queriers]'),
    ('datasets = ["a"]\n[sealed]\nanswer = "class"\n', 'and model is "released"'),
    (
        'datasets = ["a"]\nmodel = "sealed"\n[sealed.queriers]\nbob = "lots"\n',
        "[sealed.queriers] bob must be a number of rows",
    ),
    (
        'datasets = ["a"]\nmodel = "sealed"\n[sealed.queriers]\nbob = { rows = 5, daily = 1 }\n',
        "[sealed.queriers.bob] 'daily'",
    ),
    (
        'datasets = ["a"]\nmodel = "sealed"\n[sealed]\ndigits = 99\n[sealed.queriers]\nb = 1\n',
        "digits must be at most 15",
    ),
    ('datasets = ["a"\n', "is not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_job_file_is_refused_naming_the_key(
    tmp_path: Path, text: str, message: str | None
) -> None:
    path = write(tmp_path, text)
    if message is None:
        assert load_job_file(path).params == {}
        return
    with pytest.raises(JobFileError) as err:
        load_job_file(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="cannot read the job file"):
        load_job_file(tmp_path / "none.toml")


def test_options_go_through_the_same_checks() -> None:
    with pytest.raises(JobFileError, match="the options: validation_fraction"):
        JobSpec(datasets=["a"], validation_fraction=0.9).check()
    with pytest.raises(JobFileError, match="the options: early_stopping_rounds"):
        JobSpec(datasets=["a"], early_stopping_rounds=0).check()


def test_every_term_option_is_guarded_against_mixing_with_a_file() -> None:
    """A new `propose` option must be listed as a term option (so a job file refuses it),
    and every option must have a job file key (the template's fields cover JobSpec's)."""
    import inspect
    from dataclasses import fields

    from party_client.cli.propose import TERM_OPTIONS, propose

    not_terms = {"ctx", "job_file", "template", "dry_run", "policy", "json_out"}
    parameters = set(inspect.signature(propose).parameters) - not_terms
    assert parameters == set(TERM_OPTIONS)
    from party_client import jobfile

    tables = (jobfile._TOP, jobfile._VALIDATION, jobfile._RELEASE, jobfile._SEALED)
    reachable = {attr for table in tables for attr, _ in table.values()}
    reachable |= {"id_columns", "params", "queriers", "sealed"}  # tables, and model = …
    assert {f.name for f in fields(JobSpec)} - {"source"} == reachable
    for table in tables:
        for key in table:
            assert f"\n{key} = " in TEMPLATE or f"\n# {key} = " in TEMPLATE, key
