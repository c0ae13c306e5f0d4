"""The egress guard and the memory limits inside a real enclave process (SIMULATION backend).

One image with a small entry point that performs the actions named on its
command line and reports, for each, "ok …" or the exception it met; each test
starts that enclave with `python -m libos.cli run DIR ACTIONS…`.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from libos_testkit import make_instance, run_cli

from libos import image

ENTRY = """
import json
import os
import socket
import subprocess
import sys


def _write(path):
    with open(path, "w") as fh:
        fh.write("written in the enclave")
    return "ok"


def _connect(target):
    host, _, port = target.rpartition(":")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect((host.strip("[]"), int(port)))
    return "ok"


def _listen(host):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                return "ok " + conn.recv(4).decode()


def _exec(program):
    return "ok " + str(subprocess.run([program, "-c", "print(1)"], capture_output=True).returncode)


def _alloc(nbytes):
    from libos import limits
    limits.check_allocation(int(nbytes), "test matrix of 1000 rows")
    return "ok"


def _rlimit(_):
    import resource
    from libos import limits
    return "ok " + json.dumps(
        {"as": resource.getrlimit(resource.RLIMIT_AS)[0], "memory": limits.current().memory_bytes}
    )


def _bigalloc(nbytes):
    block = bytearray(int(nbytes))
    return "ok " + str(len(block))


def _peak(nbytes):
    from libos import limits
    before = limits.peak_rss_bytes()
    block = bytearray(int(nbytes))
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    after = limits.peak_rss_bytes()
    del block
    return "ok " + json.dumps({"before": before, "after": after})


ACTIONS = {
    "write": _write, "connect": _connect, "listen": _listen, "exec": _exec,
    "alloc": _alloc, "rlimit": _rlimit, "bigalloc": _bigalloc, "peak": _peak,
}


def main(argv):
    out = []
    for action in argv:
        kind, _, arg = action.partition("=")
        try:
            result = ACTIONS[kind](arg)
        except BaseException as exc:
            result = "refused " + type(exc).__name__ + ": " + str(exc)
        out.append(result)
    print(json.dumps(out))
    return 0
"""

PACKAGE = "libos_test_guard"
MEMORY_MB = 256


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    src = tmp_path_factory.mktemp("src")
    (src / PACKAGE).mkdir()
    (src / PACKAGE / "__init__.py").write_text("")
    (src / PACKAGE / "main.py").write_text(ENTRY)
    sys.path.insert(0, str(src))
    try:
        instance = make_instance(
            tmp_path_factory.mktemp("guard") / "instance",
            entry_point=f"{PACKAGE}.main:main",
            packages=["libos", "protocols", PACKAGE],
            distributions=["cryptography"],
            resources={"memory_mb": MEMORY_MB, "threads": 2, "processes": 2},
        )
        image.build(instance)
    finally:
        sys.path.remove(str(src))
    yield instance


def act(instance: Path, *actions: str) -> list[str]:
    result = run_cli("run", str(instance), *actions)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(out) == len(actions)
    return out


def test_writes_only_inside_the_enclaves_directories(guarded: Path, tmp_path: Path) -> None:
    outside = tmp_path / "leak.csv"
    (guarded / "logs").mkdir(exist_ok=True)  # made by the first run otherwise
    (guarded / "data").mkdir(exist_ok=True)  # made when the mount is first opened otherwise
    escape = guarded / "logs" / "link-out"
    escape.symlink_to(tmp_path / "via-link.txt")
    out = act(
        guarded,
        f"write={outside}",
        f"write={guarded / 'image' / 'root' / 'libos' / 'planted.py'}",
        f"write={escape}",
        f"write={guarded / 'logs' / 'fine.log'}",
        f"write={guarded / 'sealed' / 'fine.bin'}",
        f"write={guarded / 'data' / 'fine.bin'}",  # the encrypted mount's host directory
        f"write={tmp_path / 'enclave.port'}",  # [egress] allow_write = ["*.port", ...]
        "write=/dev/null",
    )
    for refused in out[:3]:
        assert refused.startswith("refused EgressError: egress guard: opening for writing")
        assert "encrypted mount" in refused
    assert str(outside) in out[0]
    assert str(tmp_path / "via-link.txt") in out[2]  # the link is resolved, not trusted
    assert out[3:] == ["ok"] * 5
    assert not outside.exists() and not (tmp_path / "via-link.txt").exists()
    assert (tmp_path / "enclave.port").exists()


def test_connections_only_where_the_config_allows(guarded: Path) -> None:
    # A real listener on loopback in the test process: the allowed case connects.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        out = act(
            guarded,
            f"connect=127.0.0.1:{port}",
            f"connect=localhost:{port}",
            "connect=203.0.113.7:443",  # TEST-NET-3: refused before a packet leaves
            "connect=[2001:db8::1]:443",
            "listen=127.0.0.1",
            "listen=0.0.0.0",
            f"exec={sys.executable}",
            "exec=/bin/sh",
        )
    assert out[0] == "ok" and out[1] == "ok"
    assert out[2].startswith("refused EgressError: egress guard: connect to 203.0.113.7:443")
    assert "allow_connect" in out[2] and "127.0.0.1:*" in out[2]
    assert out[3].startswith("refused EgressError: egress guard: connect to [2001:db8::1]:443")
    assert out[4] == "ok ping"  # listening on loopback works, and a client can talk to it
    assert out[5].startswith("refused EgressError: egress guard: listen to 0.0.0.0")
    assert "allow_listen" in out[5]
    assert out[6] == "ok 0"  # the enclave's own interpreter may be started (libos.process)
    assert out[7].startswith("refused EgressError: egress guard: starting program '/bin/sh'")


def test_memory_over_the_limit_is_refused_before_allocation(guarded: Path) -> None:
    limit = MEMORY_MB << 20
    out = act(
        guarded,
        f"alloc={1 << 20}",
        f"alloc={limit}",
        "rlimit=",
        f"bigalloc={8 << 30}",
        f"peak={64 << 20}",
    )
    assert out[0] == "ok"
    refused = out[1]
    assert refused.startswith("refused MemoryLimitError: test matrix of 1000 rows needs 256.0 MiB")
    assert "memory limit of 256.0 MiB ([resources] memory_mb in libos.toml)" in refused
    assert "raise the limit" in refused
    caps = json.loads(out[2].removeprefix("ok "))
    assert caps["memory"] == limit
    assert limit < caps["as"] < limit + (4 << 30)  # RLIMIT_AS: the budget plus headroom
    # Past the address-space cap an allocation fails (the backstop nobody has to call).
    assert out[3].startswith("refused MemoryError")
    peak = json.loads(out[4].removeprefix("ok "))
    assert peak["after"] - peak["before"] > 48 << 20
