"""Run an image's entry point inside a (SIMULATION) enclave.

``run(DIR, argv)`` checks the image's signature, signer and own files, then
starts a fresh interpreter::

    python -B -P -S -m libos.launch DIR -- argv...

with ``PYTHONPATH`` set to ``DIR/image/root`` and the site-packages
directories only, and ``-S`` so no ``.pth`` file (editable-install hooks,
repository folders) runs: that interpreter imports the image's own copy of
``libos`` and ``protocols`` and nothing outside the image and the measured
distributions. There :func:`enter` makes it an enclave:

1. A verifying import finder goes first on ``sys.meta_path``. Every module
   file of the image's packages and of the site-packages distributions is read
   once, hashed, and compiled from exactly those bytes (never from a
   ``__pycache__`` file the host could have planted); extension modules are
   hashed before they are loaded. Until the manifest is verified (which needs
   ``cryptography``, so it cannot come first) the finder records each hash;
   then it checks every recorded one, and from there on it checks each file
   against the manifest as it is imported: a changed file raises
   IntegrityError naming it, a module whose file is not in the manifest
   cannot be imported at all. The standard library is the interpreter's and is
   pinned by the Python version in the manifest, not file by file.
2. The image is verified (:func:`libos.image.verify_image`): signature, the
   signer pinned in libos.toml, the measured config, every image file and
   every dependency file that is not a module (shared libraries such as
   ``libarrow.so``, which the dynamic linker loads without asking Python, and
   data files) — all before the entry point runs.
3. The runtime of the backend, the resource limits (libos.limits) and the
   egress guard (libos.egress) are installed, then the entry point is imported.

Compiling from source costs seconds for numpy, pyarrow and XGBoost, so compiled
code objects are kept in ``DIR/cache/bytecode``, each under the SHA-256 of the
source it was compiled from and authenticated with
``HMAC-SHA256(cache key, name ‖ marshalled code)``. The cache key is
``HMAC-SHA256(sealing secret, "detente/v1 bytecode-cache " ‖ SHA-256(manifest))``:
only code holding the platform's sealing secret makes entries this image
accepts; anything else in that directory is ignored and recompiled.

On the ``sim`` backend this is a SIMULATION: the host can read and change the
process's memory and the platform's keys. It gives no hardware protection.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.abc
import importlib.machinery
import importlib.util
import json
import marshal
import os
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from protocols.errors import DetenteError, IntegrityError, PolicyError

if TYPE_CHECKING:
    from libos.image import DependencyFile, VerifiedImage

PLATFORM_DIR_ENV = "DETENTE_LIBOS_PLATFORM_DIR"
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
STARTUP_PROBE = "--startup-probe"
_CACHE_INFO = b"detente/v1 bytecode-cache "
_STDLIB = frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)


def platform_dir(instance_dir: Path) -> Path:
    """Where the SIMULATION platform lives: ``$DETENTE_LIBOS_PLATFORM_DIR`` or ``DIR/platform``."""
    override = os.environ.get(PLATFORM_DIR_ENV)
    return Path(override) if override else Path(instance_dir) / "platform"


def interpreter_command(module: str) -> list[str]:
    """``python -B -P -S -m MODULE``: how every enclave process starts (no site, no .pth, no pyc).

    libos.process uses it for child processes, so they start like the entry point.
    """
    return [sys.executable, "-B", "-P", "-S", "-m", module]


def python_path(root: Path) -> str:
    """PYTHONPATH of an enclave process: the image root, then site-packages (measured files)."""
    from libos.image import site_dirs

    return os.pathsep.join([str(root), *(str(d) for d in site_dirs())])


def command(instance_dir: Path, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Check the image and return the command line and environment that run it.

    This host-side check covers the signature, the pinned signer, the config and
    the image's own files, and that each distribution is installed at its
    measured version; the enclave process checks the dependency files itself.
    """
    from libos import limits
    from libos.image import verify_image

    verified = verify_image(instance_dir, dependencies="versions")
    config = verified.config
    if config.backend == "gramine":
        raise PolicyError(
            f"{instance_dir}: backend 'gramine' runs under gramine-sgx, not `detente libos "
            f"run`: write its manifest with `detente libos export --target gramine "
            f"{instance_dir} OUT`, then sign and start it with gramine-sgx-sign and gramine-sgx"
        )
    env = {k: v for k, v in os.environ.items() if config.env_allowed(k)}
    budget = limits.Limits.from_resources(config.resources)
    env.update(
        PYTHONPATH=python_path(verified.root),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONNOUSERSITE="1",
        PYTHONSAFEPATH="1",
        OMP_NUM_THREADS=str(config.resources.threads),
        # Bounded malloc arenas keep reserved address space near what is used,
        # so the RLIMIT_AS backstop of libos.limits does not bite on reservations.
        MALLOC_ARENA_MAX=str(limits.malloc_arena_max(budget)),
    )
    # The platform location is host configuration, not input to the enclave.
    env[PLATFORM_DIR_ENV] = str(platform_dir(verified.instance_dir).resolve())
    cmd = [*interpreter_command("libos.launch"), str(verified.instance_dir)]
    return [*cmd, "--", *argv], env


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


