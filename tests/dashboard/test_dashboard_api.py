"""The dashboard's JSON API against a live coordinator process with a job."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from tests.dashboard.conftest import QUERIED_ROWS, ROUNDS, Board


def test_the_api_needs_the_operator_token(board: Board) -> None:
    assert board.status("api/jobs", token="") == 401
    assert board.status("api/jobs", token="x" * 43) == 401
    assert board.status("api/openapi.json", token="wrong") == 401
    assert board.status("api/jobs") == 200
    token_file = board.running.coordinator_home / "dashboard-token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600


def test_openapi_describes_every_endpoint(board: Board) -> None:
    spec = board.api("api/openapi.json")
    paths = set(spec["paths"])
    for path in ("overview", "enclaves", "parties", "datasets", "jobs", "jobs/{job_id}",
                 "models", "audit"):  # fmt: skip
        assert f"/api/{path}" in paths
    assert "Job" in spec["components"]["schemas"]


def test_enclave_attested_as_simulation(board: Board) -> None:
    enclaves = board.wait_api_enclave()
    (enclave,) = enclaves
    assert enclave["address"] == board.running.enclave
    assert enclave["health"] == "serving" and enclave["problem"] == ""
    assert enclave["backend"] == "SIMULATION" and enclave["simulation"] is True
    assert enclave["slots"] >= 1 and enclave["draining"] is False
    assert enclave["last_attested_at"] and enclave["last_seen"]
    assert enclave["mrenclave"] == board.running.measured["mrenclave"]
    assert len(enclave["mrsigner"]) == 64
    assert enclave["tcb_status"]
    assert board.api("api/overview")["simulation"] is True


def test_parties_and_public_dataset_metadata(board: Board) -> None:
    parties = {p["name"]: p for p in board.api("api/parties")}
    assert set(parties) == {"alice", "bob"}
    (alice_ds,) = parties["alice"]["datasets"]
    assert alice_ds["dataset_id"] == board.datasets["alice"]
    assert alice_ds["owner"] == "alice" and alice_ds["rows"] == 300
    assert alice_ds["ciphertext_size"] > 0 and len(alice_ds["schema_sha256"]) == 64
    assert alice_ds["withdrawn"] is False


def test_a_proposed_job_shows_who_has_not_approved(board: Board) -> None:
    job = board.api(f"api/jobs/{board.job_id}")
    assert job["state"] == "proposed"
    assert job["rounds"] == ROUNDS and job["proposer"] == "alice"
    assert {a["party"]: a["approved"] for a in job["approvals"]} == {
        "alice": True,
        "bob": False,
    }
    assert [d["owner"] for d in job["terms_datasets"]] == ["alice", "bob"]
    assert job["params"]["num_parallel_tree"] in (20, "20")
    assert job["progress"] == []
    assert board.status("api/jobs/no-such-job") == 404


def test_progress_advances_while_the_job_runs(approved: Board) -> None:
    first = approved.wait_job(lambda j: j["state"] == "running" and len(j["progress"]) >= 2)
    assert first["approved"] == first["approvers"] == 2
    assert first["started_at"] and first["duration_seconds"] > 0
    done = first["rounds_done"]
    assert 0 < done < ROUNDS
    later = approved.wait_job(lambda j: j["rounds_done"] > done or j["state"] != "running")
    assert later["rounds_done"] > done
    seconds = [p["seconds"] for p in later["progress"]]
    assert seconds == sorted(seconds)
    # The owners let the enclave report the metric live: its curve is in the API.
    assert later["live_metrics"] is True and "in the clear" in later["metrics_note"]
    (curve,) = later["metrics"]
    assert (curve["data"], curve["metric"]) == ("validation", "auc") and curve["points"]
    (enclave,) = approved.api("api/enclaves")
    assert approved.job_id in enclave["current_jobs"]
    assert later["worker"] == enclave["address"] and later["worker_losses"] == 0
    summary = {j["job_id"]: j for j in approved.api("api/jobs")}
    assert summary[approved.job_id]["rounds_done"] >= done
    assert summary[approved.pending_id]["state"] == "proposed"


def test_audit_log_chain_status(board: Board) -> None:
    audit = board.api("api/audit?limit=5")
    assert audit["intact"] is True and audit["problem"] == ""
    assert audit["entries"] >= 6 and len(audit["shown"]) == 5
    assert audit["shown"][0]["seq"] == audit["entries"]  # newest first
    assert audit["head"] == audit["shown"][0]["hash"]
    assert board.status("api/audit?limit=-1") == 422


def test_sealed_model_with_what_the_coordinator_relayed(board: Board) -> None:
    (model,) = board.api("api/models")
    assert model["model_id"] == board.sealed_id and model["state"] == "sealed"
    assert sorted(model["owners"]) == ["alice", "bob"]
    assert model["not_retired_by"] == model["owners"] and model["retired_by"] == []
    use = {q["name"]: q for q in model["queriers"]}
    assert use["alice"]["total_rows"] == 100 and use["alice"]["relayed_queries"] == 1
    assert use["alice"]["relayed_rows"] == QUERIED_ROWS
    assert use["alice"]["remaining_by_coordinator_count"] == 100 - QUERIED_ROWS
    assert (use["bob"]["total_rows"], use["bob"]["rows_per_day"]) == (50, 10)
    assert use["bob"]["relayed_rows"] == 0
    job = board.api(f"api/jobs/{board.sealed_id}")
    assert job["model"] == "sealed" and [q["name"] for q in job["queriers"]] == ["alice", "bob"]
    assert [o["name"] for o in job["released"]] == ["metrics"]
    # Its terms keep the metrics encrypted to the recipients: the API says so and charts none.
    assert job["live_metrics"] is False and job["metrics"] == []
    assert "encrypted to the job's recipients" in job["metrics_note"]


def test_nothing_secret_is_served(board: Board) -> None:
    """No wrapped key, ciphertext, signed envelope or token in any API answer."""
    from coordinator.store import SqlStore
    from protocols import canonical

    store = SqlStore(f"sqlite:///{board.running.coordinator_home / 'coordinator.db'}")
    try:
        secrets_ = [board.token]
        for record in store.list_datasets():
            manifest = board_manifest(record.manifest)
            secrets_.append(canonical.b64(manifest.wrapped_key))
        for job in store.list_jobs():
            secrets_ += [a.envelope.hex()[:64] for a in job.approvals]
    finally:
        store.close()
    for path in ("api/overview", "api/enclaves", "api/parties", "api/datasets", "api/jobs",
                 f"api/jobs/{board.job_id}", f"api/jobs/{board.sealed_id}", "api/models",
                 "api/audit?limit=10000"):  # fmt: skip
        text = json.dumps(board.api(path))
        for secret in secrets_:
            assert secret not in text, path
        assert "wrapped_key" not in text and "envelope" not in text


def board_manifest(data: bytes) -> Any:
    from protocols.documents import DatasetManifest
    from protocols.statements import Envelope

    return DatasetManifest.verify(Envelope.from_bytes(data, "manifest"))


REJECTION = "<script>alert(1)</script> & the [bold]2024[/] rows leak the label"


def test_a_rejected_job_shows_its_reason_escaped(board: Board) -> None:
    """bob rejects a job: the API gives the reason as it is, the page escapes it."""
    import urllib.request

    from tests.e2e.conftest import detente, propose

    job_id = propose(
        board.homes["alice"], [board.datasets["alice"], board.datasets["bob"]], "--rounds", "3"
    )
    detente(["party", "reject", job_id, "--reason", REJECTION], board.homes["bob"])
    job = board.api(f"api/jobs/{job_id}")
    assert job["state"] == "rejected"
    assert job["rejection"] == {"party": "bob", "key": job["rejection"]["key"], "reason": REJECTION}
    login = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    login.open(board.url + "login", data=f"token={board.token}".encode(), timeout=30)
    page = login.open(board.url + f"jobs/{job_id}", timeout=30).read().decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; the [bold]2024[/] rows" in page
    assert "<script>alert(1)</script>" not in page
    assert 'class="state rejected"' in page
