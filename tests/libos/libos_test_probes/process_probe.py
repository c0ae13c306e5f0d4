"""A diagnostic entry point for in-enclave child processes (libos.process).

Set ``entry_point = "libos_test_probes.process_probe:main"`` (and add
``libos_test_probes`` to ``packages``) in an instance's libos.toml and run
``detente libos run DIR -- SCENARIO...``: for each scenario the enclave spawns
a child running one of the targets below and prints one JSON line saying what
the parent saw (the messages, or the error it got). The same enclave process
goes on to the next scenario, which shows that a child's crash leaves its
parent serving. ``wait`` reads a line from stdin first (so a
test can change the image meanwhile); ``orphan`` spawns a child that sleeps
and leaves without closing it (the child must exit on its own); ``limit``
starts children until ``[resources] processes`` refuses one.

The targets crash on purpose; they exist to check the parent's handling of
each way a child can end, on a real image.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

from libos import process, runtime
from protocols.errors import DetenteError, IntegrityError

SLEEP = "libos_test_probes.process_probe:sleep"

SCENARIOS = {
    "echo": "echo",
    "segfault": "segfault",
    "exit": "exit_now",
    "raise": "raise_internal",
    "refuse": "raise_detente",
    "memory": "out_of_memory",
    "kill": "sleep",
}


def echo(channel: process.Channel, payload: bytes) -> None:
    """Send the payload back, answer one message, and say where the payload did not go."""
    rt = runtime.current()
    channel.send("echo", payload)
    message = channel.recv(timeout=30)
    channel.send("reply", message.body[::-1])
    with open("/proc/self/environ", "rb") as f:
        environ = f.read()
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read()
    info = {
        "pid": os.getpid(),
        "mrenclave": rt.mrenclave,
        "payload_in_environ": payload in environ,
        "payload_in_cmdline": payload in cmdline,
    }
    channel.send("info", json.dumps(info).encode())


def segfault(channel: process.Channel, payload: bytes) -> None:
    channel.send("started")
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def exit_now(channel: process.Channel, payload: bytes) -> None:
    channel.send("started")
    os._exit(3)


def raise_internal(channel: process.Channel, payload: bytes) -> None:
    raise ValueError(f"internal detail {payload.decode()}")


def raise_detente(channel: process.Channel, payload: bytes) -> None:
    raise IntegrityError("the probe refused its input: a deliberate, user-facing error")


def out_of_memory(channel: process.Channel, payload: bytes) -> None:
    bytearray(1 << 62)  # MemoryError at once: no allocator can give 4 EiB


def sleep(channel: process.Channel, payload: bytes) -> None:
    channel.send("started", str(os.getpid()).encode())
    time.sleep(3600)


def _run(scenario: str) -> dict[str, object]:
    target = f"libos_test_probes.process_probe:{SCENARIOS[scenario]}"
    out: dict[str, object] = {"scenario": scenario, "messages": []}
    messages: list[list[str]] = []
    try:
        with process.spawn(target, b"PAYLOAD-" + os.urandom(8).hex().encode(), name=scenario) as c:
            out["pid"] = c.pid
            for message in c.messages():
                messages.append([message.kind, message.body.decode("utf-8", "replace")])
                if message.kind == "echo":
                    c.send("ping", b"abc")
                if scenario == "kill" and message.kind == "started":
                    c.kill()
            out["result"] = "done"
    except DetenteError as exc:
        out["error_type"] = type(exc).__name__
        out["message"] = str(exc)
        ended = getattr(exc, "ended", None)
        if ended is not None:
            out["exit_code"] = ended.exit_code
            out["peak_rss_bytes"] = ended.peak_rss_bytes
    out["messages"] = messages
    return out


def _limit() -> dict[str, object]:
    """Start sleeping children until [resources] processes refuses one; then stop them all."""
    children: list[process.ChildHandle] = []
    out: dict[str, object] = {"scenario": "limit"}
    try:
        for _ in range(64):
            children.append(process.spawn(SLEEP, b"", name="limit"))
    except process.ChildLimitError as exc:
        out["message"] = str(exc)
    finally:
        out["started"] = len(children)
        for child in children:
            child.kill()
            child.close()
    return out


def main(argv: list[str]) -> int:
    for scenario in argv:
        if scenario == "wait":
            print(json.dumps({"scenario": "wait", "ready": True}), flush=True)
            sys.stdin.readline()
            continue
        if scenario == "limit":
            print(json.dumps(_limit()), flush=True)
            continue
        if scenario == "orphan":
            child = process.spawn(SLEEP, b"", name="orphan")
            started = child.recv(timeout=60)
            pid = int(started.body) if started is not None else child.pid
            print(json.dumps({"scenario": "orphan", "pid": pid}), flush=True)
            sys.stdin.readline()  # the test looks at the child first
            os._exit(0)  # leave without closing the handle: the child must notice
        print(json.dumps(_run(scenario)), flush=True)
    return 0
