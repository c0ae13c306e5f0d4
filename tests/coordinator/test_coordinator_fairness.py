"""Fair scheduling: waiting jobs are taken round-robin by proposer, so a party that
queues many jobs delays only its own (coordinator.scheduler.FairQueue)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from coordinator_testkit import FakeEnclave, Harness, Party, SealedDataset, job_terms, seal_dataset

from coordinator.scheduler import FairQueue
from protocols.documents import JobTerms
from protocols.statements import Envelope

# --------------------------------------------------------------------------- FairQueue


def drain(queue: FairQueue, count: int) -> list[str | None]:
    return [queue.get() for _ in range(count)]


def test_jobs_are_taken_round_robin_by_proposer() -> None:
    queue = FairQueue()
    for job_id in ("a1", "a2", "a3", "a4"):
        queue.put("alice", job_id)
    queue.put("bob", "b1")
    queue.put("bob", "b2")
    queue.put("carol", "c1")
    assert drain(queue, 7) == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]


def test_jobs_of_one_proposer_are_taken_in_order() -> None:
    queue = FairQueue()
    for i in range(10):
        queue.put("alice", f"a{i}")
    assert drain(queue, 10) == [f"a{i}" for i in range(10)]


def test_a_proposer_that_comes_back_waits_for_the_others() -> None:
    queue = FairQueue()
    queue.put("alice", "a1")
    queue.put("bob", "b1")
    assert queue.get() == "a1"
    queue.put("alice", "a2")  # alice queues again after her turn: bob's is next
    assert drain(queue, 2) == ["b1", "a2"]


def test_the_proposer_whose_job_was_just_taken_goes_after_the_others() -> None:
    """A proposer's turn is remembered even when its last waiting job was taken:
    alice's a1 runs; she queues a2 and a3, then bob queues b1; bob goes next."""
    queue = FairQueue()
    queue.put("alice", "a1")
    assert queue.get() == "a1"
    queue.put("alice", "a2")
    queue.put("alice", "a3")
    queue.put("bob", "b1")
    assert drain(queue, 3) == ["b1", "a2", "a3"]


def test_close_unblocks_a_waiting_get() -> None:
    queue = FairQueue()
    got: list[str | None] = []
    reader = threading.Thread(target=lambda: got.append(queue.get()), daemon=True)
    reader.start()
    time.sleep(0.1)
    assert reader.is_alive()  # nothing queued: get() waits
    queue.close()
    reader.join(5)
    assert not reader.is_alive(), "close() did not unblock get()"
    assert got == [None]


def test_get_after_close_returns_none_at_once() -> None:
    queue = FairQueue()
    queue.put("alice", "a1")
    queue.close()
    assert queue.get() is None


def test_a_waiting_get_takes_a_job_put_later() -> None:
    queue = FairQueue()
    got: list[str | None] = []
    reader = threading.Thread(target=lambda: got.append(queue.get()), daemon=True)
    reader.start()
    time.sleep(0.05)
    queue.put("bob", "b1")
    reader.join(5)
    assert got == ["b1"]


# --------------------------------------------------------------------------- scheduler


@pytest.fixture
def with_enclave(home: Path, fake_enclave: tuple[FakeEnclave, str]) -> Iterator[Harness]:
    harness = Harness(home, enclave=fake_enclave[1])
    yield harness
    harness.stop()


def run_job(coord: Harness, proposer: Party, job_id: str, dataset: SealedDataset) -> None:
    """Propose a job over the proposer's own data set and approve it: it is queued."""
    terms = job_terms(proposer, job_id, [dataset])
    coord.propose(terms)
    assert coord.approve(proposer, job_id, terms).state == "approved"


def run_order(fake: FakeEnclave) -> list[str]:
    return [JobTerms.verify(Envelope.from_bytes(spec.terms)).job_id for spec in fake.specs]


def test_a_party_with_many_jobs_does_not_delay_another_partys_job(
    with_enclave: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party, bob: Party
) -> None:
    coord, (fake, _) = with_enclave, fake_enclave
    coord.register(alice, bob)
    alices, bobs = seal_dataset(alice, "alice-2024"), seal_dataset(bob, "bob-2024")
    coord.upload(alices)
    coord.upload(bobs)
    fake.release.clear()  # the enclave holds A1 until released
    run_job(coord, alice, "a1", alices)
    assert fake.started.wait(10)
    with coord.as_party(alice):
        assert coord.job("a1").state == "running"
    # While A1 runs, alice queues two more jobs, then bob queues one.
    run_job(coord, alice, "a2", alices)
    run_job(coord, alice, "a3", alices)
    run_job(coord, bob, "b1", bobs)
    fake.release.set()
    coord.wait_idle(20)
    assert run_order(fake) == ["a1", "b1", "a2", "a3"]
    for party, job_id in ((alice, "a1"), (alice, "a2"), (alice, "a3"), (bob, "b1")):
        with coord.as_party(party):
            assert coord.job(job_id).state == "succeeded"
