"""The egress policy's decisions, event by event (the hook itself is tested in real enclaves:
test_libos_guard.py; a hook cannot be removed, so none is installed in the test process)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from libos_testkit import PROBE, write_config

from libos import image
from libos.config import InstanceConfig
from libos.egress import EgressError, EgressPolicy, parse_pattern
from protocols.errors import DetenteError, PolicyError


@pytest.fixture
def policy(tmp_path: Path) -> EgressPolicy:
    instance = tmp_path / "instance"
    (instance / "data").mkdir(parents=True)
    return EgressPolicy.for_instance(
        instance,
        allow_connect=["127.0.0.1:*", "[::1]:*", "10.1.0.0/16:8000-8099"],
        allow_listen=["127.0.0.1:*"],
        allow_write=["*.port", "exports/*.json"],
        extra_dirs=[instance / "data"],
    )


def test_the_error_is_a_detente_error_and_a_permission_error() -> None:
    assert issubclass(EgressError, DetenteError) and issubclass(EgressError, PermissionError)


def test_writes(policy: EgressPolicy, tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    for allowed in (
        instance / "sealed" / "identity.sealed",
        instance / "logs" / "worker.log",
        instance / "data" / "a" / "b.bin",
        tmp_path / "anywhere" / "enclave.port",
        instance / "exports" / "x.json",
        "/dev/null",
        f"/proc/{os.getpid()}/clear_refs",
    ):
        policy.check("open", (str(allowed), "w", os.O_WRONLY | os.O_CREAT))
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_APPEND, os.O_CREAT, os.O_TRUNC):
        with pytest.raises(EgressError, match=r"leak\.csv"):
            policy.check("open", (str(tmp_path / "leak.csv"), None, flags))
    with pytest.raises(EgressError):
        policy.check("open", (str(tmp_path / "leak.csv"), "r+", 0))
    # Reads, and already open descriptors, are not the guard's business.
    policy.check("open", (str(tmp_path / "leak.csv"), "r", os.O_RDONLY))
    policy.check("open", (7, "w", os.O_WRONLY))
    # The sealed directory's parent is not inside it ("sealed-evil" is not "sealed").
    with pytest.raises(EgressError):
        policy.check("open", (str(instance / "sealed-evil" / "x"), "w", os.O_WRONLY))
    with pytest.raises(EgressError):
        policy.check("open", (str(instance / "sealed" / ".." / "x"), "w", os.O_WRONLY))


def test_other_file_events(policy: EgressPolicy, tmp_path: Path) -> None:
    inside = str(tmp_path / "instance" / "logs" / "a")
    outside = str(tmp_path / "out")
    policy.check("os.rename", (inside, inside + ".1", None, None))
    with pytest.raises(EgressError, match="renaming to"):
        policy.check("os.rename", (inside, outside, None, None))  # moving a file out
    with pytest.raises(EgressError, match="renaming"):
        policy.check("os.rename", (outside, inside, None, None))
    for event, args in (
        ("os.mkdir", (outside, 0o777, None)),
        ("os.remove", (outside, None)),
        ("os.rmdir", (outside, None)),
        ("os.truncate", (outside, 0)),
        ("os.link", (inside, outside, None, None)),
        ("os.symlink", (inside, outside, None)),
    ):
        with pytest.raises(EgressError):
            policy.check(event, args)
    # dir_fd-relative paths are resolved through the descriptor.
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(EgressError, match=str(tmp_path / "x")):
            policy.check("os.remove", ("x", fd))
    finally:
        os.close(fd)


def test_symlinks_are_resolved(policy: EgressPolicy, tmp_path: Path) -> None:
    logs = tmp_path / "instance" / "logs"
    logs.mkdir(parents=True)
    (logs / "out").symlink_to(tmp_path)
    with pytest.raises(EgressError, match=str(tmp_path / "leak")):
        policy.check("open", (str(logs / "out" / "leak"), "w", os.O_WRONLY))


class FakeSocket:
    """Only the family attribute the policy reads (no socket is opened in the test process)."""

    def __init__(self, family: int) -> None:
        self.family = family


def test_addresses(policy: EgressPolicy) -> None:
    v4, v6 = FakeSocket(socket.AF_INET), FakeSocket(socket.AF_INET6)
    policy.check("socket.connect", (v4, ("127.0.0.1", 50051)))
    policy.check("socket.connect", (v4, ("localhost", 1)))
    policy.check("socket.connect", (v6, ("::1", 5, 0, 0)))
    policy.check("socket.connect", (v6, ("::ffff:127.0.0.1", 5, 0, 0)))  # v4-mapped
    policy.check("socket.connect", (v4, ("10.1.2.3", 8050)))
    policy.check("socket.sendto", (v4, None))  # a connected socket
    policy.check("socket.bind", (v4, ("127.0.0.1", 0)))
    for event, sock, address in (
        ("socket.connect", v4, ("10.1.2.3", 8100)),  # port outside the range
        ("socket.connect", v4, ("10.2.0.1", 8050)),  # host outside the network
        ("socket.connect", v4, ("example.org", 443)),  # names are not resolved
        ("socket.connect", v6, ("2001:db8::1", 443, 0, 0)),
        ("socket.sendto", v4, ("8.8.8.8", 53)),
        ("socket.sendmsg", v4, ("8.8.8.8", 53)),
        ("socket.bind", v4, ("0.0.0.0", 0)),
        ("socket.bind", v4, ("", 0)),
        ("socket.bind", v4, ("10.1.2.3", 8050)),  # connect-allowed is not listen-allowed
        ("socket.connect", FakeSocket(socket.AF_PACKET), ("eth0", 0)),
        ("socket.connect", FakeSocket(socket.AF_UNIX), "/var/run/docker.sock"),
        ("socket.connect", FakeSocket(socket.AF_UNIX), "\0abstract"),
    ):
        with pytest.raises(EgressError, match="egress guard"):
            policy.check(event, (sock, address))


def test_programs(policy: EgressPolicy) -> None:
    policy.check("subprocess.Popen", (sys.executable, [sys.executable, "-c", "0"], None, None))
    policy.check("subprocess.Popen", (None, [sys.executable, "-c", "0"], None, None))
    policy.check("os.posix_spawn", (sys.executable, [sys.executable], {}))
    for event, args in (
        ("subprocess.Popen", (None, ["curl", "https://example.org"], None, None)),
        ("subprocess.Popen", (None, "sh -c 'cat /etc/passwd'", None, None)),
        ("os.exec", ("/bin/sh", ["sh"], {})),
        ("os.spawn", (os.P_WAIT, "/usr/bin/env", ["env"], {})),
        ("os.system", ("ls",)),
    ):
        with pytest.raises(EgressError, match="egress guard"):
            policy.check(event, args)


def test_unrelated_events_pass(policy: EgressPolicy) -> None:
    policy.check("import", ("json", None, [], [], []))
    policy.check("compile", (b"x = 1", "<string>"))


def test_policy_round_trips_as_json(policy: EgressPolicy) -> None:
    assert EgressPolicy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1", "127.0.0.1:http", "[::1]", "::1:80", "host name:80", "10.0.0.1:70000",
     "10.0.0.1:90-80", "*:-1", ""],
)  # fmt: skip
def test_bad_patterns_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_pattern(text)


def test_config_names_a_bad_pattern(tmp_path: Path) -> None:
    image.init(tmp_path)
    write_config(tmp_path, egress={"allow_connect": ["127.0.0.1"], "allow_listen": [],
                                   "allow_write": []})  # fmt: skip
    with pytest.raises(PolicyError) as info:
        InstanceConfig.load(tmp_path)
    assert "'egress.allow_connect'" in str(info.value) and "'127.0.0.1'" in str(info.value)
    write_config(tmp_path, egress={"allow_everything": True})
    with pytest.raises(PolicyError, match=r"'egress\.allow_everything'"):
        InstanceConfig.load(tmp_path)


def test_egress_config_is_measured(tmp_path: Path) -> None:
    image.init(tmp_path)
    write_config(tmp_path, **{**PROBE, "distributions": []})
    before = image.measure(tmp_path).mrenclave
    config = InstanceConfig.load(tmp_path)
    write_config(
        tmp_path,
        egress={
            "allow_connect": [*config.egress.allow_connect, "10.0.0.0/8:443"],
            "allow_listen": list(config.egress.allow_listen),
            "allow_write": list(config.egress.allow_write),
        },
    )
    assert image.measure(tmp_path).mrenclave != before
