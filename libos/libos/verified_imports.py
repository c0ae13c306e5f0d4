"""The import system of an enclave process: only measured files, compiled from the verified bytes.

A verifying import finder goes first on ``sys.meta_path``. Every module file
of the image's packages and of the site-packages distributions is read once,
hashed, and compiled from exactly those bytes (never from a ``__pycache__``
file the host could have planted); extension modules are hashed before they
are loaded. Until the manifest is verified (which needs ``cryptography``, so
it cannot come first) the finder records each hash; then it checks every
recorded one, and from there on it checks each file against the manifest as
it is imported: a changed file raises IntegrityError naming it, a module whose
file is not in the manifest cannot be imported at all. The standard library is
the interpreter's and is pinned by the Python version in the manifest, not
file by file.

Compiling from source costs seconds for numpy, pyarrow and XGBoost, so compiled
code objects are kept in ``DIR/cache/bytecode``, each under the SHA-256 of the
source it was compiled from and authenticated with
``HMAC-SHA256(cache key, name ‖ marshalled code)``. The cache key is
``HMAC-SHA256(sealing secret, "detente/v1 bytecode-cache " ‖ SHA-256(manifest))``:
only code holding the platform's sealing secret makes entries this image
accepts; anything else in that directory is ignored and recompiled.

Nothing here may import ``cryptography`` or anything else outside the standard
library and ``protocols.errors``: this module is loaded before the finder it
defines is installed (libos.enclave_start).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.abc
import importlib.machinery
import importlib.util
import marshal
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, Any

from protocols.durable import write_atomic
from protocols.errors import DetenteError, IntegrityError

if TYPE_CHECKING:
    from libos.image import DependencyFile

_CACHE_INFO = b"detente/v1 bytecode-cache "
_STDLIB = frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)


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
        try:
            # A cache: no fsync, and a failed write only costs a compile.
            write_atomic(self.directory / name, self._tag(name, body) + body, durable=False)
        except OSError:
            pass


class _VerifiedSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles a module from source bytes checked against the manifest; never from a pyc."""

    def __init__(
        self, fullname: str, path: str, finder: VerifyingFinder, area: str, relpath: str
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


class VerifyingFinder(importlib.abc.MetaPathFinder):
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