@dataclass(frozen=True)
class StartupReport:
    """What starting the enclave costs: measured by running it up to the entry point."""

    peak_rss_bytes: int  # VmHWM after importing the entry point's module
    enter_seconds: float  # verification, runtime, finder (libos.launch.enter)
    import_seconds: float  # importing the entry point's module, verified
    wall_seconds: float  # the whole process, as the host saw it
    modules: int  # modules loaded


def startup_probe(
    instance_dir: Path, modules: Sequence[str] = (), timeout: float = 300
) -> StartupReport:
    """Start the enclave as ``run`` does, import the entry point's module, report, stop.

    The entry function is not called; ``modules`` are imported too (verified,
    like everything). ``detente libos build`` prints this so an operator can
    size ``memory_mb`` from a measured figure.
    """
    cmd, env = command(instance_dir, modules)
    cmd[cmd.index("--")] = STARTUP_PROBE
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise IntegrityError(
            f"the enclave did not start (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:] or 'no message'}"
        )
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    return StartupReport(
        peak_rss_bytes=int(doc["peak_rss_bytes"]),
        enter_seconds=float(doc["enter_seconds"]),
        import_seconds=float(doc["import_seconds"]),
        wall_seconds=wall,
        modules=int(doc["modules"]),
    )


# --- inside the enclave process ------------------------------------------------


class UnmeasuredModuleError(DetenteError, ModuleNotFoundError):
    """A module was imported whose file is not in the image manifest."""


class BytecodeCache:
    """Code objects compiled from verified sources, authenticated with a key the host lacks."""

    def __init__(self, directory: Path, key: bytes) -> None:
        self.directory = Path(directory)
        self._key = key

    def __repr__(self) -> str:
        return f"<BytecodeCache {self.directory} (key not shown)>"

    def __reduce__(self) -> Any:
        raise TypeError("BytecodeCache holds a key and cannot be pickled")

    @staticmethod
    def key_for(secret: bytes, manifest: bytes) -> bytes:
        """HMAC-SHA256(secret, "detente/v1 bytecode-cache " ‖ SHA-256(manifest))."""
        return hmac.new(
            secret, _CACHE_INFO + hashlib.sha256(manifest).digest(), hashlib.sha256
        ).digest()

    def _name(self, source_sha256: str, path: str) -> str:
        # The path is compiled into the code (co_filename), the magic number
        # pins the bytecode format.
        ident = f"{source_sha256}\0{path}\0{importlib.util.MAGIC_NUMBER.hex()}"
        return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()

    def _tag(self, name: str, body: bytes) -> bytes:
        return hmac.new(self._key, name.encode("ascii") + body, hashlib.sha256).digest()

    def get(self, source_sha256: str, path: str) -> CodeType | None:
        name = self._name(source_sha256, path)
        try:
            blob = (self.directory / name).read_bytes()
        except OSError:
            return None
        tag, body = blob[:32], blob[32:]
        if not hmac.compare_digest(tag, self._tag(name, body)):
            return None  # not made with this image's key: ignore, recompile
        try:
            code = marshal.loads(body)  # noqa: S302 (authenticated above)
        except (ValueError, EOFError, TypeError):
            return None
        return code if isinstance(code, CodeType) else None

    def put(self, source_sha256: str, path: str, code: CodeType) -> None:
        name = self._name(source_sha256, path)
        body = marshal.dumps(code)
        tmp = self.directory / f".{name}.{os.getpid()}.tmp"
        try:
            tmp.write_bytes(self._tag(name, body) + body)
            os.replace(tmp, self.directory / name)
        except OSError:
            tmp.unlink(missing_ok=True)  # a cache: a failed write only costs a compile


