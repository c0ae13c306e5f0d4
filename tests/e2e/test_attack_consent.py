"""A malicious coordinator operator against the consent step, through real processes.

The operator edits its own SQLite database between (and during) the parties'
steps. Each test reproduces one attack and shows the party's client (or the
enclave) refuse it with a clear message, and nothing released to the attacker.
"""

from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from party_client.home import PartyHome
from party_client.pins import show_fingerprint
from party_client.remote import CoordinatorError
from protocols.documents import (
    Approval,
    JobTerms,
    Recipient,
    Registration,
)
from protocols.errors import InvalidRequest
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.statements import Envelope
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc
from tests.e2e.conftest import Running, contribute, credit_rows, detente, propose

pytestmark = pytest.mark.e2e


class Mallory:
    """The operator's own identity: keys it controls, and registrations it forges."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.hpke = HpkePrivateKey.generate()

    def registration(self, name: str) -> bytes:
        """A self-signed registration claiming ``name`` with Mallory's keys."""
        return (
            Registration(name, self.key.verify_key, self.hpke.public_key).sign(self.key).to_bytes()
        )

    @property
    def fingerprint(self) -> str:
        return Registration("x", self.key.verify_key, self.hpke.public_key).fingerprint


def sql(running: Running, statement: str, *args: object) -> list[tuple]:
    with sqlite3.connect(running.db) as db:
        return db.execute(statement, args).fetchall()


def terms_of(running: Running, job_id: str) -> JobTerms:
    (raw,) = sql(running, "SELECT terms FROM jobs WHERE job_id=?", job_id)[0]
    return JobTerms.verify(Envelope.from_bytes(raw))


