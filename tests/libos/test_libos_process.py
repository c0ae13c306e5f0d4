"""libos.process on real images: children inside the enclave, every way they can end.

Each test runs an enclave whose entry point is libos_test_probes.process_probe:main; it
spawns children with the targets of that module and prints one JSON line per
child saying what the parent saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from libos_testkit import make_instance, write_config

from libos import image, launcher, process
from libos.process import framing
from libos.runtime import NotInEnclaveError
from protocols.errors import FormatError

PROCESSES = 2  # [resources] processes of the probe images


def _build(directory: Path) -> tuple[Path, image.Measurement]:
    instance = make_instance(
        directory,
        entry_point="libos_test_probes.process_probe:main",
        resources={"memory_mb": 4096, "threads": 2, "processes": PROCESSES},
    )
    return instance, image.build(instance)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, image.Measurement]:
    return _build(tmp_path_factory.mktemp("process") / "instance")


def _start(instance: Path, *scenarios: str) -> subprocess.Popen[str]:
    """The enclave process itself (not a launcher in between), so the test holds its pid."""
    cmd, env = launcher.command(instance, list(scenarios))
    return subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(enclave: subprocess.Popen[str]) -> Iterator[dict]:
    assert enclave.stdout is not None
    for line in enclave.stdout:
        yield json.loads(line)


def _run(instance: Path, *scenarios: str) -> dict[str, dict]:
    enclave = _start(instance, *scenarios)
    try:
        out, err = enclave.communicate(timeout=120)
    finally:
        if enclave.poll() is None:
            enclave.kill()
            enclave.wait()
    assert enclave.returncode == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["scenario"] for r in results] == list(scenarios)
    return {f"{i}:{r['scenario']}": r for i, r in enumerate(results)}


def test_a_child_shares_the_measurement_and_gets_its_payload_only_over_the_pipe(probe):
    instance, measured = probe
    (echo,) = _run(instance, "echo").values()
    assert echo["result"] == "done"
    kinds = [kind for kind, _ in echo["messages"]]
    assert kinds == ["echo", "reply", "info"]
    payload = echo["messages"][0][1]
    assert payload.startswith("PAYLOAD-")
    assert echo["messages"][1][1] == "cba"  # the child answered the parent's "abc"
    info = json.loads(echo["messages"][2][1])
    # The child installed the runtime of the same verified image: same MRENCLAVE,
    # without attesting again; the payload never touched argv or the environment.
    assert info["mrenclave"] == measured.mrenclave
    assert info["payload_in_environ"] is False and info["payload_in_cmdline"] is False
    assert (instance / "logs" / "echo.log").exists()


def test_every_way_a_child_ends_is_a_clean_error_and_the_parent_keeps_serving(probe):
    instance, _ = probe
    seen = _run(instance, "segfault", "exit", "raise", "refuse", "memory", "kill", "echo")
    segfault, exited, raised, refused, memory, killed, echo = seen.values()

    assert segfault["error_type"] == "ChildCrashedError"
    assert segfault["exit_code"] == -signal.SIGSEGV
    assert "crashed: exit code -11 (killed by SIGSEGV)" in segfault["message"]
    assert segfault["messages"] == [["started", ""]]  # what it sent before it died arrived
    # faulthandler wrote the crashing stack to the child's own log.
    assert "Fatal Python error: Segmentation fault" in (instance / "logs/segfault.log").read_text()

    assert exited["error_type"] == "ChildCrashedError" and exited["exit_code"] == 3
    assert "crashed: exit code 3;" in exited["message"]

    # An unexpected exception: its type reaches the parent; its text (which may
    # hold data) goes nowhere, not even to the child's log, a host file. The log
    # keeps the stack, to find the bug.
    assert raised["error_type"] == "ChildFailedError"
    assert "builtins.ValueError" in raised["message"]
    assert "internal detail" not in raised["message"]
    raise_log = (instance / "logs/raise.log").read_text()
    assert "PAYLOAD-" not in raise_log  # the value the text quoted (its source line may show)
    assert "ValueError (message withheld: it may quote data)" in raise_log
    assert "in raise_internal" in raise_log

    # A DetenteError keeps its class and its user-facing message.
    assert refused["error_type"] == "IntegrityError"
    assert refused["message"] == "the probe refused its input: a deliberate, user-facing error"

    assert memory["error_type"] == "ChildFailedError"
    assert "ran out of memory (MemoryError)" in memory["message"]

    assert killed["error_type"] == "ChildCrashedError" and killed["exit_code"] == -signal.SIGKILL
    assert "was stopped by its parent" in killed["message"]
    assert killed["peak_rss_bytes"] > 1 << 20

    assert echo["result"] == "done"  # the same parent still spawns and serves


def test_no_more_children_run_at_once_than_the_config_allows(probe):
    instance, _ = probe
    limit, echo = _run(instance, "limit", "echo").values()
    assert limit["started"] == PROCESSES
    assert f"{PROCESSES} of the enclave's {PROCESSES} child processes" in limit["message"]
    assert "[resources] processes in libos.toml" in limit["message"]
    assert echo["result"] == "done"  # the stopped children no longer count


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie may wait for a reaper that never comes)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_child_exits_when_its_parent_dies(probe):
    instance, _ = probe
    enclave = _start(instance, "orphan")
    try:
        (line,) = [next(_lines(enclave))]
        pid = int(line["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"libos.process" in f.read()
        assert enclave.stdin is not None
        enclave.stdin.write("exit\n")  # now the parent leaves without closing its handle
        enclave.stdin.flush()
        enclave.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        still_running = _alive(pid)
        if still_running:
            os.kill(pid, signal.SIGKILL)  # clean up by pid before failing
        assert not still_running, "the orphaned child did not exit"
    finally:
        if enclave.poll() is None:
            enclave.kill()
            enclave.wait()


def _wait_then(instance: Path, change, *scenarios: str) -> dict:
    """Start an enclave, change its image on disk while it waits, then let it spawn."""
    enclave = _start(instance, "wait", *scenarios)
    try:
        lines = _lines(enclave)
        assert next(lines)["ready"] is True
        change()
        assert enclave.stdin is not None
        enclave.stdin.write("go\n")
        enclave.stdin.flush()
        result = next(lines)
        enclave.wait(timeout=60)
        return result
    finally:
        if enclave.poll() is None:
            enclave.kill()
            enclave.wait()


def test_a_child_refuses_to_start_from_an_image_changed_after_the_enclave_started(tmp_path):
    instance, _ = _build(tmp_path / "instance")
    victim = instance / "image" / "root" / "protocols" / "documents" / "terms.py"

    def tamper() -> None:
        victim.write_bytes(victim.read_bytes() + b"\n# changed on the host\n")

    result = _wait_then(instance, tamper, "echo")
    assert result["error_type"] == "IntegrityError"
    assert "protocols/documents/terms.py" in result["message"]
    assert "result" not in result


def test_a_child_of_another_measurement_gets_no_payload(tmp_path):
    instance, measured = _build(tmp_path / "instance")

    def rebuild() -> None:
        # A validly signed image, but another measurement: the child runs it,
        # and the parent must not hand it anything.
        write_config(instance, isv_svn=2)
        assert image.build(instance).mrenclave != measured.mrenclave

    result = _wait_then(instance, rebuild, "echo")
    assert result["error_type"] == "IntegrityError"
    assert f"not this enclave's {measured.mrenclave[:16]}" in result["message"]
    assert result["messages"] == []


def test_spawn_needs_an_enclave_and_a_well_formed_target():
    with pytest.raises(NotInEnclaveError):
        process.spawn("libos_test_probes.process_probe:echo", b"")
    with pytest.raises(FormatError, match="message kind"):
        framing.write_frame(1, "bad kind!", b"")


def test_a_truncated_or_oversized_frame_is_refused():
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, framing._HEADER.pack(4, 10) + b"data" + b"short")
        os.close(write_fd)
        with pytest.raises(FormatError, match="truncated frame"):
            framing.FrameReader(read_fd, "test peer").read(timeout=5)
    finally:
        os.close(read_fd)
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, framing._HEADER.pack(4, framing.MAX_BODY + 1) + b"data")
        with pytest.raises(FormatError, match="announced a frame"):
            framing.FrameReader(read_fd, "test peer").read(timeout=5)
    finally:
        os.close(read_fd)
        os.close(write_fd)
