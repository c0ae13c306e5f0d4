"""Against real coordinator and enclave processes: refusals a party relies on."""

from __future__ import annotations

import json
import secrets
import time

import grpc
import pyarrow.csv as pacsv
import pytest

from protocols.attestation import Evidence, EvidenceRefused, verify_evidence
from protocols.policy import AttestationPolicy
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc
from tests.e2e.conftest import LABEL, credit_rows, detente

pytestmark = pytest.mark.e2e


def test_attest_refuses_a_measurement_outside_the_policy_and_upload_then_refuses(
    running, small_csv
):
    home = running.party("outsider")
    wrong = running.policy(mrenclave="00" * 32)
    done = detente(["party", "attest", "--policy", str(wrong)], home, check=False)
    assert done.returncode == 1
    assert "MRENCLAVE" in done.stderr and "is not in the policy" in done.stderr
    assert "does not trust the enclave" not in done.stderr  # the party refused, not the relay
    done = detente(["party", "upload", str(small_csv), "--label", LABEL], home, check=False)
    assert done.returncode == 1 and "run `detente party attest`" in done.stderr
    assert not (home / "datasets").exists()


def test_simulation_evidence_is_refused_unless_the_policy_allows_it(running):
    home = running.party("strict")
    strict = running.policy(simulation=False)
    done = detente(["party", "attest", "--policy", str(strict)], home, check=False)
    assert done.returncode == 1
    assert "SIMULATION" in done.stderr and "allow_simulation" in done.stderr


def test_evidence_for_another_nonce_is_refused(running):
    policy = AttestationPolicy.load(running.policy())
    sent, other = secrets.token_bytes(32), secrets.token_bytes(32)
    with running.remote(running.party("nonce-checker")) as remote:
        reply = remote.evidence(sent)
    evidence = Evidence(reply.identity, reply.quote, reply.backend)
    assert verify_evidence(evidence, sent, policy).simulation
    with pytest.raises(EvidenceRefused, match="wrong nonce"):
        verify_evidence(evidence, other, policy)


def test_a_job_missing_one_approval_never_runs(running, tmp_path):
    table = credit_rows(0, 400)
    homes = []
    for n, name in enumerate(["owner-a", "owner-b"]):
        home = running.party(name)
        detente(["party", "attest"], home)
        csv = tmp_path / f"{name}.csv"
        pacsv.write_csv(table.slice(n * 200, 200), csv)
        detente(
            [
                "party",
                "upload",
                str(csv),
                "--label",
                LABEL,
                "--id",
                "ID",
                "--dataset-id",
                f"{name}-ds",
            ],
            home,
        )
        homes.append(home)
    done = detente(
        [
            "party",
            "propose",
            "--dataset",
            "owner-a-ds",
            "--dataset",
            "owner-b-ds",
            "--label",
            LABEL,
            "--id",
            "ID",
            "--rounds",
            "5",
            "--json",
        ],
        homes[0],
    )
    job_id = json.loads(done.stdout)["job_id"]
    detente(["party", "approve", job_id, "--yes"], homes[0])
    time.sleep(1.0)
    status = json.loads(detente(["party", "status", job_id, "--json"], homes[0]).stdout)
    assert status["state"] == "proposed" and status["approvals"] == 1
    done = detente(["party", "results", job_id, "--out", str(tmp_path)], homes[0], check=False)
    assert done.returncode == 1 and "proposed" in done.stderr

    # A coordinator that skipped the check gains nothing: the enclave itself refuses.
    with running.remote(homes[0]) as remote:
        job = remote.job(job_id)
        manifests = [d.manifest for d in remote.datasets() if d.dataset_id.startswith("owner-")]
    channel = running.enclave_channel()
    stub = enclave_pb2_grpc.EnclaveStub(channel)
    spec = enclave_pb2.JobSpec(terms=job.terms, approvals=list(job.approvals), manifests=manifests)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.RunJob(iter([enclave_pb2.RunJobRequest(spec=spec)]), timeout=60))
    channel.close()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks the approval" in info.value.details()
    assert job.state == "proposed"


ATTEST_RULES = [
    "identity",
    "quote",
    "simulation",
    "tcb",
    "measurement",
    "debug",
    "report-data",
    "age",
]


def test_party_attest_explain_then_inspect_the_kept_quote(running, tmp_path):
    """`detente party attest --explain` prints the verdict rule by rule; the quote the
    party kept can be inspected with `detente attest inspect`."""
    import base64

    home = running.party("explainer")
    done = detente(["party", "attest", "--explain"], home)
    lines = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]
    assert [line.split(":")[0] for line in lines] == [f"pass {rule}" for rule in ATTEST_RULES]
    assert any(line.startswith("pass tcb: TCB status Simulation") for line in lines)
    assert "SIMULATION" in done.stderr
    verdict = json.loads(detente(["party", "attest", "--json"], home).stdout)["verdict"]
    assert [r["rule"] for r in verdict] == ATTEST_RULES and all(r["passed"] for r in verdict)

    record = json.loads((home / "attestation.json").read_text())
    quote = tmp_path / "enclave.quote"
    quote.write_bytes(base64.b64decode(record["quote"]))
    policy = str(running.policy())
    doc = json.loads(
        detente(["attest", "inspect", str(quote), "--policy", policy, "--json"], home).stdout
    )
    assert doc["quote"]["mrenclave"] == running.measured["mrenclave"]
    assert doc["simulation"] is True and doc["tcb"]["status"] == "Simulation"
    # Without the policy nobody trusts the simulation root: the command fails.
    bare = detente(["attest", "inspect", str(quote)], home, check=False)
    assert bare.returncode == 1 and "SIMULATION root" in bare.stdout
