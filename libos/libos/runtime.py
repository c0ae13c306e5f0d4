"""What code running inside the enclave sees: its measurement, quotes and sealing.

The worker does::

    from libos import runtime
    rt = runtime.current()
    quote = rt.quote(report_data)          # exactly 64 bytes
    blob = rt.seal(data, "label")          # and rt.unseal(blob, "label")
    fs = rt.mount("/data")                 # an encrypted mount of libos.toml (libos.efs)
    fs = rt.default_mount()                # the first one, or None where there is none

``current()`` only works in a process started by ``detente libos run``, which
verifies the image before it installs the runtime of its backend: a
:class:`SimRuntime` (SIMULATION) or a ``libos.gramine.GramineRuntime``, both
:class:`Runtime`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from libos.config import Mount
from libos.counter import sim_counter
from libos.efs import EncryptedFS, MountKey
from libos.image import Measurement
from libos.sealing import Sealer
from libos.sim import SimPlatform
from protocols import quote_layout
from protocols.errors import DetenteError, FormatError, PolicyError

log = logging.getLogger("libos.runtime")

# SGX ATTRIBUTES.FLAGS bits (Intel SDM Vol. 3D, 34.7.1): INIT and MODE64BIT are
# always set for a running 64-bit enclave; DEBUG only for debug images.
FLAG_INIT = 0x01
FLAG_MODE64BIT = 0x04
# XFRM: x87 and SSE state, the architectural minimum.
XFRM_DEFAULT = 0x03


class NotInEnclaveError(DetenteError):
    """Code asked for the enclave runtime outside an enclave started by libos."""


def check_report_data(report_data: bytes) -> bytes:
    """REPORTDATA is exactly 64 bytes (SGX report body layout)."""
    if not isinstance(report_data, bytes | bytearray) or len(report_data) != 64:
        size = len(report_data) if isinstance(report_data, bytes | bytearray) else None
        raise FormatError(f"report_data must be exactly 64 bytes, got {size or report_data!r}")
    return bytes(report_data)


class MountUnavailableError(PolicyError):
    """The backend cannot give a rollback-protected encrypted mount (libos.efs) at a path."""


class Runtime(ABC):
    """The enclave's view of itself, whatever the backend: what every backend's runtime offers.

    Its measurement (MRENCLAVE and MRSIGNER as hex, as quotes' readers, documents
    and policies spell them), its folders, quotes over 64 bytes of report data, sealing
    under the ``mrenclave`` or ``mrsigner`` policy and the encrypted mounts of
    the image's config. :class:`SimRuntime` is the SIMULATION backend's,
    ``libos.gramine.GramineRuntime`` Gramine's.
    """

    def __init__(
        self, measurement: Measurement, instance_dir: Path, mounts: Sequence[Mount]
    ) -> None:
        self._measurement = measurement
        # The measured [[mounts]] of the verified image, never the host's libos.toml.
        self._mounts = {m.path: m for m in mounts}
        self.instance_dir = Path(instance_dir)
        self.sealed_dir = self.instance_dir / "sealed"
        self.log_dir = self.instance_dir / "logs"
        self.sealed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # --- identity ---

    @property
    def measurement(self) -> Measurement:
        return self._measurement

    @property
    def mrenclave(self) -> str:
        """MRENCLAVE as 64 lowercase hex characters."""
        return self._measurement.mrenclave

    @property
    def mrsigner(self) -> str:
        """MRSIGNER as 64 lowercase hex characters."""
        return self._measurement.mrsigner

    @property
    def backend(self) -> str:
        return self._measurement.backend

    @property
    def simulation(self) -> bool:
        return self.backend == "sim"

    @property
    def debug(self) -> bool:
        return self._measurement.debug

    @property
    def isv_prod_id(self) -> int:
        return self._measurement.isv_prod_id

    @property
    def isv_svn(self) -> int:
        return self._measurement.isv_svn

    @property
    @abstractmethod
    def root_fingerprint(self) -> str:
        """SHA-256 hex of the root certificate this enclave's quotes chain to."""

    @abstractmethod
    def attributes(self) -> bytes:
        """The 16 bytes of SGX ATTRIBUTES (FLAGS ‖ XFRM) of this enclave."""

    # --- quotes ---

    @abstractmethod
    def report(self, report_data: bytes) -> quote_layout.ReportBody:
        """The report body of this enclave over ``report_data`` (64 bytes)."""

    @abstractmethod
    def quote(self, report_data: bytes) -> bytes:
        """A quote of this enclave carrying ``report_data`` (64 bytes)."""

    # --- sealing ---

    @abstractmethod
    def sealer(self, policy: str = "mrenclave") -> Sealer:
        """The sealer of this enclave under ``policy`` (``mrenclave`` or ``mrsigner``)."""

    def seal(self, data: bytes, label: str | bytes, policy: str = "mrenclave") -> bytes:
        return self.sealer(policy).seal(data, label)

    def unseal(self, blob: bytes, label: str | bytes, policy: str = "mrenclave") -> bytes:
        """Raise IntegrityError if the blob is not this enclave's or was altered."""
        return self.sealer(policy).unseal(blob, label)

    # --- mounts ---

    @property
    def mounts(self) -> tuple[Mount, ...]:
        """The encrypted mounts the image's config declares."""
        return tuple(self._mounts.values())

    def _mount_config(self, path: str) -> Mount:
        config = self._mounts.get(path)
        if config is None:
            known = ", ".join(sorted(self._mounts)) or "none"
            raise PolicyError(
                f"no encrypted mount at {path!r} (configured: {known}); add a [[mounts]] table "
                "to libos.toml and run `detente libos build`"
            )
        return config

    @abstractmethod
    def mount(self, path: str) -> EncryptedFS:
        """The encrypted file system mounted at ``path``, one of :attr:`mounts`.

        Raise PolicyError for a path the config does not declare, and
        MountUnavailableError if this backend cannot give a rollback-protected mount.
        """

    def default_mount(self) -> EncryptedFS | None:
        """The first encrypted mount of the image's config: where the enclave keeps its own files.

        The enclave's sealed identity keys and the jobs' training checkpoints
        live here. None when the image declares no ``[[mounts]]``, or when the
        backend refuses libos.efs mounts (gramine has no monotonic counter: the
        reason is logged); callers then do without (docs/libos.md). A mount
        that fails its integrity checks is not skipped: its error is raised.
        """
        if not self._mounts:
            return None
        first = next(iter(self._mounts))
        try:
            return self.mount(first)
        except MountUnavailableError as exc:
            log.warning("no encrypted mount for the enclave's own files: %s", exc)
            return None


