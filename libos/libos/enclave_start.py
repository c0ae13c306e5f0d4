"""The start of an enclave process: verified imports, image verification, runtime, then the entry.

``python -B -P -S -m libos.enclave_start DIR -- ARGS`` (what libos.launcher
starts, and what a Gramine manifest runs) calls :func:`enter`, then the image's
entry point with ``ARGS``. :func:`enter` makes a fresh interpreter an enclave:

1. The verifying import finder of libos.verified_imports goes first on
   ``sys.meta_path``: from then on only measured module files are imported,
   compiled from the bytes that were hashed.
2. The image is verified (:func:`libos.image.verify_image`): signature, the
   signer pinned in libos.toml, the measured config, every image file and
   every dependency file that is not a module (shared libraries such as
   ``libarrow.so``, which the dynamic linker loads without asking Python, and
   data files) — all before the entry point runs.
3. The runtime of the backend, the resource limits (libos.limits) and the
   egress guard (libos.egress) are installed, then the entry point is imported.

libos.process calls :func:`enter` too, so every child starts the same way.

On the ``sim`` backend this is a SIMULATION: the host can read and change the
process's memory and the platform's keys. It gives no hardware protection.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libos.launcher import ENCLAVE_MODULE, STARTUP_PROBE, platform_dir
from libos.verified_imports import BytecodeCache, VerifyingFinder
from protocols.errors import DetenteError, IntegrityError

if TYPE_CHECKING:
    from libos.image import DependencyFile, VerifiedImage

SIMULATION_NOTICE = "SIMULATION backend: no hardware protection"
CACHE_DIR = "cache"
BYTECODE_DIR = "bytecode"
# The SIMULATION platform's sealing secret file (libos.sim._SEALING_SECRET); read
# here before libos.sim can be imported (it needs cryptography, which is
# checked by the finder this key protects the cache of).
SIM_SEALING_SECRET = "sealing.secret"  # noqa: S105 (a file name)
# Gramine's sealing key under the MRENCLAVE policy (libos.gramine).
GRAMINE_DEVICE = Path("/dev/attestation")
GRAMINE_MRENCLAVE_KEY = "keys/_sgx_mrenclave"


def _isolate_imports(root: Path, site: Sequence[Path]) -> list[str]:
    """Import path: the standard library first, then the image, then site-packages; nothing else.

    This drops repository folders and editable-install hooks that .pth files
    add (when the interpreter was started without -S), and puts the standard
    library first so nothing in the image or site-packages can shadow it.
    Returns the standard library's entries.
    """
    site_dirs = {os.path.realpath(d) for d in site}
    bases = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    stdlib: list[str] = []
    image: list[str] = []
    sites: list[str] = []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real == str(root):
            image.append(entry)
        elif real in site_dirs:
            sites.append(entry)
        elif any(real == b or real.startswith(b + os.sep) for b in bases):
            stdlib.append(entry)
    sys.path[:] = stdlib + image + sites
    return stdlib
    sys.meta_path[:] = [
        f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
    ]
    sys.path_importer_cache.clear()


def _site_dirs() -> tuple[Path, ...]:
    """libos.image.site_dirs, before libos.image (which needs cryptography) can be imported."""
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    prefix = sys.prefix
    for candidate in (exe_dir, os.path.dirname(exe_dir)):
        if os.path.isfile(os.path.join(candidate, "pyvenv.cfg")):
            prefix = candidate
            break
    paths = sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})
    return tuple(dict.fromkeys(Path(os.path.realpath(paths[k])) for k in ("purelib", "platlib")))


def _early_cache(instance_dir: Path, cache_dir: Path) -> BytecodeCache | None:
    """The bytecode cache, if the sealing secret can be read before anything is imported."""
    try:
        manifest = (instance_dir / "image" / "manifest.json").read_bytes()
    except OSError:
        return None
    for secret_file in (
        platform_dir(instance_dir) / SIM_SEALING_SECRET,
        GRAMINE_DEVICE / GRAMINE_MRENCLAVE_KEY,
    ):
        try:
            secret = secret_file.read_bytes()
        except OSError:
            continue
        return BytecodeCache(cache_dir, BytecodeCache.key_for(secret, manifest))
    return None


def _dlopen_guard(root: Path, finder_deps: dict[str, DependencyFile], site: Sequence[Path]) -> None:
    """Refuse ctypes loads of files inside the image or site-packages that are not measured.

    Measured non-module files were hashed at start (verify_image); this closes
    the gap of a library added after the build and loaded by name.
    """
    bases = [str(Path(d)) for d in site]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "ctypes.dlopen" or not isinstance(args[0], str | bytes):
            return
        name = os.path.normpath(os.fsdecode(args[0]))
        if os.path.realpath(name).startswith(str(root) + os.sep):
            raise IntegrityError(f"ctypes may not load {name!r} from the image root")
        for base in bases:
            if name.startswith(base + os.sep):
                rel = name[len(base) + 1 :].replace(os.sep, "/")
                if rel not in finder_deps:
                    raise IntegrityError(
                        f"ctypes load of site-packages file {rel!r} refused: it is not in the "
                        "image manifest"
                    )

    sys.addaudithook(hook)


def enter(instance_dir: Path) -> VerifiedImage:
    """Turn this fresh interpreter into the enclave of ``instance_dir``; return its image.

    Checks that the image's own ``libos`` and ``protocols`` were imported,
    drops foreign import paths, installs the verifying import finder, verifies
    the image, installs the runtime, the resource limits and the egress guard.
    Everything an enclave process needs before it runs code: the launcher calls
    it before the entry point, and ``libos.process`` before a child's target, so
    both start the same way.
    """
    import libos

    instance_dir = Path(instance_dir).resolve()
    root = (instance_dir / "image" / "root").resolve()
    for name, module in (("libos", libos), ("protocols", sys.modules["protocols"])):
        origin = Path(str(getattr(module, "__file__", ""))).resolve()
        if root not in origin.parents:
            raise IntegrityError(
                f"{name} was imported from {origin}, not from the image {root}: "
                "start enclaves with `detente libos run DIR`"
            )
    site = _site_dirs()
    stdlib_paths = _isolate_imports(root, site)
    cache_dir = instance_dir / CACHE_DIR / BYTECODE_DIR
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Until the manifest is verified, every top-level directory of the image
    # root counts as an image package; bind() narrows it to the measured ones.
    image_packages = [p.name for p in root.iterdir() if p.is_dir()]
    finder = VerifyingFinder(
        root, image_packages, site, _early_cache(instance_dir, cache_dir), stdlib_paths
    )
    sys.meta_path.insert(0, finder)

    from libos import egress, limits, logs, runtime
    from libos.image import top_level_modules, verify_image

    verified = verify_image(instance_dir, dependencies="non-modules")
    config = verified.config
    finder.bind(
        verified.files,
        config.packages,
        verified.dependencies,
        top_level_modules(verified.distributions),
    )
    _dlopen_guard(root, verified.dependencies, site)

    writable: list[Path] = [cache_dir, *(instance_dir / m.host for m in config.mounts)]
    writable_files: list[str] = []
    if config.backend == "gramine":
        from libos.gramine import GramineRuntime

        gramine = GramineRuntime(instance_dir, GRAMINE_DEVICE, config.mounts)
        runtime._install(gramine)
        writable_files.append(str(GRAMINE_DEVICE / "user_report_data"))
        if finder.cache is None:
            finder.cache = BytecodeCache(
                cache_dir,
                BytecodeCache.key_for(gramine.sealing_key("mrenclave"), verified.manifest),
            )
    else:
        from libos.counter import COUNTERS_DIR
        from libos.sim import SimPlatform

        platform = SimPlatform(platform_dir(instance_dir))
        runtime._install(
            runtime.SimRuntime(verified.measurement, instance_dir, platform, config.mounts)
        )
        # The SIMULATION monotonic counters of the encrypted mounts (libos.counter).
        writable.append(platform.directory / COUNTERS_DIR)
        if finder.cache is None:
            finder.cache = BytecodeCache(
                cache_dir, BytecodeCache.key_for(platform.sealing_secret, verified.manifest)
            )

    limits.install(limits.Limits.from_resources(config.resources))
    # Uncaught exceptions print to stderr, a host file: without foreign messages.
    logs.install_hooks()
    egress.install(
        egress.EgressPolicy.for_instance(
            instance_dir,
            allow_connect=config.egress.allow_connect,
            allow_listen=config.egress.allow_listen,
            allow_write=config.egress.allow_write,
            extra_dirs=writable,
            writable_files=writable_files,
        )
    )
    return verified


def _enclave_main(instance_dir: Path, argv: list[str]) -> int:
    verified = enter(instance_dir)
    if verified.measurement.simulation:
        print(
            f"detente libos: enclave {verified.measurement.mrenclave[:16]}… started on the "
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


def _startup_probe(instance_dir: Path, modules: Sequence[str]) -> int:
    from libos import limits

    started = time.perf_counter()
    verified = enter(instance_dir)
    entered = time.perf_counter()
    for name in (verified.config.entry_module, *modules):
        importlib.import_module(name)
    imported = time.perf_counter()
    report = {
        "peak_rss_bytes": limits.peak_rss_bytes(),
        "enter_seconds": entered - started,
        "import_seconds": imported - entered,
        "modules": len(sys.modules),
    }
    print(json.dumps(report, sort_keys=True), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    probe = len(args) >= 2 and args[1] == STARTUP_PROBE
    if not probe and (len(args) < 2 or args[1] != "--"):
        print(
            f"usage: python -m {ENCLAVE_MODULE} DIR -- [ARGS...] | "
            f"DIR {STARTUP_PROBE} [MODULES...]",
            file=sys.stderr,
        )
        return 2
    try:
        if probe:
            return _startup_probe(Path(args[0]).resolve(), args[2:])
        return _enclave_main(Path(args[0]).resolve(), args[2:])
    except DetenteError as exc:
        print(f"detente libos: refusing to run: {exc}", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