class _VerifiedSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles a module from source bytes checked against the manifest; never from a pyc."""

    def __init__(
        self, fullname: str, path: str, finder: _VerifyingFinder, area: str, relpath: str
    ) -> None:
        super().__init__(fullname, path)
        self._finder = finder
        self._area = area
        self._relpath = relpath

    def get_code(self, fullname: str) -> CodeType:
        data = self.get_data(self.path)
        sha = hashlib.sha256(data).hexdigest()
        self._finder.check_loaded(self._area, self._relpath, sha)
        cache = self._finder.cache
        code = cache.get(sha, self.path) if cache is not None else None
        if code is None:
            code = compile(data, self.path, "exec", dont_inherit=True)
            if cache is not None:
                cache.put(sha, self.path, code)
        return code


class _VerifyingFinder(importlib.abc.MetaPathFinder):
    """Resolves the image's packages and the measured distributions to checked files only.

    Before :meth:`bind` it records the hash of every file it loads; ``bind``
    checks those against the manifest and from then on each load is checked
    as it happens.
    """

    def __init__(
        self,
        root: Path,
        packages: Sequence[str],
        site_dirs: Sequence[Path] = (),
        cache: BytecodeCache | None = None,
        stdlib_paths: Sequence[str] = (),
    ) -> None:
        self._root = Path(root)
        # The standard library's directories: modules found there are the
        # interpreter's even when sys.stdlib_module_names does not list them
        # (_sysconfigdata_<platform>, for one).
        self._stdlib_paths = list(stdlib_paths)
        self._packages = frozenset(packages)
        self._site_dirs = tuple(str(d) for d in site_dirs)
        self.cache = cache
        self._image: dict[str, str] | None = None
        self._deps: dict[str, DependencyFile] | None = None
        self._allowed: frozenset[str] | None = None
        self._recorded: dict[tuple[str, str], str] = {}

    def bind(
        self,
        image_files: dict[str, str],
        packages: Sequence[str],
        dependencies: dict[str, DependencyFile] | None,
        dependency_modules: set[str] | None,
    ) -> None:
        """Check what was loaded so far against the manifest; check each load from now on.

        ``dependencies`` None: site-packages modules are not restricted (tests only).
        """
        self._image = dict(image_files)
        self._packages = frozenset(packages)
        self._deps = dependencies
        if dependency_modules is not None:
            self._allowed = frozenset(dependency_modules)
        for (area, rel), sha in sorted(self._recorded.items()):
            self.check_loaded(area, rel, sha, loaded_before_verification=True)
        self._recorded.clear()

    def check_loaded(
        self, area: str, rel: str, sha: str, loaded_before_verification: bool = False
    ) -> None:
        """Raise IntegrityError unless ``rel``'s bytes (hash ``sha``) are the measured ones."""
        if area == "image":
            if self._image is None:
                self._recorded[(area, rel)] = sha
                return
            expected = self._image.get(rel)
            what = f"image file {rel!r}"
        else:
            if self._deps is None:
                if self._image is None:
                    self._recorded[(area, rel)] = sha
                return
            dep = self._deps.get(rel)
            expected = dep.sha256 if dep is not None else None
            what = (
                f"dependency file {rel!r} of distribution {dep.distribution!r}"
                if dep is not None
                else f"site-packages file {rel!r}"
            )
        when = "when the enclave started" if loaded_before_verification else "at import"
        if expected is None:
            raise IntegrityError(
                f"{what} was loaded {when} but is not in the image manifest: only measured "
                "files may run in the enclave; rebuild the image if it belongs there"
            )
        if sha != expected:
            raise IntegrityError(
                f"{what} differs from the image manifest ({when}): it changed after the "
                "image was built; restore it (reinstall the distribution) or rebuild the image"
            )

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top in self._packages:
            return self._image_spec(fullname)
        if top in _STDLIB:
            return None  # the interpreter's own, pinned by the Python version
        if self._allowed is not None and top not in self._allowed:
            if path is None and importlib.machinery.PathFinder.find_spec(
                fullname, self._stdlib_paths
            ):
                return None  # in the standard library's directories
            raise UnmeasuredModuleError(
                f"module {top!r} is not part of the enclave image: add the distribution that "
                "provides it to 'distributions' in libos.toml and rebuild",
                name=fullname,
            )
        if not self._site_dirs:
            return None
        return self._site_spec(fullname, path)

    def _image_spec(self, fullname: str) -> importlib.machinery.ModuleSpec:
        rel = fullname.replace(".", "/")
        present = (
            (lambda c: c in self._image)
            if self._image is not None
            else (lambda c: (self._root / c).is_file())
        )
        for candidate, is_package in ((f"{rel}/__init__.py", True), (f"{rel}.py", False)):
            if present(candidate):
                file = self._root / candidate
                loader = _VerifiedSourceLoader(fullname, str(file), self, "image", candidate)
                spec = importlib.util.spec_from_file_location(
                    fullname,
                    file,
                    loader=loader,
                    submodule_search_locations=[str(file.parent)] if is_package else None,
                )
                assert spec is not None
                return spec
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = rel + suffix
            if present(candidate):
                file = self._root / candidate
                self.check_loaded("image", candidate, hashlib.sha256(file.read_bytes()).hexdigest())
                spec = importlib.util.spec_from_file_location(
                    fullname,
                    file,
                    loader=importlib.machinery.ExtensionFileLoader(fullname, str(file)),
                )
                assert spec is not None
                return spec
        raise UnmeasuredModuleError(
            f"module {fullname!r} is not in the enclave image", name=fullname
        )

    def _relative(self, origin: str) -> str | None:
        normal = os.path.normpath(origin)
        for base in self._site_dirs:
            if normal.startswith(base + os.sep):
                return normal[len(base) + 1 :].replace(os.sep, "/")
        return None

    def _site_spec(
        self, fullname: str, path: Sequence[str] | None
    ) -> importlib.machinery.ModuleSpec | None:
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not spec.has_location:
            return spec  # not found, or a namespace package (a directory, no code)
        rel = self._relative(spec.origin)
        if rel is None:
            raise UnmeasuredModuleError(
                f"module {fullname!r} resolves to {spec.origin}, outside the image and "
                "site-packages: it cannot be imported in the enclave",
                name=fullname,
            )
        if self._deps is not None and rel not in self._deps:
            raise UnmeasuredModuleError(
                f"module {fullname!r}: site-packages file {rel!r} is not in the image "
                "manifest (installed or added after the build?); only measured files can "
                "be imported in the enclave",
                name=fullname,
            )
        loader = spec.loader
        new_loader: importlib.abc.Loader
        if isinstance(loader, importlib.machinery.SourceFileLoader):
            new_loader = _VerifiedSourceLoader(fullname, spec.origin, self, "site", rel)
        elif isinstance(loader, importlib.machinery.ExtensionFileLoader):
            with open(spec.origin, "rb") as fh:
                sha = hashlib.file_digest(fh, "sha256").hexdigest()
            self.check_loaded("site", rel, sha)
            new_loader = loader
        else:
            raise UnmeasuredModuleError(
                f"module {fullname!r} would load from {rel!r} with {type(loader).__name__}: "
                "only measured source and extension modules can be imported in the enclave",
                name=fullname,
            )
        checked = importlib.util.spec_from_file_location(
            fullname,
            spec.origin,
            loader=new_loader,
            submodule_search_locations=spec.submodule_search_locations,
        )
        return checked


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
    finder = _VerifyingFinder(
        root, image_packages, site, _early_cache(instance_dir, cache_dir), stdlib_paths
    )
    sys.meta_path.insert(0, finder)

    from libos import egress, limits, runtime
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
        runtime._install(gramine)  # type: ignore[arg-type]
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
            runtime.EnclaveRuntime(verified.measurement, instance_dir, platform, config.mounts)
        )
        # The SIMULATION monotonic counters of the encrypted mounts (libos.counter).
        writable.append(platform.directory / COUNTERS_DIR)
        if finder.cache is None:
            finder.cache = BytecodeCache(
                cache_dir, BytecodeCache.key_for(platform.sealing_secret, verified.manifest)
            )

    limits.install(limits.Limits.from_resources(config.resources))
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
            f"usage: python -m libos.launch DIR -- [ARGS...] | DIR {STARTUP_PROBE} [MODULES...]",
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
