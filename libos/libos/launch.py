"""Run an image's entry point inside a (SIMULATION) enclave.

``run(DIR, argv)`` verifies the image, then starts a fresh interpreter::

    python -B -P -m libos.launch DIR -- argv...

with ``PYTHONPATH`` set to ``DIR/image/root`` only, so that interpreter imports
the image's own copy of ``libos`` and ``protocols`` rather than whatever the
host process had loaded. There the verification is repeated by the image's
code, repository folders and editable-install hooks are dropped from the import
path, a finder that re-checks each module file's SHA-256 against the manifest
as it is imported (and compiles from the checked bytes; no bytecode caches)
is installed, the runtime is set up and the entry point is called.

On the ``sim`` backend this is a SIMULATION: the host can read and change the
process's memory and the platform's keys. It gives no hardware protection.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import CodeType, FrameType, ModuleType
from typing import TYPE_CHECKING

from protocols.errors import DetenteError, IntegrityError

if TYPE_CHECKING:
    from libos.image import VerifiedImage

PLATFORM_DIR_ENV = "DETENTE_LIBOS_PLATFORM_DIR"
SIMULATION_NOTICE = "SIMULATION backend: no hardware protection"


def platform_dir(instance_dir: Path) -> Path:
    """Where the SIMULATION platform lives: ``$DETENTE_LIBOS_PLATFORM_DIR`` or ``DIR/platform``."""
    override = os.environ.get(PLATFORM_DIR_ENV)
    return Path(override) if override else Path(instance_dir) / "platform"


def command(instance_dir: Path, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Verify the image and return the command line and environment that run it."""
    from libos.image import verify_image

    verified = verify_image(instance_dir)
    config = verified.config
    env = {k: v for k, v in os.environ.items() if config.env_allowed(k)}
    env.update(
        PYTHONPATH=str(verified.root),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONNOUSERSITE="1",
        PYTHONSAFEPATH="1",
        OMP_NUM_THREADS=str(config.resources.threads),
    )
    # The platform location is host configuration, not input to the enclave.
    env[PLATFORM_DIR_ENV] = str(platform_dir(verified.instance_dir).resolve())
    cmd = [sys.executable, "-B", "-P", "-m", "libos.launch", str(verified.instance_dir), "--"]
    return cmd + list(argv), env


def run(instance_dir: Path, argv: Sequence[str]) -> int:
    """Verify the image, run its entry point with ``argv`` in a fresh interpreter, return its code.

    SIGINT and SIGTERM sent to this process are passed on to the enclave process.
    """
    cmd, env = command(instance_dir, argv)
    proc = subprocess.Popen(cmd, env=env)
    previous: dict[signal.Signals, signal._HANDLER] = {}

    def forward(signum: int, _frame: FrameType | None) -> None:
        proc.send_signal(signum)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
    except ValueError:
        pass  # not the main thread: no handlers, the caller manages signals
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- inside the enclave process ------------------------------------------------


class _VerifiedSourceLoader(importlib.machinery.SourceFileLoader):
    """Loads a module from source whose SHA-256 matches the manifest; never from bytecode."""

    def __init__(self, fullname: str, path: str, relpath: str, sha256: str) -> None:
        super().__init__(fullname, path)
        self._relpath = relpath
        self._sha256 = sha256

    def get_code(self, fullname: str) -> CodeType:
        data = self.get_data(self.path)
        if hashlib.sha256(data).hexdigest() != self._sha256:
            raise IntegrityError(
                f"image file {self._relpath!r} differs from the manifest (changed after start)"
            )
        return compile(data, self.path, "exec", dont_inherit=True)