def test_approve_signs_the_terms_it_showed_even_if_the_coordinator_swaps_them(
    running: Running, tmp_path: Path
) -> None:
    """Attack 1: the terms are swapped in the database while `approve` waits at its prompt."""
    rows = credit_rows(0, 400)
    alice, a_ds = contribute(running, "swap-alice", rows.slice(0, 200), tmp_path)
    bob, b_ds = contribute(running, "swap-bob", rows.slice(200, 200), tmp_path)
    job_id = propose(alice, [a_ds, b_ds], "--rounds", "5", "--id", "ID")
    detente(["party", "approve", job_id, "--yes"], alice)
    shown = terms_of(running, job_id)

    mallory = Mallory()
    swapped = JobTerms(
        **{
            **shown.__dict__,
            "recipients": [Recipient("swap-bob", mallory.key.verify_key, mallory.hpke.public_key)],
            "release_to": "named",
            "proposer": mallory.key.verify_key.hex,
        }
    ).sign(mallory.key)

    env = {"DETENTE_HOME": str(bob), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    approve = subprocess.Popen(
        [sys.executable, "-m", "detente", "party", "approve", job_id],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        shown_text = _read_until(approve, b"Approve these exact terms?", timeout=120)
        assert shown.job_id.encode() in shown_text and b"swap-alice" in shown_text
        # While the prompt waits, the operator swaps the terms (and their digest).
        sql(
            running,
            "UPDATE jobs SET terms=?, terms_digest=? WHERE job_id=?",
            swapped.to_bytes(),
            swapped.digest,
            job_id,
        )
        out, err = approve.communicate(b"y\n", timeout=120)
    finally:
        if approve.poll() is None:
            approve.kill()
            approve.wait()
    assert approve.returncode == 1, out + err
    # Bob signed the digest of what he was shown; the coordinator (now holding other
    # terms) can only refuse it, naming the difference.
    assert b"over different job terms" in err
    assert shown.job_id.encode() and swapped.digest[:16].encode() in err
    approvers = [
        row[0] for row in sql(running, "SELECT approver FROM approvals WHERE job_id=?", job_id)
    ]
    assert PartyHome(bob).signing_key().verify_key.hex not in approvers
    time.sleep(1.0)
    assert sql(running, "SELECT state FROM jobs WHERE job_id=?", job_id) == [("proposed",)]


def _read_until(process: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert process.poll() is None, seen + (process.stderr.read() if process.stderr else b"")
        assert time.monotonic() < deadline, f"no {marker!r} in {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            seen += os.read(fd, 65536)
    return seen


def test_a_recipient_under_the_approvers_own_name_with_other_keys_is_refused(
    running: Running, tmp_path: Path
) -> None:
    """Attack 2a: the registry lists Mallory's self-signed registration under Bob's name."""
    rows = credit_rows(400, 400)
    alice, a_ds = contribute(running, "imp-alice", rows.slice(0, 200), tmp_path)
    bob, b_ds = contribute(running, "imp-bob", rows.slice(200, 200), tmp_path)
    mallory = Mallory()
    # Bob's row keeps his key (so he can still sign requests); its registration is Mallory's.
    sql(
        running,
        "UPDATE parties SET registration=? WHERE name=?",
        mallory.registration("imp-bob"),
        "imp-bob",
    )
    job_id = propose(
        alice,
        [a_ds, b_ds],
        "--rounds",
        "5",
        "--id",
        "ID",
        "--recipient",
        "imp-alice",
        "--recipient",
        "imp-bob",
    )
    recipient = {r.name: r for r in terms_of(running, job_id).recipients}["imp-bob"]
    assert recipient.signing_key == mallory.key.verify_key  # the proposal carries the impostor
    done = detente(["party", "approve", job_id, "--yes"], bob, check=False)
    assert done.returncode == 1
    assert "claims your name or key but is not your identity" in done.stderr
    assert sql(running, "SELECT COUNT(*) FROM approvals WHERE job_id=?", job_id) == [(0,)]


def test_a_name_whose_keys_differ_from_the_pin_is_refused_at_propose_and_listed(
    running: Running, tmp_path: Path
) -> None:
    """Attack 2b: Alice pinned Bob's key on first use; the registry later swaps it."""
    rows = credit_rows(800, 400)
    alice, a_ds = contribute(running, "pin-alice", rows.slice(0, 200), tmp_path)
    _, b_ds = contribute(running, "pin-bob", rows.slice(200, 200), tmp_path)
    listed = json.loads(detente(["party", "parties", "--json"], alice).stdout)
    real = {p["name"]: p for p in listed}["pin-bob"]
    assert real["pin"] == "new"  # first use: pinned now
    mallory = Mallory()
    sql(
        running,
        "UPDATE parties SET registration=? WHERE name=?",
        mallory.registration("pin-bob"),
        "pin-bob",
    )

    done = propose(alice, [a_ds, b_ds], "--id", "ID", "--recipient", "pin-bob", check=False)
    assert done.returncode == 1
    assert "someone may be impersonating 'pin-bob'" in done.stderr
    assert show_fingerprint(real["fingerprint"])[:39] in done.stderr
    assert "detente party pin pin-bob FINGERPRINT" in done.stderr
    shown = detente(["party", "parties"], alice, check=False)
    assert shown.returncode == 1 and "MISMATCH" in shown.stdout
    assert sql(running, "SELECT COUNT(*) FROM jobs WHERE proposer=?", real["signing_key"]) == [(0,)]


def test_an_approver_refuses_a_recipient_whose_keys_differ_from_its_pin(
    running: Running, tmp_path: Path
) -> None:
    """Attack 2c: Bob knows Carol's key; the registry shows Alice another key as Carol."""
    rows = credit_rows(1200, 400)
    alice, a_ds = contribute(running, "tofu-alice", rows.slice(0, 200), tmp_path)
    bob, b_ds = contribute(running, "tofu-bob", rows.slice(200, 200), tmp_path)
    carol = running.party("tofu-carol")
    carol_fingerprint = json.loads(detente(["party", "parties", "--json"], bob).stdout)
    carol_fingerprint = {p["name"]: p for p in carol_fingerprint}["tofu-carol"]["fingerprint"]
    # Bob also confirmed it out of band: the pin command accepts it as printed.
    pinned = detente(["party", "pin", "tofu-carol", show_fingerprint(carol_fingerprint)], bob)
    assert show_fingerprint(carol_fingerprint) in pinned.stdout
    mallory = Mallory()
    sql(
        running,
        "UPDATE parties SET registration=? WHERE name=?",
        mallory.registration("tofu-carol"),
        "tofu-carol",
    )
    job_id = propose(
        alice,
        [a_ds, b_ds],
        "--rounds",
        "5",
        "--id",
        "ID",
        "--recipient",
        "tofu-alice",
        "--recipient",
        "tofu-bob",
        "--recipient",
        "tofu-carol",
    )
    done = detente(["party", "approve", job_id, "--yes"], bob, check=False)
    assert done.returncode == 1
    assert "the recipient 'tofu-carol'" in done.stderr and "impersonating" in done.stderr
    assert sql(running, "SELECT COUNT(*) FROM approvals WHERE job_id=?", job_id) == [(0,)]
    # Had Carol really changed keys, Bob pins the new fingerprint (learned from her)...
    detente(["party", "pin", "tofu-carol", mallory.fingerprint], bob)
    approved = detente(["party", "approve", job_id, "--yes"], bob)
    assert "approved" in approved.stdout
    assert carol  # Carol's own home is untouched by all this


def test_an_owner_hidden_from_the_registry_makes_propose_fail(
    running: Running, tmp_path: Path
) -> None:
    """Attack 3a: the coordinator hides Bob's registration while Alice proposes."""
    rows = credit_rows(1600, 400)
    alice, a_ds = contribute(running, "hide-alice", rows.slice(0, 200), tmp_path)
    _, b_ds = contribute(running, "hide-bob", rows.slice(200, 200), tmp_path)
    (row,) = sql(
        running,
        "SELECT name, signing_key, hpke_key, registration, registered_at FROM parties WHERE name=?",
        "hide-bob",
    )
    sql(running, "DELETE FROM parties WHERE name=?", "hide-bob")
    try:
        done = propose(alice, [a_ds, b_ds], "--id", "ID", check=False)
    finally:
        sql(
            running,
            "INSERT INTO parties (name, signing_key, hpke_key, registration, registered_at)"
            " VALUES (?, ?, ?, ?, ?)",
            *row,
        )
    assert done.returncode == 1
    assert f"data set {b_ds!r} has no registration at the coordinator" in done.stderr
    assert "nothing was proposed" in done.stderr
    assert sql(running, "SELECT COUNT(*) FROM jobs WHERE dataset_ids LIKE ?", f"%{b_ds}%") == [(0,)]


def test_terms_that_release_to_the_owners_but_leave_one_out_are_refused_everywhere(
    running: Running, tmp_path: Path
) -> None:
    """Attack 3b: terms say "release to the owners" yet name only the proposer.

    The coordinator refuses them; a coordinator that stores them anyway meets
    Bob's refusal; and even with both owners' signatures the enclave refuses.
    """
    rows = credit_rows(2000, 400)
    alice, a_ds = contribute(running, "out-alice", rows.slice(0, 200), tmp_path)
    bob, b_ds = contribute(running, "out-bob", rows.slice(200, 200), tmp_path)
    honest_id = propose(alice, [a_ds, b_ds], "--rounds", "5", "--id", "ID")
    honest = terms_of(running, honest_id)
    a_home = PartyHome(alice)
    only_alice = [r for r in honest.recipients if r.name == "out-alice"]
    lying = JobTerms(
        **{**honest.__dict__, "job_id": f"{honest_id}-x", "recipients": only_alice}
    ).sign(a_home.signing_key())
    with running.remote(alice) as remote:
        with pytest.raises(CoordinatorError) as refused:
            remote.propose(lying.to_bytes())
    assert "leave out the data owner" in str(refused.value)
    assert refused.value.kind is InvalidRequest

    # A malicious coordinator stores the job anyway: Bob's client refuses to approve it.
    b_key = PartyHome(bob).signing_key().verify_key.hex
    now = int(time.time() * 1000)
    sql(
        running,
        "INSERT INTO jobs (job_id, terms, terms_digest, proposer, dataset_ids, required_approvers,"
        " recipients, state, error, created_at, updated_at, attempts, cancel_reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 'proposed', '', ?, ?, 0, '')",
        lying_id := f"{honest_id}-x",
        lying.to_bytes(),
        lying.digest,
        a_home.signing_key().verify_key.hex,
        json.dumps([a_ds, b_ds]),
        json.dumps([a_home.signing_key().verify_key.hex, b_key]),
        json.dumps([a_home.signing_key().verify_key.hex]),
        now,
        now,
    )
    done = detente(["party", "approve", lying_id, "--yes"], bob, check=False)
    assert done.returncode == 1
    assert "releases to its data owners, but its recipients leave out" in done.stderr

    # Both owners' signatures (Bob's taken by a trick) still do not get past the enclave.
    approvals = [
        Approval(lying_id, lying.digest).sign(PartyHome(h).signing_key()).to_bytes()
        for h in (alice, bob)
    ]
    with running.remote(alice) as remote:
        manifests = [remote.dataset(d).manifest for d in (a_ds, b_ds)]
    spec = enclave_pb2.JobSpec(terms=lying.to_bytes(), approvals=approvals, manifests=manifests)
    channel = running.enclave_channel()
    try:
        with pytest.raises(grpc.RpcError) as info:
            list(
                enclave_pb2_grpc.EnclaveStub(channel).RunJob(
                    iter([enclave_pb2.RunJobRequest(spec=spec)]), timeout=60
                )
            )
    finally:
        channel.close()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "leave out the data owner" in info.value.details()


def test_an_owner_who_receives_nothing_must_confirm_explicitly(
    running: Running, tmp_path: Path
) -> None:
    """Terms that name recipients leaving Bob out: Bob sees it and must say yes to it."""
    rows = credit_rows(2400, 400)
    alice, a_ds = contribute(running, "nothing-alice", rows.slice(0, 200), tmp_path)
    bob, b_ds = contribute(running, "nothing-bob", rows.slice(200, 200), tmp_path)
    job_id = propose(
        alice, [a_ds, b_ds], "--rounds", "5", "--id", "ID", "--recipient", "nothing-alice"
    )
    shown = json.loads(
        detente(["party", "approve", job_id, "--yes", "--json"], bob, check=False).stdout
    )
    assert [r["name"] for r in shown["recipients"]] == ["nothing-alice"]
    assert shown["warnings"] == [
        "you receive nothing from this job: it releases model only to nothing-alice"
    ]
    refused = detente(["party", "approve", job_id, "--yes"], bob, check=False)
    assert refused.returncode == 1 and "needs your explicit confirmation" in refused.stderr
    detente(["party", "approve", job_id, "--yes", "--accept-warnings"], bob)
    detente(["party", "approve", job_id, "--yes"], alice)
    out = tmp_path / "bob-results"
    done = detente(
        ["party", "results", job_id, "--out", str(out), "--wait", "120"], bob, check=False
    )
    assert done.returncode == 1 and "you are not a named recipient" in done.stderr
    written = json.loads(
        detente(
            ["party", "results", job_id, "--out", str(tmp_path / "a"), "--wait", "120", "--json"],
            alice,
        ).stdout
    )
    # Results are the recipient's own: written like keys, readable by the owner only.
    assert Path(written["model"]).stat().st_mode & 0o777 == 0o600
