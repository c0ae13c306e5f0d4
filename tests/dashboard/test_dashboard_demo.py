"""`detente demo --dashboard`: the roles keep running after the job, until SIGINT."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.e2e.conftest import LABEL, credit_rows, write_csv

DEMO_TIMEOUT = 600.0


def _get(url: str, token: str) -> object:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_keeps_the_dashboard_until_sigint(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETENTE_")}
    env["PYTHONUNBUFFERED"] = "1"
    workdir = tmp_path / "demo"
    data = write_csv(credit_rows(0, 3000), tmp_path / "credit-3000.csv")  # quicker than 30,000
    demo = subprocess.Popen(
        [sys.executable, "-m", "detente", "demo", "--rounds", "10", "--workdir", str(workdir),
         "--data", str(data), "--label", LABEL, "--id", "ID", "--split-by", "EDUCATION",
         "--dashboard", "--dashboard-port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        seen: list[str] = []
        url = token = ""
        deadline = time.monotonic() + DEMO_TIMEOUT
        while not (url and token and "Ctrl-C" in "".join(seen[-1:])):
            assert time.monotonic() < deadline, "".join(seen)
            line = demo.stdout.readline()
            assert line, "the demo exited:\n" + "".join(seen)
            seen.append(line)
            if m := re.match(r"dashboard: (http://127\.0\.0\.1:\d+/)$", line.strip()):
                url = m.group(1)
            if m := re.match(r"login token: (\S+) ", line.strip()):
                token = m.group(1)
        assert "identical to plaintext: yes" in "".join(seen)
        coordinator_port = int((workdir / "coordinator" / "port").read_text())
        dashboard_port = int(url.rsplit(":", 1)[1].rstrip("/"))
        # Still serving after the job: its one job succeeded, the enclave is SIMULATION.
        time.sleep(1)
        assert demo.poll() is None
        (job,) = _get(url + "api/jobs", token)  # type: ignore[misc]
        assert job["state"] == "succeeded" and job["rounds_done"] == 10
        # The demo's owners let the enclave report its metric live: the whole curve is there.
        detail = _get(url + f"api/jobs/{job['job_id']}", token)
        assert detail["live_metrics"] is True  # type: ignore[index]
        (curve,) = detail["metrics"]  # type: ignore[index]
        assert [p["round"] for p in curve["points"]] == list(range(1, 11))
        (enclave,) = _get(url + "api/enclaves", token)  # type: ignore[misc]
        assert enclave["backend"] == "SIMULATION"
        assert (workdir / "coordinator" / "dashboard-token").read_text().strip() == token

        _template_dry_run_against_the_demo(workdir, env, tmp_path)

        demo.send_signal(signal.SIGINT)  # Ctrl-C, to the demo's own pid
        rest, _ = demo.communicate(timeout=60)
        assert demo.returncode == 0, rest
        assert "stopping the coordinator and the enclave" in rest
        assert not _listening(dashboard_port) and not _listening(coordinator_port)
    finally:
        if demo.poll() is None:
            # SIGINT first: the demo stops its roles by their pids (SIGKILL would orphan them).
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait(timeout=30)


def _template_dry_run_against_the_demo(workdir: Path, env: dict[str, str], tmp: Path) -> None:
    """A newcomer joins the demo's coordinator, writes the job file template and dry-runs
    it as it is: the template names the demo's data sets (party1-data, party2-data)."""

    def run(*args: str, home: Path | None = None) -> str:
        extra = {"DETENTE_HOME": str(home)} if home is not None else {}
        done = subprocess.run(
            [sys.executable, "-m", "detente", *args],
            env={**env, **extra}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    coordinator = workdir / "coordinator"
    token = json.loads(
        run("coordinator", "enroll", "--home", str(coordinator), "--name", "newcomer", "--json")
    )["token"]
    home = tmp / "newcomer"
    address = f"127.0.0.1:{(coordinator / 'port').read_text().strip()}"
    init = ["party", "init", "--name", "newcomer", "--coordinator", address]
    init += ["--coordinator-cert", str(coordinator / "coordinator-tls.crt")]
    init += ["--policy", str(workdir / "policy.toml"), "--enrollment-token", token]
    run(*init, home=home)
    run("party", "attest", home=home)
    job_file = tmp / "job.toml"
    run("party", "propose", "--template", str(job_file), home=home)
    dry = json.loads(run("party", "propose", str(job_file), "--dry-run", "--json", home=home))
    assert dry["proposed"] is False and dry["approvers"] == ["party1", "party2"]
    assert dry["review"]["refusals"] == []
    assert [d["dataset_id"] for d in dry["review"]["datasets"]] == ["party1-data", "party2-data"]