class _VerifyingFinder(importlib.abc.MetaPathFinder):
    """Resolves the image's packages to manifest-checked files under the image root only."""

    def __init__(
        self,
        root: Path,
        files: dict[str, str],
        packages: Sequence[str],
        distribution_modules: set[str] | None = None,
    ) -> None:
        self._root = root
        self._files = files
        self._packages = frozenset(packages)
        # Top-level names importable besides the image's packages: the standard
        # library and the measured distributions. None: no restriction.
        self._allowed: frozenset[str] | None = None
        if distribution_modules is not None:
            self._allowed = frozenset(
                distribution_modules | set(sys.stdlib_module_names) | set(sys.builtin_module_names)
            )

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top not in self._packages:
            if self._allowed is None or top in self._allowed:
                return None
            raise ModuleNotFoundError(
                f"module {top!r} is not part of the enclave image: add the distribution that "
                "provides it to 'distributions' in libos.toml and rebuild",
                name=fullname,
            )
        rel = fullname.replace(".", "/")
        for candidate, is_package in ((f"{rel}/__init__.py", True), (f"{rel}.py", False)):
            if candidate in self._files:
                file = self._root / candidate
                loader = _VerifiedSourceLoader(
                    fullname, str(file), candidate, self._files[candidate]
                )
                return importlib.util.spec_from_file_location(
                    fullname,
                    file,
                    loader=loader,
                    submodule_search_locations=[str(file.parent)] if is_package else None,
                )
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = rel + suffix
            if candidate in self._files:
                file = self._root / candidate
                if hashlib.sha256(file.read_bytes()).hexdigest() != self._files[candidate]:
                    raise IntegrityError(f"image file {candidate!r} differs from the manifest")
                return importlib.util.spec_from_file_location(
                    fullname,
                    file,
                    loader=importlib.machinery.ExtensionFileLoader(fullname, str(file)),
                )
        raise ModuleNotFoundError(f"module {fullname!r} is not in the enclave image", name=fullname)


def _isolate_imports(root: Path) -> None:
    """Drop import paths that are neither the image, the stdlib nor site-packages.

    This removes repository folders and editable-install hooks that .pth files
    add, so nothing outside the measured image can shadow or extend it.
    """
    paths = sysconfig.get_paths()
    site_dirs = {os.path.realpath(paths["purelib"]), os.path.realpath(paths["platlib"])}
    bases = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    keep: list[str] = []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if (
            real == str(root)
            or real in site_dirs
            or any(real == b or real.startswith(b + os.sep) for b in bases)
        ):
            keep.append(entry)
    sys.path[:] = keep
    sys.meta_path[:] = [
        f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
    ]
    sys.path_importer_cache.clear()


def enter(instance_dir: Path) -> VerifiedImage:
    """Turn this fresh interpreter into the enclave of ``instance_dir``; return its image.

    Checks that the image's own ``libos`` and ``protocols`` were imported,
    drops foreign import paths, verifies the image, installs the verifying
    import finder and the runtime. Everything an enclave process needs before
    it runs code: the launcher calls it before the entry point, and
    ``libos.process`` before a child's target, so both start the same way.
    """
    import libos
    from libos import runtime
    from libos.image import top_level_modules, verify_image
    from libos.sim import SimPlatform

    root = (instance_dir / "image" / "root").resolve()
    for name, module in (("libos", libos), ("protocols", sys.modules["protocols"])):
        origin = Path(str(getattr(module, "__file__", ""))).resolve()
        if root not in origin.parents:
            raise IntegrityError(
                f"{name} was imported from {origin}, not from the image {root}: "
                "start enclaves with `detente libos run DIR`"
            )
    _isolate_imports(root)
    verified = verify_image(instance_dir)
    sys.meta_path.insert(
        0,
        _VerifyingFinder(
            root,
            verified.files,
            verified.config.packages,
            top_level_modules(verified.distributions),
        ),
    )
    platform = SimPlatform(platform_dir(instance_dir))
    runtime._install(
        runtime.EnclaveRuntime(
            verified.measurement, verified.instance_dir, platform, verified.config.mounts
        )
    )
    return verified


def _enclave_main(instance_dir: Path, argv: list[str]) -> int:
    verified = enter(instance_dir)
    if verified.measurement.simulation:
        print(
            f"detente libos: enclave {verified.measurement.mrenclave.hex()[:16]}… started on the "
            f"{SIMULATION_NOTICE}",
            file=sys.stderr,
            flush=True,
        )
    module = importlib.import_module(verified.config.entry_module)
    function = getattr(module, verified.config.entry_function, None)
    if not callable(function):
        raise IntegrityError(
            f"entry point {verified.config.entry_point!r}: "
            f"{verified.config.entry_function!r} is not a function of that module"
        )
    result = function(argv)
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[1] != "--":
        print("usage: python -m libos.launch DIR -- [ARGS...]", file=sys.stderr)
        return 2
    try:
        return _enclave_main(Path(args[0]).resolve(), args[2:])
    except DetenteError as exc:
        print(f"detente libos: refusing to run: {exc}", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