class SimRuntime(Runtime):
    """The SIMULATION backend's runtime: quotes, sealing and mounts from a :class:`SimPlatform`.

    This is a SIMULATION and gives no hardware protection: the host can read
    the platform's keys and the process's memory.
    """

    def __init__(
        self,
        measurement: Measurement,
        instance_dir: Path,
        platform: SimPlatform,
        mounts: Sequence[Mount] = (),
    ) -> None:
        super().__init__(measurement, instance_dir, mounts)
        self._platform = platform
        self._mounted: dict[str, EncryptedFS] = {}

    def __repr__(self) -> str:
        sim = " SIMULATION" if self.simulation else ""
        return f"<SimRuntime{sim} mrenclave={self.mrenclave[:16]}…>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SimRuntime holds platform secrets and cannot be pickled")

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 hex of the root certificate the quotes chain to (the SIMULATION root)."""
        return self._platform.root_fingerprint

    def attributes(self) -> bytes:
        flags = FLAG_INIT | FLAG_MODE64BIT | (quote_layout.ATTRIBUTE_DEBUG if self.debug else 0)
        return flags.to_bytes(8, "little") + XFRM_DEFAULT.to_bytes(8, "little")

    def report(self, report_data: bytes) -> quote_layout.ReportBody:
        report_data = check_report_data(report_data)
        return quote_layout.ReportBody(
            cpu_svn=bytes(16),
            misc_select=0,
            attributes=self.attributes(),
            mr_enclave=bytes.fromhex(self.mrenclave),
            mr_signer=bytes.fromhex(self.mrsigner),
            isv_prod_id=self.isv_prod_id,
            isv_svn=self.isv_svn,
            report_data=bytes(report_data),
        )

    def quote(self, report_data: bytes) -> bytes:
        """An SGX v3 quote of this enclave carrying ``report_data`` (64 bytes)."""
        return self._platform.quote(self.report(report_data))

    def sealer(self, policy: str = "mrenclave") -> Sealer:
        return Sealer(self._platform.sealing_secret, self.mrenclave, self.mrsigner, policy)

    def mount(self, path: str) -> EncryptedFS:
        """The encrypted file system mounted at ``path`` (one object per process).

        Its key derives from the platform's sealing secret under the mount's
        key policy, and its rollback counter is the platform's monotonic
        counter (a SIMULATION counter file under the platform directory).
        Opening it checks the index against that counter.
        """
        mounted = self._mounted.get(path)
        if mounted is not None:
            return mounted
        config = self._mount_config(path)
        key = MountKey.derive(
            self._platform.sealing_secret, self.mrenclave, self.mrsigner, config.key_policy, path
        )
        counter = sim_counter(self._platform.directory, key.counter_name)
        mounted = EncryptedFS(self.instance_dir / config.host, key, counter)
        self._mounted[path] = mounted
        return mounted


_current: Runtime | None = None


def current() -> Runtime:
    """The runtime of the enclave this code runs in."""
    if _current is None:
        raise NotInEnclaveError(
            "no enclave runtime: this code must run inside an enclave image, "
            "started with `detente libos run DIR`"
        )
    return _current


def _install(rt: Runtime | None) -> None:
    """Set (or clear) the process's runtime. Used by libos.enclave_start, and by tests."""
    global _current
    _current = rt
