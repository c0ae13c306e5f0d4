"""The ``gramine`` backend: a Gramine manifest for the worker, and its runtime on /dev/attestation.

Two halves:

- :func:`export` writes ``detente-worker.manifest.template``, a Gramine
  manifest (TOML; Gramine 1.8+ syntax, docs ``manifest-syntax.rst``) that runs
  ``python -B -P -S -m libos.enclave_start DIR --`` inside an SGX enclave: every file
  of the image manifest (the image's packages and every dependency file) is a
  ``sgx.trusted_files`` entry with its SHA-256, so Gramine refuses any other
  bytes; the encrypted mounts of libos.toml are ``fs.mounts`` of type
  ``"encrypted"`` keyed by the SGX sealing key of their policy
  (``_sgx_mrenclave`` or ``_sgx_mrsigner``); ``sgx.remote_attestation =
  "dcap"``; ``sgx.debug`` as configured (false by default);
  ``sgx.enclave_size`` from ``memory_mb``; ``sgx.max_threads`` from
  ``threads``; and ``loader.env`` passes through only the allow-listed
  variables. The interpreter, the standard library and the system libraries
  are trusted files that ``gramine-sgx-sign`` hashes when it signs.
  It is a template only for ``{{ gramine.libos }}`` and
  ``{{ gramine.runtimedir() }}``, which ``gramine-manifest`` fills in.
- :class:`GramineRuntime` is the enclave's view of itself under Gramine, a
  ``libos.runtime.Runtime`` like the SIMULATION ``SimRuntime``: quotes come
  from writing 64 bytes of report data to ``/dev/attestation/user_report_data``
  and reading ``/dev/attestation/quote`` (DCAP); MRENCLAVE, MRSIGNER, the
  attributes and the ISV ids come from the enclave's own quote; sealing keys
  come from ``/dev/attestation/keys/_sgx_mrenclave`` (or ``_sgx_mrsigner``),
  never used directly but through the same HKDF derivation as the simulation
  (libos.sealing), as Gramine's documentation asks of these keys.

This cannot run here: there is no SGX hardware or Gramine on this machine. The
tests exercise everything up to the device files with a directory laid out
like ``/dev/attestation`` (a FAKE), and check that the manifest is valid TOML
with every required key. Under Gramine, MRENCLAVE is what ``gramine-sgx-sign``
computes over the enclave's initial memory, not ``detente libos measure``'s
value: parties pin the value ``gramine-sgx-sigstruct-view`` prints.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import sysconfig
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from libos.config import Mount
from libos.image import (
    IMAGE_DIR,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    SIGNER_PUB_NAME,
    Measurement,
    VerifiedImage,
    site_dirs,
)
from libos.launcher import ENCLAVE_MODULE, interpreter_command, python_path
from libos.limits import Limits, malloc_arena_max
from libos.runtime import (
    FLAG_INIT,
    MountUnavailableError,
    NotInEnclaveError,
    Runtime,
    check_report_data,
)
from libos.sealing import Sealer
from protocols import quote_layout, quote_verify
from protocols.durable import write_atomic
from protocols.errors import AttestationError, FormatError

BACKEND = "gramine"
DEVICE_DIR = Path("/dev/attestation")
MANIFEST_TEMPLATE_NAME = "detente-worker.manifest.template"
# Gramine's /dev/attestation/keys/<name> files hold 128-bit keys (EGETKEY's
# SEAL_KEY, Intel SDM Vol. 3D 38.17): derived from, never used directly.
SEALING_KEY_SIZE = 16
KEY_NAMES = {"mrenclave": "_sgx_mrenclave", "mrsigner": "_sgx_mrsigner"}
# Threads inside the enclave beyond the configured worker threads: gRPC's
# server pool and core threads, the launcher's hashing pool (up to 16),
# Python's main thread and Gramine's IPC, async and TLS-handshake helpers
# (manifest-syntax.rst, "Number of threads").
THREAD_HEADROOM = 32
# Locale categories LC_* stands for (POSIX.1-2017 §7.1): Gramine has no globs
# for loader.env, so a glob in env_allow is expanded against these names and
# the names set where the export runs.
_LC_NAMES = (
    "LC_ALL",
    "LC_COLLATE",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
)
# Set by the launcher, never passed through from the host.
_LAUNCHER_ENV = ("PYTHONPATH", "OMP_NUM_THREADS", "MALLOC_ARENA_MAX")


# --- the runtime --------------------------------------------------------------------


class GramineRuntime(Runtime):
    """The enclave's view of itself under Gramine, through ``device_dir`` (/dev/attestation).

    A ``libos.runtime.Runtime`` of the ``gramine`` backend; ``simulation`` is False.
    """

    def __init__(
        self, instance_dir: Path, device_dir: Path = DEVICE_DIR, mounts: Sequence[Mount] = ()
    ) -> None:
        self.device_dir = Path(device_dir)
        self._lock = threading.Lock()
        try:
            kind = (self.device_dir / "attestation_type").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            raise NotInEnclaveError(
                f"{self.device_dir / 'attestation_type'} cannot be read: the gramine backend "
                "runs only inside gramine-sgx; export the manifest with `detente libos export "
                "--target gramine DIR OUT` and start the enclave with gramine-sgx"
            ) from None
        if kind != "dcap":
            raise AttestationError(
                f"{self.device_dir / 'attestation_type'} says {kind!r}, but Detente needs DCAP "
                'quotes: set sgx.remote_attestation = "dcap" in the manifest (as `detente '
                "libos export` does) and sign it again"
            )
        own = self._quote(bytes(64))[1].report
        self._report = own
        super().__init__(
            Measurement(
                mrenclave=own.mr_enclave.hex(),
                mrsigner=own.mr_signer.hex(),
                backend=BACKEND,
                debug=own.debug,
                isv_prod_id=own.isv_prod_id,
                isv_svn=own.isv_svn,
                file_count=0,
            ),
            instance_dir,
            mounts,
        )

    def __repr__(self) -> str:
        return f"<GramineRuntime {self.device_dir} mrenclave={self.mrenclave[:16]}…>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("GramineRuntime reads sealing keys and cannot be pickled")

    # --- identity (from the enclave's own quote) ---

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 hex of the Intel SGX Root CA that DCAP quotes chain to."""
        return quote_verify.certificate_fingerprint(quote_verify.intel_sgx_root())

    def attributes(self) -> bytes:
        return self._report.attributes

    # --- quotes ---

    def _quote(self, report_data: bytes) -> tuple[bytes, quote_layout.Quote]:
        report_data = check_report_data(report_data)
        # One write-then-read at a time: the device holds one user_report_data.
        with self._lock:
            with open(self.device_dir / "user_report_data", "wb") as out:
                out.write(bytes(report_data))
            with open(self.device_dir / "quote", "rb") as src:
                data = src.read()
        parsed = quote_layout.parse_quote(data)
        if not isinstance(parsed, quote_layout.Quote):
            raise AttestationError(
                f"{self.device_dir / 'quote'} returned a TDX quote; the gramine backend runs "
                "in SGX enclaves"
            )
        if parsed.report.report_data != bytes(report_data):
            raise AttestationError(
                f"{self.device_dir / 'quote'} returned a quote over other report data than "
                "was written to user_report_data (a stale or foreign quote); refusing it"
            )
        if not int.from_bytes(parsed.report.attributes[:8], "little") & FLAG_INIT:
            raise AttestationError("the quote's enclave is not initialised (ATTRIBUTES.INIT)")
        return data, parsed

    def _raw_quote(self, report_data: bytes) -> tuple[bytes, quote_layout.Quote]:
        data, parsed = self._quote(report_data)
        own = getattr(self, "_measurement", None)
        if own is not None and (
            parsed.report.mr_enclave.hex() != own.mrenclave
            or parsed.report.mr_signer.hex() != own.mrsigner
        ):
            raise AttestationError(
                f"{self.device_dir / 'quote'} returned a quote of another enclave "
                f"(MRENCLAVE {parsed.report.mr_enclave.hex()}); refusing it"
            )
        return data, parsed

    def report(self, report_data: bytes) -> quote_layout.ReportBody:
        return self._raw_quote(report_data)[1].report

    def quote(self, report_data: bytes) -> bytes:
        """A DCAP quote of this enclave carrying ``report_data`` (64 bytes), from Gramine."""
        return self._raw_quote(report_data)[0]

    # --- sealing ---

    def sealing_key(self, policy: str = "mrenclave") -> bytes:
        """The 128-bit SGX sealing key of ``policy`` (``keys/_sgx_<policy>``): derive from it."""
        name = KEY_NAMES.get(policy)
        if name is None:
            raise FormatError(f"unknown sealing policy {policy!r}; use 'mrenclave' or 'mrsigner'")
        path = self.device_dir / "keys" / name
        try:
            key = path.read_bytes()
        except OSError:
            raise NotInEnclaveError(
                f"{path} cannot be read: not running under gramine-sgx"
            ) from None
        if len(key) != SEALING_KEY_SIZE:
            raise FormatError(f"{path} holds {len(key)} bytes, not a {SEALING_KEY_SIZE}-byte key")
        return key

    def sealer(self, policy: str = "mrenclave") -> Sealer:
        return Sealer(self.sealing_key(policy), self.mrenclave, self.mrsigner, policy)

    # --- mounts ---

    def mount(self, path: str) -> NoReturn:
        """Refused: Gramine encrypts these mounts itself but has no rollback counter.

        The exported manifest makes each configured mount an ``encrypted``
        Gramine mount at its host directory, so files written there are
        encrypted and authenticated by Gramine; what Gramine cannot give is the
        monotonic counter libos.efs needs to detect a rollback.
        """
        config = self._mount_config(path)
        raise MountUnavailableError(
            f"encrypted mount {path!r} (Gramine encrypts {self.instance_dir / config.host}): "
            "libos.efs mounts need a platform monotonic counter to detect rollback, which the "
            "gramine backend does not have; run jobs that need rollback-protected storage on a "
            "backend that provides one"
        )


