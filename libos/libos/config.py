"""The instance config, ``<DIR>/libos.toml``: defaults in one place, validated on load.

Every key except ``signer_key`` and ``signer_public_key`` is *measured*: it is
copied into the image manifest, so changing it changes MRENCLAVE.
``signer_key`` only says where the image signer's private key lives;
``signer_public_key`` pins the signer that ``detente libos run`` accepts. Neither
is measured (MRSIGNER already is the signer's identity).
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libos.egress import parse_pattern
from protocols.errors import PolicyError

CONFIG_NAME = "libos.toml"
BACKENDS = ("sim", "gramine")

# Every default lives here, and only here.
DEFAULTS: dict[str, Any] = {
    "entry_point": "enclave_worker.main:main",
    "packages": ["enclave_worker", "libos", "protocols"],
    "distributions": [
        "cryptography",
        "grpcio",
        "grpcio-health-checking",
        "protobuf",
        "numpy",
        "pyarrow",
        "xgboost-cpu",
    ],
    "backend": "sim",
    "debug": False,
    "isv_prod_id": 1,
    "isv_svn": 1,
    "signer_key": "signer.key",
    "signer_public_key": "",
    "env_allow": ["LANG", "LC_*", "TZ", "TMPDIR", "HOME", "PATH", "DETENTE_*"],
    # Encrypted mounts (libos.efs): in-enclave path, host directory relative to
    # the instance directory, key policy.
    "mounts": [{"path": "/data", "host": "data", "key_policy": "mrenclave"}],
    "resources": {"memory_mb": 4096, "threads": 4, "processes": 4},
    # The egress guard (libos.egress): loopback only, and the worker's port file.
    "egress": {
        "allow_connect": ["127.0.0.1:*", "[::1]:*"],
        "allow_listen": ["127.0.0.1:*", "[::1]:*"],
        "allow_write": ["*.port", ".*.port.*.tmp"],
    },
}

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DIST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_ENV = re.compile(r"[A-Za-z0-9_*?\[\]]+")
_ANY = re.compile(r"[^\x00-\x1f]+")
_HEX32 = re.compile(r"([0-9A-Fa-f]{64})?")


@dataclass(frozen=True)
class Resources:
    memory_mb: int  # memory budget of the enclave (libos.limits)
    threads: int  # worker threads (OMP_NUM_THREADS); Gramine's sgx.max_threads adds headroom
    processes: int = 4  # in-enclave child processes at a time

    def measured(self) -> dict[str, int]:
        return {"memory_mb": self.memory_mb, "threads": self.threads, "processes": self.processes}


@dataclass(frozen=True)
class Egress:
    """What the egress guard lets in-enclave code do besides its own directories."""

    allow_connect: tuple[str, ...]  # "HOST:PORT" patterns for connect/sendto
    allow_listen: tuple[str, ...]  # "HOST:PORT" patterns for bind
    allow_write: tuple[str, ...]  # host path globs writable besides mounts, sealed/, logs/

    def measured(self) -> dict[str, list[str]]:
        return {
            "allow_connect": list(self.allow_connect),
            "allow_listen": list(self.allow_listen),
            "allow_write": list(self.allow_write),
        }


def _default_egress() -> Egress:
    e = DEFAULTS["egress"]
    return Egress(tuple(e["allow_connect"]), tuple(e["allow_listen"]), tuple(e["allow_write"]))


KEY_POLICIES = ("mrenclave", "mrsigner")
_MOUNT_KEYS = ("path", "host", "key_policy")
_MOUNT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# Host directories the instance already uses for something else.
_RESERVED_HOST_DIRS = ("image", "sealed", "logs", "platform")


@dataclass(frozen=True)
class Mount:
    """An encrypted mount (libos.efs): where the enclave sees it, where the host keeps it."""

    path: str  # absolute in-enclave path, e.g. "/data"
    host: str  # host directory, relative to the instance directory
    key_policy: str  # "mrenclave" (this exact image) or "mrsigner" (same signer)

    def measured(self) -> dict[str, str]:
        return {"path": self.path, "host": self.host, "key_policy": self.key_policy}


def _default_mounts() -> tuple[Mount, ...]:
    return tuple(Mount(m["path"], m["host"], m["key_policy"]) for m in DEFAULTS["mounts"])


@dataclass(frozen=True)
class InstanceConfig:
    """One enclave instance: what goes into its image and how it runs."""

    entry_point: str
    packages: tuple[str, ...]
    distributions: tuple[str, ...]
    backend: str
    debug: bool
    isv_prod_id: int
    isv_svn: int
    signer_key: str
    env_allow: tuple[str, ...]
    resources: Resources = field(default_factory=lambda: Resources(4096, 4, 4))
    egress: Egress = field(default_factory=_default_egress)
    signer_public_key: str = ""  # hex; "" = the public key of signer_key
    mounts: tuple[Mount, ...] = field(default_factory=_default_mounts)

    @property
    def entry_module(self) -> str:
        return self.entry_point.partition(":")[0]

    @property
    def entry_function(self) -> str:
        return self.entry_point.partition(":")[2]

    @property
    def simulation(self) -> bool:
        return self.backend == "sim"

    def measured(self) -> dict[str, Any]:
        """The part of the config that goes into the manifest (no paths, no timestamps)."""
        return {
            "entry_point": self.entry_point,
            "packages": list(self.packages),
            "distributions": list(self.distributions),
            "backend": self.backend,
            "debug": self.debug,
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "resources": self.resources.measured(),
            "env_allow": list(self.env_allow),
            "egress": self.egress.measured(),
            "mounts": [m.measured() for m in self.mounts],
        }

    def env_allowed(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.env_allow)

    def signer_key_path(self, instance_dir: Path) -> Path:
        return (instance_dir / self.signer_key).resolve()

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = CONFIG_NAME) -> InstanceConfig:
        """Validate ``data`` (a parsed libos.toml) on top of the defaults."""
        unknown = sorted(set(data) - set(DEFAULTS))
        if unknown:
            key = unknown[0]
            raise PolicyError(
                f"{where}: unknown key {key!r} = {data[key]!r}; "
                f"known keys are {', '.join(sorted(DEFAULTS))}"
            )
        merged = {**DEFAULTS, **data}
        res = _table(where, "resources", merged["resources"])
        egress = _table(where, "egress", merged["egress"])

        entry = merged["entry_point"]
        if not isinstance(entry, str) or entry.count(":") != 1:
            _bad(where, "entry_point", entry, "'package.module:function'")
        module, _, func = entry.partition(":")
        if not _DOTTED.fullmatch(module) or not _IDENT.fullmatch(func):
            _bad(where, "entry_point", entry, "'package.module:function'")

        packages = _str_list(where, "packages", merged["packages"], _IDENT, "package names")
        if not packages:
            _bad(where, "packages", merged["packages"], "a non-empty list of package names")
        if "libos" not in packages or "protocols" not in packages:
            _bad(
                where, "packages", merged["packages"],
                "a list that includes 'libos' and 'protocols' (the image runs its own copy)",
            )  # fmt: skip
        if module.split(".")[0] not in packages:
            _bad(
                where, "entry_point", entry,
                f"a module inside one of the image's packages {list(packages)}",
            )  # fmt: skip
        dists = _str_list(
            where, "distributions", merged["distributions"], _DIST, "distribution names"
        )

        backend = merged["backend"]
        if backend not in BACKENDS:
            _bad(where, "backend", backend, f"one of {list(BACKENDS)}")
        debug = merged["debug"]
        if not isinstance(debug, bool):
            _bad(where, "debug", debug, "true or false")
        prod = _uint(where, "isv_prod_id", merged["isv_prod_id"], 0xFFFF)
        svn = _uint(where, "isv_svn", merged["isv_svn"], 0xFFFF)
        signer_key = merged["signer_key"]
        if not isinstance(signer_key, str) or not signer_key:
            _bad(where, "signer_key", signer_key, "a file path")
        env = _str_list(where, "env_allow", merged["env_allow"], _ENV, "variable names or globs")
        memory = _uint(where, "resources.memory_mb", res["memory_mb"], 1 << 24, minimum=64)
        threads = _uint(where, "resources.threads", res["threads"], 1024, minimum=1)
        processes = _uint(where, "resources.processes", res["processes"], 1024, minimum=1)
        patterns: dict[str, tuple[str, ...]] = {}
        for key in ("allow_connect", "allow_listen"):
            patterns[key] = _str_list(
                where, f"egress.{key}", egress[key], _ANY, "'HOST:PORT' patterns"
            )
            for pattern in patterns[key]:
                try:
                    parse_pattern(pattern)
                except ValueError as exc:
                    _bad(where, f"egress.{key}", pattern, str(exc))
        allow_write = _str_list(
            where, "egress.allow_write", egress["allow_write"], _ANY, "path globs"
        )
        signer_pub = merged["signer_public_key"]
        if not isinstance(signer_pub, str) or not _HEX32.fullmatch(signer_pub):
            _bad(where, "signer_public_key", signer_pub, "64 hex digits (an Ed25519 key) or ''")
        return cls(
            entry_point=entry,
            packages=packages,
            distributions=dists,
            backend=backend,
            debug=debug,
            isv_prod_id=prod,
            isv_svn=svn,
            signer_key=signer_key,
            env_allow=env,
            resources=Resources(memory, threads, processes),
            egress=Egress(patterns["allow_connect"], patterns["allow_listen"], allow_write),
            signer_public_key=signer_pub.lower(),
            mounts=_mounts(where, merged["mounts"]),
        )

    @classmethod
    def load(cls, instance_dir: Path) -> InstanceConfig:
        path = instance_dir / CONFIG_NAME
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PolicyError(
                f"no {CONFIG_NAME} in {instance_dir}: run `detente libos init {instance_dir}`"
            ) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, str(path))


def _table(where: str, name: str, value: Any) -> dict[str, Any]:
    """A sub-table on top of its defaults; unknown keys are named."""
    known = DEFAULTS[name]
    if not isinstance(value, dict):
        _bad(where, name, value, f"a table with keys {', '.join(known)}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        key = unknown[0]
        raise PolicyError(
            f"{where}: unknown key '{name}.{key}' = {value[key]!r}; "
            f"known keys are {', '.join(known)}"
        )
    return {**known, **value}


def _mounts(where: str, value: Any) -> tuple[Mount, ...]:
    """Validate ``[[mounts]]``: absolute in-enclave paths, relative host dirs, no overlaps."""
    if not isinstance(value, list):
        _bad(where, "mounts", value, "a list of [[mounts]] tables")
    mounts: list[Mount] = []
    for i, table in enumerate(value):
        key = f"mounts[{i}]"
        if not isinstance(table, dict):
            _bad(where, key, table, "a table with path, host and key_policy")
        unknown = sorted(set(table) - set(_MOUNT_KEYS))
        if unknown:
            raise PolicyError(
                f"{where}: unknown key '{key}.{unknown[0]}' = {table[unknown[0]]!r}; "
                f"known keys are {', '.join(_MOUNT_KEYS)}"
            )
        path, host = table.get("path"), table.get("host")
        policy = table.get("key_policy", "mrenclave")
        if (
            not isinstance(path, str)
            or not _mount_path_ok(path.removeprefix("/"))
            or (not path.startswith("/"))
        ):
            _bad(where, f"{key}.path", path, "an absolute in-enclave path such as '/data'")
        if (
            not isinstance(host, str)
            or not _mount_path_ok(host)
            or (host.split("/")[0] in _RESERVED_HOST_DIRS)
        ):
            _bad(
                where, f"{key}.host", host,
                "a directory relative to the instance directory, not one of "
                f"{', '.join(_RESERVED_HOST_DIRS)}",
            )  # fmt: skip
        if policy not in KEY_POLICIES:
            _bad(where, f"{key}.key_policy", policy, f"one of {list(KEY_POLICIES)}")
        for other in mounts:
            pairs = (("path", path, other.path), ("host", host, other.host))
            for field_name, mine, theirs in pairs:
                if _nested(mine, theirs):
                    _bad(
                        where, f"{key}.{field_name}", mine,
                        f"a {field_name} that does not overlap another mount's ({theirs!r})",
                    )  # fmt: skip
        mounts.append(Mount(path, host, policy))
    return tuple(mounts)


def _mount_path_ok(text: str) -> bool:
    parts = text.split("/")
    return all(_MOUNT_NAME.fullmatch(p) and p not in (".", "..") for p in parts)


def _nested(a: str, b: str) -> bool:
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def _bad(where: str, key: str, value: Any, expected: str) -> None:
    raise PolicyError(f"{where}: key {key!r} has invalid value {value!r}; expected {expected}")


def _uint(where: str, key: str, value: Any, maximum: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        _bad(where, key, value, f"an integer from {minimum} to {maximum}")
    return int(value)


def _str_list(
    where: str, key: str, value: Any, pattern: re.Pattern[str], what: str
) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and pattern.fullmatch(v) for v in value
    ):
        _bad(where, key, value, f"a list of {what}")
    if len(set(value)) != len(value):
        _bad(where, key, value, f"a list of {what} without duplicates")
    return tuple(value)


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def render_default(signer_key: str = DEFAULTS["signer_key"], signer_public_key: str = "") -> str:
    """The commented libos.toml that ``detente libos init`` writes."""
    d = DEFAULTS
    e = d["egress"]
    return f"""\
