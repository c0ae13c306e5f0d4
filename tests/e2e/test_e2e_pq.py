"""The post-quantum option against real processes: a PQ party and an X25519 party in one job."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from party_client.home import PartyHome
from protocols.documents import DatasetManifest, IdentityDocument, Registration
from protocols.keys import Kem
from protocols.statements import Envelope
from tests.e2e.conftest import LABEL, Running, credit_rows

pytestmark = pytest.mark.e2e


def _init(running: Running, name: str, pq: bool) -> Path:
    home = running.root / f"party-{name}"
    home.mkdir()
    args = ["party", "init", "--name", name, "--coordinator", running.address]
    args += ["--policy", str(running.policy()), "--coordinator-cert", str(running.coordinator_cert)]
    args += ["--pq"] if pq else []
    args += ["--enrollment-token", running.roles.enroll(running.c, name)]
    out = running.c.run(args, home)
    assert f"HPKE suite: {'mlkem768x25519' if pq else 'x25519'}" in out
    return home


def test_a_pq_party_seals_to_the_enclave_pq_key_and_gets_pq_wrapped_results(
    running: Running, tmp_path: Path
) -> None:
    table = credit_rows(0, 400)
    homes = {
        "bank-pq": _init(running, "bank-pq", pq=True),
        "bank-x": _init(running, "bank-x", pq=False),
    }
    assert PartyHome(homes["bank-pq"]).hpke_key().kem is Kem.MLKEM768_X25519
    assert (homes["bank-pq"] / "keys" / "hpke.key").stat().st_size == 98
    assert PartyHome(homes["bank-x"]).hpke_key().kem is Kem.X25519
    for n, (name, home) in enumerate(homes.items()):
        running.c.run(["party", "attest"], home)
        csv = tmp_path / f"{name}.csv"
        pacsv.write_csv(table.slice(n * 200, 200), csv)
        running.c.run(
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

    # What the coordinator holds: the registration and manifest name each party's suite.
    with running.remote(homes["bank-x"]) as remote:
        parties = {
            r.name: r
            for r in (
                Registration.verify(Envelope.from_bytes(bytes(p.registration)))
                for p in remote.parties()
            )
        }
        manifests = {
            i: DatasetManifest.verify(Envelope.from_bytes(remote.dataset(i).manifest))
            for i in ("bank-pq-ds", "bank-x-ds")
        }
        evidence = remote.evidence(bytes(32))
    identity = IdentityDocument.from_dict(
        json.loads(Envelope.from_bytes(bytes(evidence.identity)).payload)
    )
    assert identity.hpke_pq_key is not None and identity.hpke_pq_key.kem is Kem.MLKEM768_X25519
    assert parties["bank-pq"].hpke_key.kem is Kem.MLKEM768_X25519
    assert parties["bank-x"].hpke_key.kem is Kem.X25519
    pq_manifest, x_manifest = manifests["bank-pq-ds"], manifests["bank-x-ds"]
    assert pq_manifest.sealed_to_hpke_key == identity.hpke_pq_key
    assert len(pq_manifest.wrapped_key) == 1168  # ML-KEM-768 + X25519 enc, then 48 bytes
    assert x_manifest.sealed_to_hpke_key == identity.hpke_key
    assert len(x_manifest.wrapped_key) == 80

    proposed = running.c.run(
        [
            "party",
            "propose",
            "--dataset",
            "bank-pq-ds",
            "--dataset",
            "bank-x-ds",
            "--label",
            LABEL,
            "--id",
            "ID",
            "--rounds",
            "5",
            "--json",
        ],
        homes["bank-pq"],
    )
    job_id = json.loads(proposed)["job_id"]
    for home in homes.values():
        running.c.run(["party", "approve", job_id, "--yes"], home)
    models = {}
    for name, home in homes.items():
        out = tmp_path / f"out-{name}"
        running.c.run(["party", "results", job_id, "--out", str(out), "--wait", "120"], home)
        models[name] = (out / "model.json").read_bytes()
    assert models["bank-pq"] == models["bank-x"] and b"learner" in models["bank-pq"]

    with running.remote(homes["bank-x"]) as remote:
        job = remote.job(job_id)
    statement = json.loads(Envelope.from_bytes(bytes(job.result_statement)).payload)
    wrapped = statement["outputs"][0]["wrapped_keys"]
    sizes = {name: len(base64.b64decode(wrapped[parties[name].signing_key.hex])) for name in homes}
    assert sizes == {"bank-pq": 1168, "bank-x": 80}
