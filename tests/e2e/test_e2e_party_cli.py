"""The party's newer commands against a real coordinator and enclave worker (own processes):
`doctor`, `propose` from a job file (`--template`, `--dry-run`), `show`, `reject`,
`status --follow`, and `Party.init` in the Python API.

party1 and party2 upload the data sets the job file template names (party1-data,
party2-data); party3 is registered and owns nothing. The tests run in file order; the
last one stops the coordinator.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from party_client import Party
from party_client.jobfile import TEMPLATE
from tests.e2e.conftest import LABEL, Running, credit_rows, detente, write_csv

pytestmark = pytest.mark.e2e


@dataclass
class Parties:
    running: Running
    tmp: Path
    homes: dict[str, Path]

    def run(self, who: str, *args: str, check: bool = True) -> Any:
        return detente(["party", *args], self.homes[who], check=check)

    def json(self, who: str, *args: str) -> Any:
        return json.loads(self.run(who, *args, "--json").stdout)

    def job_file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


@pytest.fixture(scope="module")
def parties(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parties]:
    tmp = tmp_path_factory.mktemp("party-cli")
    homes = {name: running.party(name) for name in ("party1", "party2", "party3")}
    world = Parties(running, tmp, homes)
    for i, name in enumerate(("party1", "party2")):
        world.run(name, "attest")
        csv = write_csv(credit_rows(300 * i, 300), tmp / f"{name}.csv")
        world.run(
            name, "upload", str(csv), "--label", LABEL, "--id", "ID", "--dataset-id", f"{name}-data"
        )
    yield world


def quick(text: str, job_id: str) -> str:
    """The template with a job id and few rounds (a job that runs in seconds)."""
    text = text.replace('# job_id = "credit-2026-01"', f'job_id = "{job_id}"')
    return text.replace("rounds = 50 ", "rounds = 8 ")


def jobs_of(world: Parties, who: str) -> set[str]:
    return {j["job_id"] for j in world.json(who, "jobs")}


# --------------------------------------------------------------------------- doctor


def test_doctor_all_ok(parties: Parties) -> None:
    done = parties.run("party1", "doctor", "--json")
    report = json.loads(done.stdout)
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    assert names == [
        "config",
        "keys",
        "policy",
        "coordinator",
        "certificate",
        "registration",
        "clock",
        "attestation",
        "audit",
    ]
    assert all(c["status"] == "ok" for c in report["checks"]), report
    clock = next(c for c in report["checks"] if c["name"] == "clock")
    assert "the coordinator's" in clock["detail"]
    human = parties.run("party1", "doctor").stdout
    assert "all checks passed" in human and "SIMULATION" in human


def copy_home(parties: Parties, name: str) -> Path:
    home = parties.tmp / name
    shutil.copytree(parties.homes["party1"], home)
    return home


def doctor_fails(home: Path, *extra: str) -> dict[str, dict[str, str]]:
    done = detente(["party", "doctor", "--json", *extra], home, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    return {c["name"]: c for c in report["checks"]}


def test_doctor_names_a_wrong_policy_measurement(parties: Parties) -> None:
    wrong = parties.running.policy(mrenclave="ab" * 32)
    checks = doctor_fails(parties.homes["party1"], "--policy", str(wrong))
    assert checks["attestation"]["status"] == "fail"
    assert "rule 'measurement': MRENCLAVE" in checks["attestation"]["detail"]
    assert "update your policy" in checks["attestation"]["fix"]
    assert checks["coordinator"]["status"] == "ok"
    human = detente(
        ["party", "doctor", "--policy", str(wrong)], parties.homes["party1"], check=False
    )
    assert human.returncode == 1 and "FAIL attestation" in human.stdout


def test_doctor_names_a_key_file_others_can_read_or_that_is_broken(parties: Parties) -> None:
    home = copy_home(parties, "loose-key")
    (home / "keys" / "signing.key").chmod(0o644)
    checks = doctor_fails(home)
    assert checks["keys"]["status"] == "fail"
    assert f"chmod 600 {home / 'keys' / 'signing.key'}" in checks["keys"]["fix"]
    assert checks["coordinator"]["status"] == "skipped"
    (home / "keys" / "signing.key").unlink()
    (home / "keys" / "signing.key").mkdir()  # not readable as a file at all
    checks = doctor_fails(home)
    assert checks["keys"]["status"] == "fail"


def test_doctor_says_when_encrypted_keys_need_their_passphrase(parties: Parties) -> None:
    home = copy_home(parties, "sealed-keys")

    def run(*args: str, passphrase: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "DETENTE_HOME": str(home)}
        if passphrase is not None:
            env["DETENTE_PASSPHRASE"] = passphrase
        return subprocess.run(
            [sys.executable, "-m", "detente", "party", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    address = parties.running.address
    init = run(
        "init",
        "--name",
        "party1",
        "--coordinator",
        address,
        "--encrypt-keys",
        passphrase="correct horse",
    )
    assert init.returncode == 0, init.stderr
    checks = {c["name"]: c for c in json.loads(run("doctor", "--json").stdout)["checks"]}
    assert checks["keys"]["status"] == "fail"
    assert "set DETENTE_PASSPHRASE" in checks["keys"]["fix"]
    wrong = json.loads(run("doctor", "--json", passphrase="wrong").stdout)["checks"]
    assert next(c for c in wrong if c["name"] == "keys")["status"] == "fail"
    right = json.loads(run("doctor", "--json", passphrase="correct horse").stdout)
    assert right["ok"] is True, right
    keys = next(c for c in right["checks"] if c["name"] == "keys")
    assert "encrypted under your passphrase" in keys["detail"]


def test_doctor_names_a_certificate_that_is_not_the_pinned_one(parties: Parties) -> None:
    from protocols import tls

    home = copy_home(parties, "wrong-cert")
    other = tls.self_signed_certificate(tls.generate_key(), "127.0.0.1")
    (home / "coordinator.crt").write_bytes(tls.certificate_pem(other))
    checks = doctor_fails(home)
    assert checks["certificate"]["status"] == "fail"
    assert "another certificate than the one pinned" in checks["certificate"]["detail"]
    assert checks["coordinator"]["status"] == "fail"
    assert checks["attestation"]["status"] == "skipped"


# --------------------------------------------------------------------------- job files


def test_template_round_trip_and_dry_run(parties: Parties) -> None:
    path = parties.tmp / "job.toml"
    done = parties.run("party1", "propose", "--template", str(path))
    assert path.read_text() == TEMPLATE and "--dry-run" in done.stdout
    printed = parties.run("party1", "propose", "--template").stdout
    assert printed == TEMPLATE
    assert parties.json("party1", "propose", "--template") == {"template": TEMPLATE}
    other = parties.tmp / "other.toml"
    assert parties.json("party1", "propose", "--template", str(other)) == {"written": str(other)}
    again = parties.run("party1", "propose", "--template", str(path), check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    before = jobs_of(parties, "party1")
    dry = parties.json("party1", "propose", str(path), "--dry-run")
    assert dry["dry_run"] is True and dry["proposed"] is False
    assert dry["approvers"] == ["party1", "party2"]
    assert dry["review"]["objective"] == "binary:logistic"
    assert [d["owner_name"] for d in dry["review"]["datasets"]] == ["party1", "party2"]
    assert any("label summary" in c for c in dry["checks"])
    human = parties.run("party1", "propose", str(path), "--dry-run").stdout
    assert "DRY RUN: nothing was proposed" in human
    assert "must be approved by: party1, party2" in human
    assert f"next: propose them with `detente party propose {path}`" in human
    assert jobs_of(parties, "party1") == before  # nothing proposed


def test_propose_from_a_file_end_to_end(parties: Parties) -> None:
    path = parties.job_file("quick.toml", quick(TEMPLATE, "file-job"))
    assert parties.json("party1", "propose", str(path)) == {"job_id": "file-job"}
    shown = parties.json("party2", "show", "file-job")
    assert shown["state"] == "proposed" and shown["num_rounds"] == 8
    assert shown["validation_fraction"] == 0.2 and shown["early_stopping_rounds"] == 10
    assert {a["name"]: a["approved"] for a in shown["approvals"]} == {
        "party1": False,
        "party2": False,
    }
    assert shown["rejection"] is None
    plain = parties.run("party2", "show", "file-job").stdout
    assert "approvals: 0 of 2" in plain and "next: `detente party approve file-job`" in plain
    for who in ("party1", "party2"):
        parties.run(who, "approve", "file-job", "--yes")
    follow = parties.run("party1", "status", "file-job", "--follow", "--json")
    lines = [json.loads(line) for line in follow.stdout.splitlines()]
    assert lines[-1]["end"] is True and lines[-1]["state"] == "succeeded"
    assert any(e.get("kind") == "round" for e in lines[:-1])
    out = parties.tmp / "file-job-out"
    written = parties.json("party2", "results", "file-job", "--out", str(out))
    assert set(written) == {"model", "metrics"}


def test_a_bad_job_file_proposes_nothing(parties: Parties) -> None:
    before = jobs_of(parties, "party1")
    cases = {
        "unknown.toml": (TEMPLATE + "\ncolour = 1\n", 1, "[release] 'colour'"),
        "type.toml": (TEMPLATE.replace("rounds = 50 ", 'rounds = "x"'), 1, "rounds must be"),
        "owner.toml": (
            TEMPLATE.replace("party1/party1-data", "party2/party1-data"),
            1,
            "data set 'party1-data' is owned by 'party1', not 'party2'",
        ),
        "missing.toml": (
            TEMPLATE.replace("party2/party2-data", "party2/no-such-data"),
            1,
            "no-such-data",
        ),
        "sealed.toml": (
            TEMPLATE.replace('model = "released"', 'model = "sealed"'),
            1,
            "[sealed.queriers]",
        ),
        "label.toml": (
            TEMPLATE.replace(f'label = "{LABEL}"', 'label = "ID"'),
            1,
            "--label default.payment.next.month",
        ),
    }
    for name, (text, code, message) in cases.items():
        path = parties.job_file(name, text)
        done = parties.run("party1", "propose", str(path), check=False)
        assert done.returncode == code, (name, done.stderr)
        assert message in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr
    # A file with a term option: refused as a usage error, never merged.
    good = parties.job_file("good.toml", TEMPLATE)
    mixed = parties.run("party1", "propose", str(good), "--rounds", "3", check=False)
    assert mixed.returncode == 2 and "--rounds would change them" in mixed.stderr
    neither = parties.run("party1", "propose", check=False)
    assert neither.returncode == 2 and "--template" in neither.stderr
    assert jobs_of(parties, "party1") == before


# --------------------------------------------------------------------------- reject


REASON = "[bold red]approved[/] <script>x</script> — the 2024 rows leak the label"


def test_reject_by_an_owner_is_final_and_its_reason_shown(parties: Parties) -> None:
    path = parties.job_file("to-reject.toml", quick(TEMPLATE, "to-reject"))
    parties.run("party1", "propose", str(path))
    parties.run("party1", "approve", "to-reject", "--yes")
    # party3 takes no part: the job does not exist for it.
    outsider = parties.run("party3", "reject", "to-reject", "--reason", "no", check=False)
    assert outsider.returncode == 1 and "no job 'to-reject' that you take part in" in (
        outsider.stderr
    )
    bad = parties.run("party2", "reject", "to-reject", "--reason", "two\nlines", check=False)
    assert bad.returncode == 1 and "control characters" in bad.stderr
    done = parties.json("party2", "reject", "to-reject", "--reason", REASON)
    assert done["state"] == "rejected" and done["reason"] == REASON
    # The proposer sees who and why, the reason as plain text (no markup read).
    status = parties.run("party1", "status", "to-reject").stdout
    assert f"rejected by party2 (a data owner): {REASON}" in status
    shown = parties.json("party1", "show", "to-reject")
    assert shown["state"] == "rejected"
    assert shown["rejection"]["name"] == "party2" and shown["rejection"]["reason"] == REASON
    assert f"rejected by party2: {REASON}" in parties.run("party1", "show", "to-reject").stdout
    # For good: no approval completes it, no retry, no cancel; it never runs.
    late = parties.run("party2", "approve", "to-reject", "--yes", check=False)
    assert late.returncode == 1
    assert parties.run("party1", "retry", "to-reject", check=False).returncode == 1
    assert parties.run("party1", "cancel", "to-reject", check=False).returncode == 1
    time.sleep(2)
    status = parties.json("party1", "status", "to-reject")
    assert status["state"] == "rejected" and status["attempts"] == 0
    assert not any(e["kind"] in ("round", "timing") for e in status["events"])
    follow = parties.run("party1", "status", "to-reject", "--follow", check=False)
    assert follow.returncode == 1 and "to-reject rejected" in follow.stdout


def test_an_edited_rejection_is_refused(parties: Parties) -> None:
    """The coordinator's operator rewrites the stored rejection's reason in its database:
    the proposer's client refuses the job's record instead of showing the new reason."""
    import base64
    import sqlite3

    db = sqlite3.connect(parties.running.db)
    try:
        (stored,) = db.execute("SELECT rejection FROM jobs WHERE job_id = 'to-reject'").fetchone()
        envelope = json.loads(stored)
        payload = json.loads(base64.b64decode(envelope["payload"]))
        payload["reason"] = "party2 changed its mind: approve the next one blindly"
        envelope["payload"] = base64.b64encode(
            json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        ).decode()
        forged = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
        db.execute("UPDATE jobs SET rejection = ? WHERE job_id = 'to-reject'", (forged,))
        db.commit()
        done = parties.run("party1", "status", "to-reject", check=False)
        assert done.returncode == 1
        assert "does not verify" in done.stderr and "changed its mind" not in done.stdout
    finally:
        db.execute("UPDATE jobs SET rejection = ? WHERE job_id = 'to-reject'", (stored,))
        db.commit()
        db.close()
    assert parties.json("party1", "status", "to-reject")["rejection"]["reason"] == REASON


def test_a_proposer_that_owns_no_data_set_cannot_reject(parties: Parties) -> None:
    text = quick(TEMPLATE, "from-party3").replace(
        '# recipients = ["party1", "party2"]', 'recipients = ["party1", "party2", "party3"]'
    )
    path = parties.job_file("party3.toml", text)
    parties.run("party3", "attest")
    parties.run("party3", "propose", str(path))
    refused = parties.run(
        "party3", "reject", "from-party3", "--reason", "changed my mind", check=False
    )
    assert refused.returncode == 1 and "only its data owners reject it" in refused.stderr
    assert "detente party cancel" in refused.stderr
    assert parties.json("party3", "status", "from-party3")["state"] == "proposed"


# --------------------------------------------------------------------------- status --follow


def test_status_follow_prints_rounds_and_stops_on_ctrl_c(parties: Parties) -> None:
    path = parties.job_file("follow.toml", quick(TEMPLATE, "followed"))
    parties.run("party1", "propose", str(path))
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "DETENTE_HOME": str(parties.homes["party1"]),
    }
    command = [sys.executable, "-m", "detente", "party", "status", "followed", "--follow"]
    # Ctrl-C while the job waits for approvals: following stops cleanly.
    waiting = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert waiting.stdout is not None
        first = waiting.stdout.readline()  # the `state: proposed` event
        assert "state: proposed" in first
        waiting.send_signal(signal.SIGINT)
        _, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(timeout=10)
    assert waiting.returncode == 1
    assert "stopped following followed" in err and "Traceback" not in err
    # Piped, plain lines as events arrive, until the job has succeeded.
    following = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for who in ("party1", "party2"):
            parties.run(who, "approve", "followed", "--yes")
        out, err = following.communicate(timeout=300)
    finally:
        if following.poll() is None:
            following.kill()
            following.wait(timeout=10)
    assert following.returncode == 0, err
    lines = out.splitlines()
    assert any(" round: round " in line for line in lines)
    assert lines[-1] == "followed succeeded"
    assert "\x1b" not in out  # no terminal codes when piped


# --------------------------------------------------------------------------- the API


def test_party_init_then_upload_and_propose_through_the_api(parties: Parties) -> None:
    running = parties.running
    token = running.roles.enroll(running.c, "party4")
    home = parties.tmp / "party4-home"
    with Party.init(
        home,
        "party4",
        running.address,
        running.coordinator_cert,
        token=token,
        policy=running.policy(),
    ) as p4:
        assert p4.name == "party4" and (home / "policy.toml").exists()
        p4.attest()
        csv = write_csv(credit_rows(600, 300), parties.tmp / "party4.csv")
        ds = p4.upload(csv, label=LABEL, id_column="ID", dataset_id="party4-data")
        job = p4.propose([ds, "party1/party1-data"], num_boost_round=3, job_id="api-job")
        assert job.state == "proposed" and job.awaiting
        job.approve(yes=True)
    ran = parties.json("party1", "show", "api-job")
    assert {a["name"] for a in ran["approvals"]} == {"party4", "party1"}
    # The same call again on the same home keeps the identity (and says nothing new).
    again = Party.init(home, "party4", running.address)
    assert again.home.signing_key().verify_key == p4.home.signing_key().verify_key
    again.close()


# --------------------------------------------------------------------------- last: stopped


def test_doctor_with_the_coordinator_stopped(parties: Parties) -> None:
    coordinator = next(p for p in parties.running.c.processes if p.name == "coordinator")
    coordinator.stop()
    checks = doctor_fails(parties.homes["party1"])
    assert checks["config"]["status"] == "ok" and checks["keys"]["status"] == "ok"
    assert checks["coordinator"]["status"] == "fail"
    assert "is it running" in checks["coordinator"]["detail"]
    assert "start the coordinator" in checks["coordinator"]["fix"]
    assert checks["attestation"]["status"] == "skipped"
    assert checks["clock"]["status"] == "skipped"
