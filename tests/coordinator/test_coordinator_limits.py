"""Job limits, cancel and retry: the operator's ceilings on a job's size and time,
the proposer's (and the operator's) cancel, and the proposer's retry of a failed
job. Jobs run on a FAKE enclave (a real gRPC server with scripted answers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from coordinator_testkit import (
    FakeEnclave,
    Harness,
    Party,
    SealedDataset,
    default_script,
    job_terms,
    seal_dataset,
)
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.limits import JobLimits
from coordinator.store import verify_audit_chain
from protocols.statements import Envelope
from protocols.wire.v1 import coordinator_pb2, enclave_pb2

MakeHarness = Callable[..., Harness]


@pytest.fixture
def make(home: Path) -> Iterator[MakeHarness]:
    """Start a coordinator in ``home`` with the given enclave address and limits."""
    started: list[Harness] = []

    def make(enclave: str | None = None, limits: JobLimits | None = None) -> Harness:
        harness = Harness(home, enclave=enclave, limits=limits)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        harness.stop()


@pytest.fixture
def held(fake_enclave: tuple[FakeEnclave, str]) -> FakeEnclave:
    """The FAKE enclave, holding every job it is sent until ``release`` is set."""
    fake, _ = fake_enclave
    fake.release.clear()
    return fake


def upload_two(coord: Harness, alice: Party, bob: Party, carol: Party) -> list[SealedDataset]:
    """alice and bob upload one data set of 2 rows each; carol is registered too."""
    coord.register(alice, bob, carol)
    data = [seal_dataset(alice, "alice-2024"), seal_dataset(bob, "bob-2024")]
    for d in data:
        coord.upload(d)
    return data


def approved_job(
    coord: Harness, alice: Party, bob: Party, carol: Party, max_seconds: int | None = None
) -> Envelope:
    """job-1: proposed by alice over alice's and bob's data, approved by both."""
    data = upload_two(coord, alice, bob, carol)
    terms = job_terms(alice, "job-1", data, max_seconds=max_seconds)
    coord.propose(terms)
    coord.approve(alice, "job-1", terms)
    coord.approve(bob, "job-1", terms)
    return terms


def wait_for_state(
    coord: Harness, state: str, job_id: str = "job-1", timeout: float = 10.0
) -> coordinator_pb2.Job:
    deadline = time.monotonic() + timeout
    job = coord.job(job_id)
    while job.state != state and time.monotonic() < deadline:
        time.sleep(0.05)
        job = coord.job(job_id)
    assert job.state == state, f"job {job_id} is {job.state}, not {state}: {job.error}"
    return job


def cancel(
    coord: Harness, party: Party, job_id: str = "job-1", reason: str = ""
) -> coordinator_pb2.Job:
    with coord.as_party(party) as stub:
        job: coordinator_pb2.Job = stub.CancelJob(
            coordinator_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        )
        return job


def retry(coord: Harness, party: Party, job_id: str = "job-1") -> coordinator_pb2.Job:
    with coord.as_party(party) as stub:
        job: coordinator_pb2.Job = stub.RetryJob(coordinator_pb2.RetryJobRequest(job_id=job_id))
        return job


def audit(coord: Harness, job_id: str = "job-1") -> list[tuple[str, dict[str, object]]]:
    assert coord.running is not None
    store = coord.running.store
    assert verify_audit_chain(store.audit_entries()) > 0
    return [(e.event, e.detail) for e in store.audit_entries() if e.subject == job_id]


def states(job: coordinator_pb2.Job) -> list[str]:
    return [e.text for e in job.events if e.kind == "state"]


# --------------------------------------------------------------------------- size and time


def test_a_job_larger_than_max_work_is_refused(
    make: MakeHarness, alice: Party, bob: Party, carol: Party
) -> None:
    coord = make(limits=JobLimits(max_work=15))
    data = upload_two(coord, alice, bob, carol)  # 2 + 2 rows
    with pytest.raises(grpc.RpcError) as err:
        coord.propose(job_terms(alice, "too-big", data, num_rounds=5))  # 5 × 4 = 20
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert "5 rounds × 4 rows = 20" in details
    assert "limit of 15" in details
    with coord.as_party(alice) as stub:
        assert stub.ListJobs(coordinator_pb2.ListJobsRequest()).jobs == []
    # At the limit, or under it, the job is taken.
    assert coord.propose(job_terms(alice, "fits", data, num_rounds=3)).state == "proposed"


def test_terms_asking_for_more_time_than_the_coordinator_allows_are_refused(
    make: MakeHarness, alice: Party, bob: Party, carol: Party
) -> None:
    coord = make(limits=JobLimits(max_seconds=60))
    data = upload_two(coord, alice, bob, carol)
    with pytest.raises(grpc.RpcError) as err:
        coord.propose(job_terms(alice, "slow", data, max_seconds=61))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "61 s" in err.value.details() and "limit of 60 s" in err.value.details()
    assert coord.propose(job_terms(alice, "in-time", data, max_seconds=60)).state == "proposed"


@pytest.mark.parametrize(
    ("limits", "asked"),
    [(JobLimits(max_seconds=1), None), (JobLimits(max_seconds=3600), 1)],
    ids=["coordinator-limit", "terms-limit"],
)
def test_a_job_running_past_its_time_limit_is_stopped_and_failed(
    make: MakeHarness,
    held: FakeEnclave,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    bob: Party,
    carol: Party,
    limits: JobLimits,
    asked: int | None,
) -> None:
    coord = make(enclave=fake_enclave[1], limits=limits)
    approved_job(coord, alice, bob, carol, max_seconds=asked)
    assert held.started.wait(10)
    began = time.monotonic()
    job = wait_for_state(coord, "failed", timeout=10)
    assert time.monotonic() - began < 5
    assert "time limit of 1 s" in job.error
    assert "detente party retry job-1" in job.error
    assert held.cancelled.wait(5), "the enclave call was not cancelled"
    assert list(job.outputs) == []
    assert states(job)[-2:] == ["running", "failed"]
    (_, detail) = audit(coord)[-1]
    assert detail["to"] == "failed" and detail["code"] == "DEADLINE_EXCEEDED"


# --------------------------------------------------------------------------- cancel


def test_the_proposer_cancels_a_proposed_job_at_once(
    make: MakeHarness, alice: Party, bob: Party, carol: Party
) -> None:
    coord = make()
    data = upload_two(coord, alice, bob, carol)
    coord.propose(job_terms(alice, "job-1", data))
    job = cancel(coord, alice, reason="wrong label column")
    assert job.state == "cancelled"
    assert coord.job("job-1").state == "cancelled"
    assert ("cancel", "cancelled by the proposer: wrong label column") in [
        (e.kind, e.text) for e in job.events
    ]
    event, detail = audit(coord)[-1]
    assert event == "job.state"
    assert detail == {
        "from": "proposed",
        "to": "cancelled",
        "by": "the proposer",
        "reason": "wrong label column",
    }


def test_a_cancelled_job_takes_no_approvals(
    make: MakeHarness, alice: Party, bob: Party, carol: Party
) -> None:
    coord = make()
    data = upload_two(coord, alice, bob, carol)
    terms = job_terms(alice, "job-1", data)
    coord.propose(terms)
    cancel(coord, alice)
    with pytest.raises(grpc.RpcError) as err:
        coord.approve(bob, "job-1", terms)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert coord.job("job-1").state == "cancelled"


def test_the_proposer_cancels_a_running_job(
    make: MakeHarness,
    held: FakeEnclave,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    bob: Party,
    carol: Party,
) -> None:
    coord = make(enclave=fake_enclave[1])
    approved_job(coord, alice, bob, carol)
    assert held.started.wait(10)
    requested = cancel(coord, alice, reason="enough")
    assert requested.state == "running"  # the scheduler stops it
    job = wait_for_state(coord, "cancelled", timeout=3)
    assert held.cancelled.wait(5), "the enclave call was not cancelled"
    assert job.error == "" and list(job.outputs) == []
    assert ("cancel", "cancelled by the proposer: enough") in [(e.kind, e.text) for e in job.events]
    events = audit(coord)
    assert ("job.cancel_requested", {"by": "the proposer", "reason": "enough"}) in events
    assert events[-1][1]["from"] == "running" and events[-1][1]["to"] == "cancelled"
    coord.wait_idle()
    assert len(held.specs) == 1


def test_only_the_proposer_cancels(
    make: MakeHarness, alice: Party, bob: Party, carol: Party
) -> None:
    coord = make()
    data = upload_two(coord, alice, bob, carol)
    coord.propose(job_terms(alice, "job-1", data))
    with pytest.raises(grpc.RpcError) as err:
        cancel(coord, bob)  # a data owner: it simply does not approve
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "only the proposer" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        cancel(coord, carol)  # takes no part: the job does not exist for her
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    job = coord.job("job-1")
    assert job.state == "proposed"
    assert [e.kind for e in job.events] == ["state"]


def test_a_finished_job_cannot_be_cancelled(
    make: MakeHarness,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    bob: Party,
    carol: Party,
) -> None:
    coord = make(enclave=fake_enclave[1])
    approved_job(coord, alice, bob, carol)
    coord.wait_idle()
    assert coord.job("job-1").state == "succeeded"
    with pytest.raises(grpc.RpcError) as err:
        cancel(coord, alice)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "succeeded" in err.value.details()
    assert coord.job("job-1").state == "succeeded"


def test_the_operator_cancels_a_proposed_job_with_the_cli(
    make: MakeHarness, home: Path, alice: Party, bob: Party, carol: Party
) -> None:
    coord = make()
    data = upload_two(coord, alice, bob, carol)
    coord.propose(job_terms(alice, "job-1", data))
    result = CliRunner().invoke(
        app, ["cancel", "job-1", "--home", str(home), "--reason", "maintenance"]
    )
    assert result.exit_code == 0, result.output
    assert "job-1 cancelled" in result.output
    job = coord.job("job-1")
    assert job.state == "cancelled"
    assert ("cancel", "cancelled by the operator: maintenance") in [
        (e.kind, e.text) for e in job.events
    ]
    assert audit(coord)[-1][1]["by"] == "the operator"
    again = CliRunner().invoke(app, ["cancel", "job-1", "--home", str(home)])
    assert again.exit_code == 1
    assert "cancelled" in again.output
    unknown = CliRunner().invoke(app, ["cancel", "no-such-job", "--home", str(home)])
    assert unknown.exit_code == 1
    assert "no-such-job" in unknown.output


def test_the_operator_cancels_a_running_job_with_the_cli(
    make: MakeHarness,
    held: FakeEnclave,
    fake_enclave: tuple[FakeEnclave, str],
    home: Path,
    alice: Party,
    bob: Party,
    carol: Party,
) -> None:
    coord = make(enclave=fake_enclave[1])
    approved_job(coord, alice, bob, carol)
    assert held.started.wait(10)
    result = CliRunner().invoke(app, ["cancel", "job-1", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "cancel requested" in result.output
    wait_for_state(coord, "cancelled", timeout=3)
    assert held.cancelled.wait(5)


def test_a_running_job_cancelled_while_the_coordinator_is_down_ends_cancelled(
    make: MakeHarness,
    held: FakeEnclave,
    fake_enclave: tuple[FakeEnclave, str],
    home: Path,
    alice: Party,
    bob: Party,
    carol: Party,
) -> None:
    coord = make(enclave=fake_enclave[1])
    approved_job(coord, alice, bob, carol)
    assert held.started.wait(10)
    coord.stop()  # the job is cut off while running: it stays `running`
    held.release.set()
    result = CliRunner().invoke(app, ["cancel", "job-1", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "cancel requested" in result.output
    coord.restart()
    coord.wait_idle()
    job = coord.job("job-1")
    assert job.state == "cancelled", job.error
    assert states(job)[-2] == "running" and states(job)[-1].startswith("cancelled")
    assert len(held.specs) == 1  # not run again


# --------------------------------------------------------------------------- retry


def fail_first_attempt(
    fake: FakeEnclave, context: grpc.ServicerContext
) -> Iterator[enclave_pb2.RunJobResponse]:
    """Abort the first call with an error; answer later calls like the default script."""
    if len(fake.specs) == 1:
        yield enclave_pb2.RunJobResponse(
            progress=enclave_pb2.Progress(kind="progress", text="round 2/5")
        )
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of enclave memory at round 3")
    yield from default_script(fake, context)


@pytest.fixture
def failed(
    make: MakeHarness,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    bob: Party,
    carol: Party,
) -> Harness:
    """job-1 ran once on the FAKE enclave, which aborted it: the job is failed."""
    fake, address = fake_enclave
    fake.script = fail_first_attempt
    coord = make(enclave=address)
    approved_job(coord, alice, bob, carol)
    coord.wait_idle()
    job = coord.job("job-1")
    assert job.state == "failed"
    assert job.error == "out of enclave memory at round 3"
    assert job.attempts == 1
    return coord


def test_the_proposer_retries_a_failed_job(
    failed: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party
) -> None:
    fake, _ = fake_enclave
    coord = failed
    before = coord.job("job-1")
    retried = retry(coord, alice)
    assert retried.state in ("approved", "running", "succeeded")
    coord.wait_idle()
    job = coord.job("job-1")
    assert job.state == "succeeded", job.error
    assert job.error == ""
    assert job.attempts == 2
    assert list(job.approvals) == list(before.approvals)
    assert job.terms == before.terms
    assert states(job) == [
        "proposed",
        "approved",
        "running",
        "failed",
        "approved (retry requested by the proposer after attempt 1)",
        "running",
        "succeeded",
    ]
    # The enclave got the same signed statements again (it resumes from its checkpoint).
    assert len(fake.specs) == 2
    assert fake.specs[1] == fake.specs[0]
    retries = [d for e, d in audit(coord) if e == "job.state" and d.get("retry")]
    assert retries == [{"from": "failed", "to": "approved", "retry": True, "after_attempt": 1}]
    attempts = [d["attempt"] for e, d in audit(coord) if "attempt" in d]
    assert attempts == [1, 2]


def test_only_the_proposer_retries(failed: Harness, bob: Party, carol: Party) -> None:
    with pytest.raises(grpc.RpcError) as err:
        retry(failed, bob)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "only the proposer" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        retry(failed, carol)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    failed.wait_idle(1)
    job = failed.job("job-1")
    assert job.state == "failed" and job.attempts == 1


def test_only_a_failed_job_is_retried(
    make: MakeHarness,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    bob: Party,
    carol: Party,
) -> None:
    coord = make(enclave=fake_enclave[1])
    data = upload_two(coord, alice, bob, carol)
    coord.propose(job_terms(alice, "waiting", data))
    with pytest.raises(grpc.RpcError) as err:
        retry(coord, alice, "waiting")
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "proposed" in err.value.details()
    assert "only a failed job" in err.value.details()
    terms = job_terms(alice, "done", data)
    coord.propose(terms)
    coord.approve(alice, "done", terms)
    coord.approve(bob, "done", terms)
    coord.wait_idle()
    assert coord.job("done").state == "succeeded"
    with pytest.raises(grpc.RpcError) as err:
        retry(coord, alice, "done")
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert coord.job("done").attempts == 1


def test_approving_a_failed_job_points_to_retry(failed: Harness, alice: Party, bob: Party) -> None:
    terms = Envelope.from_bytes(failed.job("job-1").terms)
    for owner in (alice, bob):  # both approved it already; neither approval restarts it
        with pytest.raises(grpc.RpcError) as err:
            failed.approve(owner, "job-1", terms)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "failed" in err.value.details()
        assert "detente party retry job-1" in err.value.details()
    assert failed.job("job-1").state == "failed"


def test_a_retry_sent_the_moment_the_job_fails_runs_it(
    make: MakeHarness,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    bob: Party,
    carol: Party,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proposer may see `failed` and send RetryJob before the scheduler thread has
    finished with the failed run; the retry must still run the job."""
    fake, address = fake_enclave
    fake.script = fail_first_attempt
    coord = make(enclave=address)
    assert coord.running is not None
    store = coord.running.store
    transition = store.transition
    retried: list[str] = []

    def retry_when_failed(job_id: str, from_states: Any, to_state: str, *a: Any, **k: Any) -> bool:
        moved = transition(job_id, from_states, to_state, *a, **k)
        if moved and to_state == "failed" and not retried:
            # Sent from the scheduler thread, right after the failure is stored.
            retried.append(retry(coord, alice, job_id).state)
        return moved

    monkeypatch.setattr(store, "transition", retry_when_failed)
    approved_job(coord, alice, bob, carol)
    coord.wait_idle()
    assert retried == ["approved"]  # the retry was accepted
    job = wait_for_state(coord, "succeeded", timeout=5)
    assert job.attempts == 2
