"""`python -m coordinator serve` as a real process: port file, RPCs, clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from coordinator_testkit import Party

from protocols import tls
from protocols.request_auth import RequestSigner
from protocols.wire.v1 import coordinator_pb2, coordinator_pb2_grpc


def test_serve_process_writes_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port_file = tmp_path / "port"
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root / "coordinator"), str(root / "protocols"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "serve",
            "--home",
            str(home),
            "--port-file",
            str(port_file),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "coordinator did not write its port file"
            time.sleep(0.05)
        port = int(port_file.read_text())
        # TLS pinned to the certificate the coordinator made in its home; signed requests.
        certificate = tls.load_certificate((home / "coordinator-tls.crt").read_bytes(), "cert")
        party = Party("process-checker")
        # The operator enrolls the name with the CLI while the coordinator runs.
        enrolled = subprocess.run(
            [
                *(sys.executable, "-m", "coordinator", "enroll", "--home", str(home)),
                *("--name", party.name, "--json"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        token = json.loads(enrolled.stdout)["token"]
        with tls.pinned_channel(f"127.0.0.1:{port}", certificate) as channel:
            signed = grpc.intercept_channel(channel, RequestSigner(party.key))
            stub = coordinator_pb2_grpc.CoordinatorStub(signed)
            request = coordinator_pb2.RegisterPartyRequest(
                registration=party.registration(), enrollment_token=token
            )
            stub.RegisterParty(request)
            listed = stub.ListParties(coordinator_pb2.ListPartiesRequest()).parties
            assert [p.name for p in listed] == ["process-checker"]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0, stderr
        assert b"no --enclave-policy given" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (home / "coordinator.log").read_text()
    assert "coordinator serving" in log and "coordinator stopped" in log
    assert (home / "coordinator.db").exists()