# Detente libos instance config. Every key below except `signer_key` and
# `signer_public_key` is MEASURED: it is copied into the image manifest, so
# changing it changes MRENCLAVE. Run `detente libos build DIR` after any change.

# "module:function" the enclave calls with its argument list; it returns
# the exit code. The module must live in one of `packages`.
entry_point = "{d["entry_point"]}"

# In-repo import packages copied into the image (image/root/<package>/...).
# `libos` and `protocols` are required: the image runs its own copy of them.
packages = {_toml_list(d["packages"])}

# Installed distributions the entry point needs. Their transitive
# requirements are added automatically. `build` measures every file of each
# (path relative to site-packages, size, SHA-256); `run` checks them and
# refuses to import any module file that is not in the manifest or changed.
distributions = {_toml_list(d["distributions"])}

# Backend: "sim" is a SIMULATION of SGX and gives NO hardware protection.
# "gramine": run under gramine-sgx (`detente libos export --target gramine DIR OUT`).
backend = "{d["backend"]}"

# Debug images set the SGX DEBUG attribute in their quotes; verifiers refuse
# them by default. Keep false for anything that handles real data.
debug = {str(d["debug"]).lower()}

# Product id and security version number reported in quotes (0..65535).
# Raise isv_svn when a release fixes a security bug.
isv_prod_id = {d["isv_prod_id"]}
isv_svn = {d["isv_svn"]}