# --- the manifest -------------------------------------------------------------------


def _toml(value: Any) -> str:
    """A TOML value: JSON strings, numbers, booleans and arrays are valid TOML as they are."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _array(key: str, items: Iterable[Any]) -> str:
    body = "".join(f"  {_toml(item)},\n" for item in items)
    return f"{key} = [\n{body}]\n"


def enclave_size(memory_mb: int) -> str:
    """sgx.enclave_size: the smallest power of two of at least memory_mb MiB (SGX needs one)."""
    size = 1
    while size < memory_mb:
        size *= 2
    return f"{size // 1024}G" if size >= 1024 else f"{size}M"


def passthrough_env(env_allow: Sequence[str], environ: Iterable[str]) -> list[str]:
    """Variable names to pass through: exact names, and globs expanded (Gramine has no globs)."""
    known = set(environ) | set(_LC_NAMES)
    names: set[str] = set()
    for pattern in env_allow:
        if any(c in pattern for c in "*?["):
            names.update(n for n in known if fnmatch.fnmatchcase(n, pattern))
        else:
            names.add(pattern)
    return sorted(n for n in names if n not in _LAUNCHER_ENV)


def _arch_libdir() -> str:
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return f"/lib/{multiarch}"


def manifest_text(
    verified: VerifiedImage,
    argv: Sequence[str] = (),
    environ: Iterable[str] | None = None,
) -> str:
    """The Gramine manifest template of a verified image (see the module docstring)."""
    config = verified.config
    instance = verified.instance_dir
    root = verified.root
    python = os.path.realpath(sys.executable)
    stdlib = sysconfig.get_paths()["stdlib"]
    dynload = sysconfig.get_config_var("DESTSHARED") or os.path.join(stdlib, "lib-dynload")
    arch = _arch_libdir()
    budget = Limits.from_resources(config.resources)
    prefixes = list(dict.fromkeys(os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)))
    sites = site_dirs()
    env_names = passthrough_env(config.env_allow, os.environ if environ is None else environ)
    key_names = {m.path: KEY_NAMES[m.key_policy] for m in config.mounts}

    trusted: list[Any] = [
        "file:{{ gramine.libos }}",
        "file:{{ gramine.runtimedir() }}/",
        f"file:{python}",
        f"file:{stdlib}/",
        f"file:{dynload}/",
        f"file:{arch}/",
        f"file:/usr{arch}/",
    ]
    for name in ("libos.toml", f"{IMAGE_DIR}/{MANIFEST_NAME}", f"{IMAGE_DIR}/{SIGNATURE_NAME}",
                 f"{IMAGE_DIR}/{SIGNER_PUB_NAME}"):  # fmt: skip
        trusted.append({"uri": f"file:{instance / name}", "sha256": _sha256_file(instance / name)})
    for rel, sha in sorted(verified.files.items()):
        trusted.append({"uri": f"file:{root / rel}", "sha256": sha})
    for rel, dep in sorted(verified.dependencies.items()):
        base = next((d for d in sites if (d / rel).exists()), sites[0])
        trusted.append({"uri": f"file:{base / rel}", "sha256": dep.sha256})

    mounts: list[Any] = [
        {"path": "/lib", "uri": "file:{{ gramine.runtimedir() }}"},
        {"path": arch, "uri": f"file:{arch}"},
        {"path": "/usr", "uri": "file:/usr"},
        *({"path": p, "uri": f"file:{p}"} for p in prefixes),
        {"path": str(instance), "uri": f"file:{instance}"},
    ]
    for m in config.mounts:
        host = instance / m.host
        mounts.append(
            {
                "type": "encrypted",
                "path": str(host),
                "uri": f"file:{host}",
                "key_name": key_names[m.path],
            }
        )
    mounts.append({"type": "tmpfs", "path": "/tmp"})  # noqa: S108 (in-enclave memory, not the host's /tmp)

    allowed = [f"file:{instance / d}/" for d in ("logs", "sealed", "cache")]
    launch_argv = ["python3", *interpreter_command(ENCLAVE_MODULE)[1:], str(instance), "--", *argv]

    lines = [
        "# Gramine manifest (template) for the Detente enclave worker.",
        f"# Written by `detente libos export --target gramine` from {instance}.",
        f"# Image MRENCLAVE (detente libos measure): {verified.measurement.mrenclave}",
        "# Under Gramine the enclave's MRENCLAVE is the one gramine-sgx-sign computes;",
        "# pin that one (gramine-sgx-sigstruct-view detente-worker.sig).",
        "#",
        "#   gramine-manifest detente-worker.manifest.template detente-worker.manifest",
        "#   gramine-sgx-sign --manifest detente-worker.manifest \\",
        "#       --output detente-worker.manifest.sgx --key SIGNER.pem",
        "#   gramine-sgx detente-worker",
        "",
        'loader.entrypoint.uri = "file:{{ gramine.libos }}"',
        f"libos.entrypoint = {_toml(python)}",
        'loader.log_level = "error"',
        # Fixed argv: arguments from the host would be unmeasured input.
        f"loader.argv = {_toml(launch_argv)}",
        f"fs.start_dir = {_toml(str(instance))}",
        "",
        "# Environment: set here (measured), or passed through from the host by name",
        "# (env_allow of libos.toml; values are untrusted input).",
        f"loader.env.PYTHONPATH = {_toml(python_path(root))}",
        'loader.env.PYTHONDONTWRITEBYTECODE = "1"',
        'loader.env.PYTHONNOUSERSITE = "1"',
        'loader.env.PYTHONSAFEPATH = "1"',
        f"loader.env.OMP_NUM_THREADS = {_toml(str(config.resources.threads))}",
        f"loader.env.MALLOC_ARENA_MAX = {_toml(str(malloc_arena_max(budget)))}",
        f'loader.env.LD_LIBRARY_PATH = "/lib:{arch}:/usr/lib:/usr{arch}"',
        *(f"loader.env.{name} = {{ passthrough = true }}" for name in env_names),
        "",
        "# The worker stops cleanly on SIGTERM (its handler only stops the server).",
        "sys.enable_sigterm_injection = true",
        'sys.stack.size = "2M"',
        "",
        _array("fs.mounts", mounts),
        f"sgx.debug = {_toml(config.debug)}",
        'sgx.remote_attestation = "dcap"',
        f"sgx.enclave_size = {_toml(enclave_size(config.resources.memory_mb))}",
        f"sgx.max_threads = {config.resources.threads + THREAD_HEADROOM}",
        f"sgx.isvprodid = {config.isv_prod_id}",
        f"sgx.isvsvn = {config.isv_svn}",
        "",
        "# Every file of the image manifest, with its SHA-256; the interpreter, the",
        "# standard library and system libraries are hashed by gramine-sgx-sign.",
        _array("sgx.trusted_files", trusted),
        "# Not secret and authenticated by the application itself: logs (ids and",
        "# stages only), sealed blobs (AES-GCM under the sealing key), the bytecode",
        "# cache (HMAC under a key from the sealing key).",
        _array("sgx.allowed_files", allowed),
    ]
    return "\n".join(lines)


def _sha256_file(path: Path) -> str:
    from libos.image import digest_file

    return digest_file(path)[1]


def export(instance_dir: Path, out_dir: Path, argv: Sequence[str] = ()) -> Path:
    """Verify the image, write its Gramine manifest template into ``out_dir``, return the path."""
    from libos.image import verify_image

    verified = verify_image(instance_dir, dependencies="all")
    text = manifest_text(verified, argv)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MANIFEST_TEMPLATE_NAME
    write_atomic(target, text.encode("utf-8"))
    return target
