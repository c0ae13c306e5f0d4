"""The dashboard of a coordinator process with no job: access rules, and an operator who
edits the audit log in the database (the dashboard must say the chain is broken)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.dashboard import parse_address
from protocols.errors import PolicyError, SetupError

TOKEN = "operator-chosen-token-" + "x" * 20


@dataclass
class Served:
    home: Path
    url: str
    popen: subprocess.Popen[bytes]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETENTE_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _detente(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detente", *args],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    home = tmp_path / "coord"
    port_file = tmp_path / "port"
    args = ["coordinator", "serve", "--home", str(home), "--port-file", str(port_file)]
    log = (tmp_path / "out").open("wb")
    popen = subprocess.Popen(
        [sys.executable, "-m", "detente", *args, "--dashboard", "127.0.0.1:0"],
        env=_env(DETENTE_DASHBOARD_TOKEN=TOKEN),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert popen.poll() is None, (tmp_path / "out").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield Served(home, (home / "dashboard.url").read_text().strip(), popen)
    finally:
        popen.terminate()
        popen.wait(timeout=30)
        log.close()


def _get(url: str, token: str = TOKEN, host: str | None = None) -> tuple[int, dict, bytes]:
    headers = {"Authorization": f"Bearer {token}"}
    if host is not None:
        headers["Host"] = host
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=30
        ) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_an_edited_audit_log_shows_as_broken(served: Served) -> None:
    for name in ("alice", "bob"):
        done = _detente("coordinator", "enroll", "--home", str(served.home), "--name", name)
        assert done.returncode == 0, done.stderr
    status, _, body = _get(served.url + "api/audit")
    audit = json.loads(body)
    assert status == 200 and audit["intact"] is True and audit["entries"] == 2
    # The operator rewrites history: the first enrollment now names someone else.
    with sqlite3.connect(served.home / "coordinator.db") as db:
        db.execute("UPDATE audit_log SET subject = 'mallory' WHERE seq = 1")
    audit = json.loads(_get(served.url + "api/audit")[2])
    assert audit["intact"] is False
    assert "entry 1" in audit["problem"] and "altered" in audit["problem"]
    assert json.loads(_get(served.url + "api/overview")[2])["audit_intact"] is False
    cookie_login = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    cookie_login.open(served.url + "login", data=f"token={TOKEN}".encode())
    page = cookie_login.open(served.url + "audit").read().decode()
    assert "Hash chain BROKEN" in page and "entry 1" in page


def test_access_rules(served: Served) -> None:
    assert (served.home / "dashboard-token").read_text().strip() == TOKEN  # the operator's
    assert _get(served.url + "api/jobs")[0] == 200
    assert _get(served.url + "api/jobs", token=TOKEN[:-1] + "y")[0] == 401
    # A page of another origin that resolves to 127.0.0.1 (DNS rebinding) is refused.
    assert _get(served.url + "api/jobs", host="attacker.example")[0] == 400
    status, headers, body = _get(served.url)
    assert status == 200 and b"SIMULATION" not in body  # no enclave: nothing simulated
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    # No enclave configured: the dashboard says so instead of a worker.
    assert json.loads(_get(served.url + "api/enclaves")[2]) == []
    assert b"No enclave worker registered" in _get(served.url + "enclaves")[2]
    # The coordinator stops cleanly on SIGTERM, and its dashboard with it.
    port = int(served.url.rsplit(":", 1)[1].rstrip("/"))
    served.popen.terminate()
    assert served.popen.wait(timeout=30) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5)


def test_a_weak_operator_token_or_a_public_address_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="loopback"):
        parse_address("0.0.0.0:8765")
    with pytest.raises(SetupError, match="HOST:PORT"):
        parse_address("8765")
    weak = _detente(
        "coordinator", "serve", "--home", str(tmp_path), "--dashboard", "127.0.0.1:0",
        env=_env(DETENTE_DASHBOARD_TOKEN="short"),
    )  # fmt: skip
    assert weak.returncode != 0 and "DETENTE_DASHBOARD_TOKEN is too weak" in weak.stderr
    public = _detente("coordinator", "serve", "--home", str(tmp_path), "--dashboard", "0.0.0.0:1")
    assert public.returncode != 0 and "loopback address only" in public.stderr