# Environment variables (names or globs) passed from the host to the enclave.
# Everything else is dropped. The host is untrusted: values are inputs.
env_allow = {_toml_list(d["env_allow"])}

# Image signer's Ed25519 private key, relative to this directory (NOT measured;
# MRSIGNER is the SHA-256 of its public key). Keep it out of version control.
signer_key = {json.dumps(signer_key)}

# The only image signer `detente libos run` accepts (hex Ed25519 public key;
# NOT measured). An image signed by any other key is refused.
signer_public_key = {json.dumps(signer_public_key)}

[resources]
# Memory budget of the enclave in MiB. A job that needs more fails before it
# allocates (libos.limits.check_allocation); the address space is also capped
# (RLIMIT_AS) as a backstop. `detente libos build` prints the worker's idle
# peak so you can size this. Gramine: sgx.enclave_size.
memory_mb = {d["resources"]["memory_mb"]}
# Worker threads (OMP_NUM_THREADS); Gramine's sgx.max_threads adds headroom.
threads = {d["resources"]["threads"]}
# In-enclave child processes at a time (one per job).
processes = {d["resources"]["processes"]}

[egress]
# The egress guard refuses in-enclave code that opens a network connection or
# writes a host file the lines below do not allow. It is a guard against
# MISTAKES, not a boundary against hostile code in the same interpreter.
# "HOST:PORT" patterns: HOST an IP address, a network (127.0.0.0/8), [IPv6],
# "localhost" or "*"; PORT a number, a range (8000-8099) or "*".
allow_connect = {_toml_list(e["allow_connect"])}
allow_listen = {_toml_list(e["allow_listen"])}
# Host files writable besides the encrypted mounts, sealed/ and logs/: globs on
# the file name (no "/") or on the path (relative to this directory). What is
# written here is NOT protected; the default is the worker's --port-file.
allow_write = {_toml_list(e["allow_write"])}
{_render_mounts()}"""


def _render_mounts() -> str:
    lines = [
        "",
        "# Encrypted mounts (libos.efs). The host sees neither file contents nor names;",
        "# any change, swap, truncation or rollback of a file is refused on read.",
        "# `path`: where the enclave opens it (runtime.current().mount(path));",
        '# `host`: its directory, relative to this one; `key_policy`: "mrenclave"',
        '# (only this exact image opens it) or "mrsigner" (any image by the same',
        "# signer, e.g. a newer release: use it for data that must survive upgrades).",
    ]
    for m in DEFAULTS["mounts"]:
        lines += [
            "[[mounts]]",
            f"path = {json.dumps(m['path'])}",
            f"host = {json.dumps(m['host'])}",
            f"key_policy = {json.dumps(m['key_policy'])}",
        ]
    return "\n".join(lines) + "\n"
