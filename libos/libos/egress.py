"""The egress guard: in-enclave code may not write host files or open connections at will.

``install(policy)`` adds a Python audit hook (PEP 578, ``sys.addaudithook``) to
the enclave process. The launcher installs it before it imports the entry
point (``libos.enclave_start.enter``), so the worker and every library it imports run
under it. From then on the hook refuses, by raising :class:`EgressError`:

- opening a file for writing (``open``/``os.open`` with a write, create, append
  or truncate flag), and creating, renaming, linking, truncating or removing a
  file or directory, anywhere except
  the host directories of the encrypted mounts, the instance's ``sealed/`` and
  ``logs/`` directories, the launcher's bytecode cache, the paths that
  ``[egress] allow_write`` names, ``/dev/null`` and this process's
  ``/proc/<pid>/clear_refs`` (which only resets the peak-memory counter);
- ``socket.connect`` and ``socket.sendto``/``sendmsg`` to an address that no
  ``[egress] allow_connect`` pattern matches, and ``socket.bind`` to one that no
  ``allow_listen`` pattern matches (Unix sockets: only inside the writable
  directories);
- starting any program other than the enclave's own interpreter
  (``subprocess``, ``os.exec*``, ``os.posix_spawn``, ``os.spawn*``,
  ``os.system``), since a foreign program runs without this guard.

:class:`EgressError` is both a :class:`protocols.errors.DetenteError` and a
:class:`PermissionError`: Detente code catches it as its own refusal, and
libraries that handle ``PermissionError`` (logging, tempfile) treat it as the
denied permission it is.

This is a guard against MISTAKES — a library that writes a temporary file, a
debug dump, a misconfigured endpoint — not a boundary against hostile code. Code
in the same interpreter can get around it: through native code (extension
modules, ``ctypes``) that makes system calls without raising audit events, or by
altering the interpreter's state. Native code of the measured distributions
(gRPC's core, XGBoost, Arrow) does its own I/O, which this hook does not see;
what keeps that honest is that only measured code runs. Standard output and
standard error go to the host as they are.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.errors import DetenteError

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_NAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_LOOPBACK = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressError(DetenteError, PermissionError):
    """In-enclave code tried to write a host file or reach an address the config does not allow."""


# --- address patterns -----------------------------------------------------------


@dataclass(frozen=True)
class AddressPattern:
    """One ``HOST:PORT`` pattern of ``[egress] allow_connect`` / ``allow_listen``."""

    text: str
    network: IpNetwork | None  # None with name None: any host
    name: str | None  # a host name, lower case ("localhost" means loopback)
    port_low: int
    port_high: int

    def matches(self, host: IpAddress | str, port: int) -> bool:
        if not self.port_low <= port <= self.port_high:
            return False
        if self.network is None and self.name is None:
            return True
        if isinstance(host, str):  # a host name the guard does not resolve
            if self.name is not None:
                return host == self.name
            # "localhost" stands for loopback (what /etc/hosts says on any sane
            # host; the guard is against mistakes, not against the host).
            return host in _LOOPBACK_NAMES and any(self.matches(a, port) for a in _LOOPBACK)
        if self.network is not None:
            return host.version == self.network.version and host in self.network
        return self.name in _LOOPBACK_NAMES and host.is_loopback


def parse_pattern(text: str) -> AddressPattern:
    """Parse ``HOST:PORT``; raise ValueError saying what a pattern looks like."""
    usage = (
        "'HOST:PORT' with HOST an IP address, a network such as 127.0.0.0/8, "
        "[IPv6], a host name or '*', and PORT a number, a range such as 8000-8099, or '*'"
    )
    if not isinstance(text, str):
        raise ValueError(usage)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(usage)
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(usage)
    network: IpNetwork | None = None
    name: str | None = None
    if host != "*":
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            if not _NAME.fullmatch(host):
                raise ValueError(usage) from None
            name = host.lower()
    low, high = _parse_ports(port, usage)
    return AddressPattern(text, network, name, low, high)


def _parse_ports(port: str, usage: str) -> tuple[int, int]:
    if port == "*":
        return 0, 65535
    low_text, dash, high_text = port.partition("-")
    if not low_text.isdigit() or (dash and not high_text.isdigit()):
        raise ValueError(usage)
    low = int(low_text)
    high = int(high_text) if dash else low
    if not 0 <= low <= high <= 65535:
        raise ValueError(usage)
    return low, high


def _host_of(address: str) -> IpAddress | str:
    """An IP address, or the lower-case host name as given (the guard never resolves names)."""
    if address in ("", "0.0.0.0"):  # noqa: S104 (classifying, not binding)
        return ipaddress.IPv4Address("0.0.0.0")  # noqa: S104
    if address == "<broadcast>":
        return ipaddress.IPv4Address("255.255.255.255")
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # drop an IPv6 zone id
    except ValueError:
        return address.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:a.b.c.d on a dual-stack socket is a.b.c.d
    return ip


# --- the policy -------------------------------------------------------------------


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


@dataclass(frozen=True)
class EgressPolicy:
    """What in-enclave code may write and reach. Pure: ``check`` decides, ``install`` enforces."""

    writable_dirs: tuple[str, ...]  # real absolute paths; everything below them is writable
    allow_write: tuple[str, ...]  # globs: on the file name (no "/") or on the real path
    allow_connect: tuple[str, ...]
    allow_listen: tuple[str, ...]
    writable_files: tuple[str, ...] = ()  # exact real paths (e.g. Gramine's user_report_data)
    interpreter: str = field(default_factory=lambda: _real(sys.executable))
    _connect: tuple[AddressPattern, ...] = field(init=False, repr=False, compare=False)
    _listen: tuple[AddressPattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_connect", tuple(parse_pattern(p) for p in self.allow_connect))
        object.__setattr__(self, "_listen", tuple(parse_pattern(p) for p in self.allow_listen))
        object.__setattr__(self, "writable_dirs", tuple(_real(d) for d in self.writable_dirs))

    @classmethod
    def for_instance(
        cls,
        instance_dir: Path,
        allow_connect: Iterable[str],
        allow_listen: Iterable[str],
        allow_write: Iterable[str],
        extra_dirs: Iterable[Path] = (),
        writable_files: Iterable[str] = (),
    ) -> EgressPolicy:
        """The policy of an instance: ``sealed/``, ``logs/`` and ``extra_dirs`` are writable.

        Relative ``allow_write`` path globs are taken relative to ``instance_dir``.
        """
        instance_dir = Path(_real(instance_dir))
        globs = tuple(
            g if "/" not in g or g.startswith("/") else _real(instance_dir / g) for g in allow_write
        )
        dirs = (instance_dir / "sealed", instance_dir / "logs", *extra_dirs)
        return cls(
            writable_dirs=tuple(str(d) for d in dirs),
            allow_write=globs,
            allow_connect=tuple(allow_connect),
            allow_listen=tuple(allow_listen),
            writable_files=tuple(_real(f) for f in writable_files),
        )

    def to_json(self) -> str:
        """For a child process that installs the same policy (``from_json``)."""
        return json.dumps(
            {
                "writable_dirs": list(self.writable_dirs),
                "allow_write": list(self.allow_write),
                "allow_connect": list(self.allow_connect),
                "allow_listen": list(self.allow_listen),
                "writable_files": list(self.writable_files),
                "interpreter": self.interpreter,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> EgressPolicy:
        doc = json.loads(text)
        return cls(
            writable_dirs=tuple(doc["writable_dirs"]),
            allow_write=tuple(doc["allow_write"]),
            allow_connect=tuple(doc["allow_connect"]),
            allow_listen=tuple(doc["allow_listen"]),
            writable_files=tuple(doc["writable_files"]),
            interpreter=doc["interpreter"],
        )

    # --- decisions ---

    def may_write(self, path: str | bytes | os.PathLike[Any], dir_fd: int | None = None) -> bool:
        real = _resolve(path, dir_fd)
        if real is None:
            return True  # an already open file descriptor
        if any(real == d or real.startswith(d + os.sep) for d in self.writable_dirs):
            return True
        if real in self.writable_files or real in ("/dev/null", f"/proc/{os.getpid()}/clear_refs"):
            return True
        name = os.path.basename(real)
        return any(fnmatch.fnmatchcase(real if "/" in g else name, g) for g in self.allow_write)

    def check_write(self, what: str, path: Any, dir_fd: Any = None) -> None:
        if not isinstance(dir_fd, int):
            dir_fd = None
        if not self.may_write(path, dir_fd):
            shown = _resolve(path, dir_fd)
            raise EgressError(
                f"egress guard: {what} {shown!r} refused: in-enclave code may write only in "
                f"the encrypted mounts, sealed/ and logs/ ({', '.join(self.writable_dirs)}) "
                "or paths [egress] allow_write names in libos.toml; write it into an "
                "encrypted mount"
            )

    def check_address(self, kind: str, sock: Any, address: Any) -> None:
        """``kind`` is "connect" (connect/sendto) or "listen" (bind)."""
        family = getattr(sock, "family", None)
        if family == socket.AF_UNIX:
            if isinstance(address, bytes | str) and address[:1] not in ("\0", b"\0"):
                if self.may_write(address):
                    return
            raise EgressError(
                f"egress guard: {kind} to Unix socket {address!r} refused: only sockets "
                "inside the enclave's writable directories are allowed"
            )
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise EgressError(
                f"egress guard: {kind} on a socket of family {family!r} refused: "
                "only IPv4, IPv6 and Unix sockets are allowed"
            )
        if not isinstance(address, tuple) or len(address) < 2:
            raise EgressError(f"egress guard: {kind} to {address!r} refused: not an address")
        host, port = address[0], address[1]
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if not isinstance(host, str) or not isinstance(port, int):
            raise EgressError(f"egress guard: {kind} to {address!r} refused: not an address")
        patterns = self._connect if kind == "connect" else self._listen
        target = _host_of(host)
        if any(p.matches(target, port) for p in patterns):
            return
        key = "allow_connect" if kind == "connect" else "allow_listen"
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise EgressError(
            f"egress guard: {kind} to {shown} refused: no [egress] {key} pattern in "
            f"libos.toml allows it (allowed: {', '.join(p.text for p in patterns) or 'none'}); "
            "add one and rebuild the image if this endpoint is meant to be reached"
        )

    def check_program(self, program: Any, env: Any = None) -> None:
        if isinstance(program, bytes):
            program = os.fsdecode(program)
        if isinstance(program, os.PathLike):
            program = os.fspath(program)
        if isinstance(program, str):
            if os.sep not in program:
                path = None
                if isinstance(env, dict):
                    path = env.get("PATH", env.get(b"PATH"))
                    path = os.fsdecode(path) if path is not None else None
                program = shutil.which(program, path=path) or program
            if _real(program) == self.interpreter:
                return
        raise EgressError(
            f"egress guard: starting program {program!r} refused: in-enclave code may start "
            f"only the enclave's interpreter ({self.interpreter}), through libos.process"
        )

    def check(self, event: str, args: tuple[Any, ...]) -> None:
        """Decide one audit event; raise EgressError if it is refused."""
        handler = _HANDLERS.get(event)
        if handler is not None:
            handler(self, args)


def _resolve(path: Any, dir_fd: int | None = None) -> str | None:
    if isinstance(path, int):
        return None
    try:
        text = os.fsdecode(path)
    except TypeError:
        return None
    if dir_fd is not None and not os.path.isabs(text):
        try:
            base = os.readlink(f"/proc/self/fd/{dir_fd}")
        except OSError:
            base = f"<fd {dir_fd}>"
        text = os.path.join(base, text)
    return _real(text)


def _open(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
    # ("open", path, mode, flags): builtins.open and io.open pass the mode
    # string and the computed os flags, os.open passes None and its flags.
    path, mode, flags = (*args, None, None, None)[:3]
    writing = isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        writing = True
    if writing:
        policy.check_write("opening for writing", path)


def _path_event(what: str, path_index: int, dir_fd_index: int | None) -> Callable[..., None]:
    def handler(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
        dir_fd = (
            args[dir_fd_index] if dir_fd_index is not None and len(args) > dir_fd_index else None
        )
        policy.check_write(what, args[path_index], dir_fd)

    return handler


def _rename(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
    # ("os.rename", src, dst, src_dir_fd, dst_dir_fd): moving a file out of the
    # writable directories would leak it as surely as writing it there.
    src, dst = args[0], args[1]
    src_fd = args[2] if len(args) > 2 else None
    dst_fd = args[3] if len(args) > 3 else None
    policy.check_write("renaming", src, src_fd)
    policy.check_write("renaming to", dst, dst_fd)


def _connect(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
    policy.check_address("connect", args[0], args[1])


def _sendto(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
    if len(args) > 1 and args[1] is not None:
        policy.check_address("connect", args[0], args[1])


def _bind(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
    policy.check_address("listen", args[0], args[1])


def _popen(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
    # ("subprocess.Popen", executable, args, cwd, env)
    executable, argv = args[0], args[1]
    if executable is None:
        if isinstance(argv, str | bytes | os.PathLike):
            executable = argv
        elif argv:
            executable = next(iter(argv))
    policy.check_program(executable, args[3] if len(args) > 3 else None)


def _exec(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
    # ("os.exec", path, args, env) and ("os.posix_spawn", path, argv, env)
    policy.check_program(args[0], args[2] if len(args) > 2 else None)


def _spawn(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
    # ("os.spawn", mode, path, args, env)
    policy.check_program(args[1], args[3] if len(args) > 3 else None)


def _system(policy: EgressPolicy, args: tuple[Any, ...]) -> None:
    raise EgressError(
        f"egress guard: os.system({args[0]!r}) refused: in-enclave code may not run shell commands"
    )


# Audit event names and argument layouts: "Audit events table" of the Python
# 3.11 documentation (library/audit_events).
_HANDLERS: dict[str, Callable[[EgressPolicy, tuple[Any, ...]], None]] = {
    "open": _open,
    "os.truncate": _path_event("truncating", 0, None),
    "os.mkdir": _path_event("creating directory", 0, 2),
    "os.rmdir": _path_event("removing directory", 0, 1),
    "os.remove": _path_event("removing", 0, 1),
    "os.link": _path_event("linking to", 1, 3),
    "os.symlink": _path_event("creating symlink", 1, 2),
    "os.mkfifo": _path_event("creating fifo", 0, 2),
    "os.mknod": _path_event("creating node", 0, 2),
    "os.rename": _rename,
    "socket.connect": _connect,
    "socket.sendto": _sendto,
    "socket.sendmsg": _sendto,
    "socket.bind": _bind,
    "subprocess.Popen": _popen,
    "os.exec": _exec,
    "os.posix_spawn": _exec,
    "os.spawn": _spawn,
    "os.system": _system,
}
_EVENTS = frozenset(_HANDLERS)

_installed: EgressPolicy | None = None


def install(policy: EgressPolicy) -> None:
    """Enforce ``policy`` in this process for the rest of its life (audit hooks cannot be removed).

    Installing the same policy again is a no-op; another policy is refused, so a
    process never runs under two guards that disagree.
    """
    global _installed
    if _installed is not None:
        if _installed != policy:
            raise EgressError("an egress guard with another policy is already installed")
        return

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in _EVENTS:
            policy.check(event, args)

    sys.addaudithook(hook)
    _installed = policy


def installed() -> EgressPolicy | None:
    """The policy this process runs under, or None outside an enclave."""
    return _installed
