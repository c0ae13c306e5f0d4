"""Enclave images: init, build, measure and verify (DESIGN.md §3.1).

An image is ``<DIR>/image/``::

    root/<package>/...   copies of the configured in-repo packages
    manifest.json        canonical JSON (protocols.canonical) describing everything loaded
    manifest.sig         Ed25519 signature by the image signer over manifest.json's bytes
    signer.pub           the signer's raw public key, hex

MRENCLAVE is SHA-256(manifest.json bytes); MRSIGNER is SHA-256(signer raw public
key). The manifest holds no absolute path and no timestamp, so the same sources,
dependency versions and config give the same MRENCLAVE in any directory and on
any machine with the same Python and platform.

Dependency distributions (the configured ones and their requirements) are
measured file by file: every file a distribution's RECORD lists inside
site-packages, as its path relative to site-packages, its size and its SHA-256,
sorted. Left out are bytecode caches (the enclave compiles from the measured
sources), console scripts outside site-packages (never loaded) and the
installer's own bookkeeping (RECORD, INSTALLER, REQUESTED, direct_url.json),
which differs between installers of the same wheel. Files are hashed in a
thread pool (hashlib releases the GIL on large updates), and each hash is
checked against RECORD as well, so a distribution altered after installation
is refused at build time.

``detente libos run`` re-checks: in the launcher, the signature, the signer
pinned by libos.toml, the image's own files and every dependency file that is
not a Python module (shared libraries, data), before anything of the image
runs; then every module file, of the image and of its dependencies, when it is
imported (libos.verified_imports).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import platform as _platform
import re
import shutil
import sys
import sysconfig
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from libos.config import CONFIG_NAME, InstanceConfig, render_default
from protocols import canonical
from protocols.errors import FormatError, IntegrityError, PolicyError, SignatureError
from protocols.keys import SigningKey, VerifyKey, write_secret_file

# Version 2: dependency distributions measured file by file (version 1 pinned
# only their RECORD).
MANIFEST_VERSION = 2
IMAGE_DIR = "image"
ROOT_DIR = "root"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SIGNER_PUB_NAME = "signer.pub"
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")
# Written by the installer, not part of the wheel: they differ between pip and
# other installers of the same wheel, and nothing imports them.
_INSTALLER_FILES = frozenset(
    {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "RECORD.jws", "RECORD.p7s"}
)
_MODULE_SUFFIXES = (*importlib.machinery.SOURCE_SUFFIXES, *importlib.machinery.EXTENSION_SUFFIXES)


@dataclass(frozen=True)
class Measurement:
    """An image's identity, as a quote reports it."""

    mrenclave: bytes
    mrsigner: bytes
    backend: str
    debug: bool
    isv_prod_id: int
    isv_svn: int
    file_count: int
    dependency_count: int = 0
    dependency_file_count: int = 0
    dependency_bytes: int = 0

    @property
    def simulation(self) -> bool:
        return self.backend == "sim"

    def to_json(self) -> dict[str, Any]:
        return {
            "mrenclave": self.mrenclave.hex(),
            "mrsigner": self.mrsigner.hex(),
            "backend": self.backend,
            "debug": self.debug,
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
        }


# --- signer keys ------------------------------------------------------------


def load_signer_key(path: Path) -> SigningKey:
    """Read an Ed25519 signer key: PKCS#8 PEM (as written by init or openssl), raw or hex."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"image signer key {path} does not exist") from None
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise FormatError(f"{path} is not an unencrypted PEM private key") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise FormatError(f"{path} is not an Ed25519 key (image signers use Ed25519)")
        return SigningKey(key)
    if len(data) == 32:
        return SigningKey.from_raw(data)
    try:
        return SigningKey.from_raw(bytes.fromhex(data.decode("ascii").strip()))
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"{path} is not an Ed25519 private key (PEM, raw or hex)") from None


def write_signer_key(path: Path, key: SigningKey) -> None:
    pem = ed25519.Ed25519PrivateKey.from_private_bytes(key.private_raw()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret_file(path, pem)


def mrsigner_of(key: VerifyKey) -> bytes:
    return hashlib.sha256(key.raw).digest()


# --- init -------------------------------------------------------------------


def init(instance_dir: Path, signer_key: Path | None = None) -> InstanceConfig:
    """Create an instance: a commented libos.toml and, unless given one, a fresh signer key.

    Every instance gets its own signer key; there is no shared default key.
    """
    instance_dir = Path(instance_dir)
    config_path = instance_dir / CONFIG_NAME
    if config_path.exists():
        raise PolicyError(f"{config_path} already exists: edit it, or init another directory")
    instance_dir.mkdir(parents=True, exist_ok=True)
    if signer_key is not None:
        key_path = Path(signer_key).resolve()
        public = load_signer_key(key_path).verify_key  # fail now, not at build time
        key_setting = str(key_path)
    else:
        key_setting = "signer.key"
        key_file = instance_dir / key_setting
        if key_file.exists():
            raise PolicyError(f"{key_file} already exists; pass it with --signer-key to reuse it")
        key = SigningKey.generate()
        write_signer_key(key_file, key)
        public = key.verify_key
    # The public key is pinned too: `run` refuses images signed by any other key.
    config_path.write_text(render_default(key_setting, public.hex), encoding="utf-8")
    return InstanceConfig.load(instance_dir)


# --- collecting what the image holds ------------------------------------------


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_dir(package: str) -> Path:
    """The source directory of an importable regular package."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise PolicyError(
            f"{CONFIG_NAME}: key 'packages' names {package!r}, which is not importable here"
        )
    locations = list(spec.submodule_search_locations or [])
    if len(locations) != 1 or spec.origin is None:
        raise PolicyError(
            f"{CONFIG_NAME}: key 'packages' names {package!r}, which is not a regular package "
            "(a directory with __init__.py)"
        )
    return Path(locations[0])


def _skipped(relative: Path) -> bool:
    return any(part in _SKIP_DIRS for part in relative.parts[:-1]) or relative.name.endswith(
        _SKIP_SUFFIXES
    )


def source_files(config: InstanceConfig) -> list[tuple[str, Path]]:
    """(image-relative posix path, source path) for every file of every package, sorted."""
    out: list[tuple[str, Path]] = []
    for package in config.packages:
        base = package_dir(package)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for name in sorted(filenames):
                path = Path(dirpath) / name
                relative = path.relative_to(base)
                if _skipped(relative):
                    continue
                out.append((f"{package}/{relative.as_posix()}", path))
    out.sort(key=lambda item: item[0])
    module = config.entry_module.replace(".", "/")
    present = {rel for rel, _ in out}
    if f"{module}.py" not in present and f"{module}/__init__.py" not in present:
        raise PolicyError(
            f"{CONFIG_NAME}: key 'entry_point' = {config.entry_point!r} names module "
            f"{config.entry_module!r}, which is not in the image's packages"
        )
    return out


# --- dependency distributions -------------------------------------------------


def _prefix() -> str:
    """This interpreter's prefix, its virtual environment's when it runs in one.

    ``site`` sets sys.prefix to the venv; an enclave interpreter starts with -S,
    so the pyvenv.cfg beside the executable is looked up here the way site does.
    """
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    for candidate in (exe_dir, os.path.dirname(exe_dir)):
        if os.path.isfile(os.path.join(candidate, "pyvenv.cfg")):
            return candidate
    return sys.prefix


def site_dirs() -> tuple[Path, ...]:
    """This interpreter's site-packages directories (purelib, platlib): real paths, once each."""
    prefix = _prefix()
    paths = sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})
    out: list[Path] = []
    for key in ("purelib", "platlib"):
        real = Path(os.path.realpath(paths[key]))
        if real not in out:
            out.append(real)
    return tuple(out)


@dataclass(frozen=True)
class DependencyFile:
    """One measured file of a dependency distribution."""

    distribution: str  # normalized distribution name
    path: str  # posix path relative to site-packages
    size: int
    sha256: str

    @property
    def is_module(self) -> bool:
        """A Python module file, checked when imported rather than at start."""
        return self.path.endswith(_MODULE_SUFFIXES)


def _wanted(rel: str) -> bool:
    """Whether a RECORD entry (posix path relative to site-packages) is measured."""
    parts = rel.split("/")
    if not rel or parts[0] in ("", "..") or "__pycache__" in parts[:-1]:
        return False
    if parts[-1].endswith(_SKIP_SUFFIXES):
        return False
    return not (
        len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] in _INSTALLER_FILES
    )


def digest_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of the bytes read from ``path``."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
        return fh.tell(), digest.hexdigest()  # tell(): exactly the bytes hashed


def digest_files(paths: Iterable[Path]) -> list[tuple[int, str]]:
    """digest_file of each path, in a thread pool; order kept."""
    items = list(paths)
    workers = max(2, min(16, 2 * (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="libos-hash") as pool:
        return list(pool.map(digest_file, items))


def _record_hash(value: str) -> str | None:
    """RECORD's "sha256=<urlsafe base64, no padding>" as hex; None for other algorithms."""
    algorithm, _, encoded = value.partition("=")
    if algorithm != "sha256":
        return None
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
    except ValueError:
        return None


def _distribution_files(
    dist: importlib.metadata.Distribution, key: str
) -> list[tuple[str, Path, str | None]]:
    """(site-packages-relative path, absolute path, RECORD sha256 hex) of a distribution's files.

    Plain string paths here: pathlib costs more than the hashing for thousands of small files.
    """
    files = dist.files
    if files is None:
        raise PolicyError(
            f"distribution {key!r} has no RECORD file, so its files cannot be measured; "
            f"reinstall it with pip (pip install --force-reinstall {key})"
        )
    base = os.path.realpath(str(dist.locate_file("")))
    real_dirs: dict[str, str] = {}  # one realpath per directory, not per file
    out: list[tuple[str, Path, str | None]] = []
    for entry in files:
        rel = entry.as_posix()
        if not _wanted(rel):
            continue
        path = os.path.join(base, rel)
        folder, name = os.path.split(path)
        real_folder = real_dirs.get(folder)
        if real_folder is None:
            real_folder = real_dirs[folder] = os.path.realpath(folder)
        real = os.path.realpath(path) if os.path.islink(path) else os.path.join(real_folder, name)
        if not real.startswith(base + os.sep):
            raise IntegrityError(
                f"distribution {key!r}: file {rel!r} is a link out of {base}; reinstall {key}"
            )
        if not os.path.isfile(path):
            raise IntegrityError(
                f"distribution {key!r}: file {rel!r} listed in its RECORD is missing; "
                f"reinstall it (pip install --force-reinstall {key})"
            )
        recorded = _record_hash(entry.hash.mode + "=" + entry.hash.value) if entry.hash else None
        out.append((rel, Path(path), recorded))
    return out


def resolve_distributions(names: tuple[str, ...]) -> list[dict[str, str]]:
    """The named distributions and their transitive requirements, sorted by normalized name.

    Requirements are followed when their environment marker holds here; extras
    are followed only when a requirement asks for them.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    found: dict[str, dict[str, str]] = {}
    done: set[tuple[str, str]] = set()
    queue: list[tuple[str, str, str]] = [(n, "", "key 'distributions'") for n in names]
    while queue:
        name, extra, wanted_by = queue.pop(0)
        key = _normalize(name)
        if (key, extra) in done:
            continue
        done.add((key, extra))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise PolicyError(
                f"distribution {name!r} (from {wanted_by}) is not installed: "
                f"pip install {name}, or remove it from {CONFIG_NAME}"
            ) from None
        if key not in found:
            found[key] = {"name": key, "version": dist.version}
        for text in dist.requires or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                raise PolicyError(
                    f"distribution {name!r} has an invalid requirement {text!r}"
                ) from None
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            for sub in ["", *sorted(req.extras)]:
                queue.append((req.name, sub, f"distribution {name!r}"))
    return [found[k] for k in sorted(found)]


def measure_distributions(names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Manifest entries of the distributions and their requirements: name, version, files.

    Each file: path relative to site-packages, size, SHA-256; sorted by path.
    Raises IntegrityError naming the file if one differs from its RECORD hash.
    """
    entries = resolve_distributions(names)
    listed: list[tuple[str, str, Path, str | None]] = []
    for entry in entries:
        dist = importlib.metadata.distribution(entry["name"])
        listed += [(entry["name"], *f) for f in _distribution_files(dist, entry["name"])]
    digests = digest_files(path for _, _, path, _ in listed)
    files: dict[str, list[dict[str, Any]]] = {e["name"]: [] for e in entries}
    for (key, rel, _path, recorded), (size, sha) in zip(listed, digests, strict=True):
        if recorded is not None and recorded != sha:
            raise IntegrityError(
                f"distribution {key!r}: file {rel!r} differs from the hash its RECORD lists "
                f"(altered after installation); reinstall it (pip install --force-reinstall {key})"
            )
        files[key].append({"path": rel, "size": size, "sha256": sha})
    return [{**e, "files": sorted(files[e["name"]], key=lambda f: f["path"])} for e in entries]


def python_info() -> dict[str, str]:
    return {"implementation": sys.implementation.name, "version": _platform.python_version()}


def manifest_document(
    config: InstanceConfig, files: list[dict[str, Any]], distributions: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "config": config.measured(),
        "python": python_info(),
        "platform": sysconfig.get_platform(),
        "files": sorted(files, key=lambda f: f["path"]),
        "distributions": distributions,
    }


def _signer_public_key(instance_dir: Path, config: InstanceConfig) -> VerifyKey:
    key_path = config.signer_key_path(instance_dir)
    if key_path.exists():
        return load_signer_key(key_path).verify_key
    if config.signer_public_key:
        return VerifyKey.from_hex(config.signer_public_key)
    pub = instance_dir / IMAGE_DIR / SIGNER_PUB_NAME
    if pub.exists():
        return VerifyKey.from_hex(pub.read_text(encoding="ascii").strip())
    raise PolicyError(
        f"image signer key {key_path} does not exist: run `detente libos init DIR` "
        "or set signer_key in libos.toml"
    )


def _image_files(config: InstanceConfig) -> list[tuple[str, Path, int, str]]:
    sources = source_files(config)
    digests = digest_files(path for _, path in sources)
    return [
        (rel, path, size, sha) for (rel, path), (size, sha) in zip(sources, digests, strict=True)
    ]


def measure(instance_dir: Path) -> Measurement:
    """MRENCLAVE and MRSIGNER of the image ``build`` would make, without writing or running."""
    instance_dir = Path(instance_dir)
    config = InstanceConfig.load(instance_dir)
    files = [
        {"path": rel, "size": size, "sha256": sha} for rel, _, size, sha in _image_files(config)
    ]
    distributions = measure_distributions(config.distributions)
    document = manifest_document(config, files, distributions)
    return _measurement(
        config, canonical.dumps(document), _signer_public_key(instance_dir, config), document
    )


def _measurement(
    config: InstanceConfig, manifest: bytes, signer: VerifyKey, document: dict[str, Any]
) -> Measurement:
    dependency_files = [f for d in document["distributions"] for f in d["files"]]
    return Measurement(
        mrenclave=hashlib.sha256(manifest).digest(),
        mrsigner=mrsigner_of(signer),
        backend=config.backend,
        debug=config.debug,
        isv_prod_id=config.isv_prod_id,
        isv_svn=config.isv_svn,
        file_count=len(document["files"]),
        dependency_count=len(document["distributions"]),
        dependency_file_count=len(dependency_files),
        dependency_bytes=sum(int(f["size"]) for f in dependency_files),
    )


def _check_signer_pin(config: InstanceConfig, key: VerifyKey, where: Path) -> None:
    if config.signer_public_key and key.hex != config.signer_public_key:
        raise PolicyError(
            f"{where}: signer_key's public key {key.hex} is not the pinned "
            f"signer_public_key {config.signer_public_key}; use the pinned signer's key, or "
            "pin this one (an image signed by another key is refused at run time)"
        )


def build(instance_dir: Path) -> Measurement:
    """Copy the packages into ``image/root``, measure everything, write and sign the manifest."""
    instance_dir = Path(instance_dir)
    config = InstanceConfig.load(instance_dir)
    key = load_signer_key(config.signer_key_path(instance_dir))
    _check_signer_pin(config, key.verify_key, instance_dir / CONFIG_NAME)
    distributions = measure_distributions(config.distributions)
    staging = instance_dir / f"{IMAGE_DIR}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    root = staging / ROOT_DIR
    files: list[dict[str, Any]] = []
    for rel, path, _size, _sha in _image_files(config):
        # Hash the bytes we copy, so the manifest describes exactly the copy.
        data = path.read_bytes()
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    document = manifest_document(config, files, distributions)
    manifest = canonical.dumps(document)
    (staging / MANIFEST_NAME).write_bytes(manifest)
    (staging / SIGNATURE_NAME).write_bytes(key.sign(manifest))
    (staging / SIGNER_PUB_NAME).write_text(key.verify_key.hex + "\n", encoding="ascii")
    final = instance_dir / IMAGE_DIR
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return _measurement(config, manifest, key.verify_key, document)


# --- verification before running ---------------------------------------------

DependencyCheck = Literal["all", "non-modules", "versions"]


@dataclass(frozen=True)
class VerifiedImage:
    """An image whose manifest signature, signer and files matched. Made by verify_image."""

    instance_dir: Path
    root: Path
    config: InstanceConfig  # the measured config, from the manifest
    manifest: bytes
    files: dict[str, str]  # image-relative path -> sha256 hex
    distributions: list[dict[str, Any]]  # name, version, files
    measurement: Measurement
    dependencies: dict[str, DependencyFile]  # site-packages-relative path -> file
    site_dirs: tuple[Path, ...]


def _rebuild_hint(instance_dir: Path) -> str:
    return f"rebuild with `detente libos build {instance_dir}`"


def expected_signer(instance_dir: Path, config: InstanceConfig) -> VerifyKey:
    """The signer libos.toml pins: signer_public_key, else the public key of signer_key."""
    if config.signer_public_key:
        return VerifyKey.from_hex(config.signer_public_key)
    key_path = config.signer_key_path(instance_dir)
    if key_path.exists():
        return load_signer_key(key_path).verify_key
    raise PolicyError(
        f"{instance_dir / CONFIG_NAME} pins no image signer (signer_public_key is empty and "
        f"{key_path} does not exist): set signer_public_key to the hex public key of the "
        "signer whose images this instance may run"
    )


def _read_manifest(instance_dir: Path, expected: VerifyKey) -> tuple[bytes, VerifyKey]:
    image = instance_dir / IMAGE_DIR
    try:
        manifest = (image / MANIFEST_NAME).read_bytes()
        signature = (image / SIGNATURE_NAME).read_bytes()
        signer = VerifyKey.from_hex((image / SIGNER_PUB_NAME).read_text(encoding="ascii").strip())
    except FileNotFoundError as exc:
        raise IntegrityError(
            f"image is incomplete ({Path(str(exc.filename)).name} is missing): "
            + _rebuild_hint(instance_dir)
        ) from None
    except (ValueError, FormatError):
        raise IntegrityError(
            f"image signer key {image / SIGNER_PUB_NAME} is not an Ed25519 public key: "
            + _rebuild_hint(instance_dir)
        ) from None
    if signer != expected:
        raise SignatureError(
            f"image {image} is signed by MRSIGNER {mrsigner_of(signer).hex()}, but "
            f"{CONFIG_NAME} pins the signer with MRSIGNER {mrsigner_of(expected).hex()}: it "
            f"was not built by this instance's signer; {_rebuild_hint(instance_dir)}"
        )
    try:
        expected.verify(signature, manifest)
    except SignatureError:
        raise SignatureError(
            f"image manifest {image / MANIFEST_NAME} does not match its signature by "
            f"{SIGNER_PUB_NAME}: it was altered; {_rebuild_hint(instance_dir)}"
        ) from None
    return manifest, signer


def _actual_files(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = path
    return out


def check_files(root: Path, expected: dict[str, str]) -> None:
    """Raise IntegrityError naming the first file that differs, is missing or is extra."""
    actual = _actual_files(root)
    for rel in sorted(set(actual) | set(expected)):
        if rel not in actual:
            raise IntegrityError(f"image file {rel!r} is missing from {root}")
        if rel not in expected:
            raise IntegrityError(f"image file {rel!r} in {root} is not in the manifest (extra)")
        path = actual[rel]
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(f"image file {rel!r} is not a regular file")
    names = sorted(expected)
    for rel, (_size, sha) in zip(names, digest_files(actual[r] for r in names), strict=True):
        if sha != expected[rel]:
            raise IntegrityError(f"image file {rel!r} differs from the manifest")


def locate_dependency(rel: str, dirs: tuple[Path, ...]) -> Path | None:
    """The file at site-packages-relative ``rel`` in the first of ``dirs`` that has it."""
    for base in dirs:
        path = base / rel
        if path.exists() or path.is_symlink():
            return path
    return None


def _dependency_files(distributions: list[dict[str, Any]]) -> dict[str, DependencyFile]:
    out: dict[str, DependencyFile] = {}
    for entry in distributions:
        name = str(entry.get("name"))
        files = canonical.field(entry, "files", list, f"image manifest distribution {name!r}")
        for f in files:
            out[str(f["path"])] = DependencyFile(
                name, str(f["path"]), int(f["size"]), str(f["sha256"])
            )
    return out


def check_dependency_files(
    dependencies: dict[str, DependencyFile], dirs: tuple[Path, ...], modules: bool = True
) -> None:
    """Hash dependency files against the manifest (all, or all but module files).

    Raises IntegrityError naming the first file that is missing or differs.
    """
    wanted = [d for _, d in sorted(dependencies.items()) if modules or not d.is_module]
    paths: list[Path] = []
    for dep in wanted:
        path = locate_dependency(dep.path, dirs)
        if path is None or path.is_symlink() or not path.is_file():
            raise IntegrityError(
                f"dependency file {dep.path!r} of distribution {dep.distribution!r} is missing "
                f"from site-packages: reinstall {dep.distribution} at the "
                "version the image was built with, or rebuild the image"
            )
        paths.append(path)
    for dep, (size, sha) in zip(wanted, digest_files(paths), strict=True):
        if size != dep.size or sha != dep.sha256:
            raise IntegrityError(
                f"dependency file {dep.path!r} of distribution {dep.distribution!r} differs "
                "from the image manifest (changed after build): reinstall the distribution "
                "the image was built with, or rebuild the image after reviewing the change"
            )


def top_level_modules(distributions: list[dict[str, Any]]) -> set[str]:
    """Top-level import names that the manifest's dependency files provide."""
    names: set[str] = set()
    for entry in distributions:
        for f in entry.get("files", []):
            first, sep, _ = str(f["path"]).partition("/")
            if sep:  # a directory: a package (or numpy.libs, *.dist-info: not identifiers)
                name = first
            elif first.endswith(_MODULE_SUFFIXES):  # a top-level module file
                name = first.split(".")[0]
            else:
                continue
            if name.isidentifier():
                names.add(name)
    return names


def check_distributions(distributions: list[dict[str, Any]]) -> None:
    """Each distribution of the image is installed here at the version it was built with."""
    for entry in distributions:
        name = str(entry.get("name"))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise IntegrityError(
                f"distribution {name!r} {entry.get('version')} of the image is not installed"
            ) from None
        if dist.version != entry.get("version"):
            raise IntegrityError(
                f"distribution {name!r} is version {dist.version}, the image was built "
                f"with {entry.get('version')}"
            )


def _compare_configs(image_config: InstanceConfig, local: InstanceConfig, where: Path) -> None:
    measured, current = image_config.measured(), local.measured()
    for key in measured:
        if measured[key] != current[key]:
            raise PolicyError(
                f"{where}: key {key!r} is {current[key]!r} but the image was built with "
                f"{measured[key]!r}; {_rebuild_hint(where.parent)}"
            )


def verify_image(instance_dir: Path, dependencies: DependencyCheck = "all") -> VerifiedImage:
    """Check the image against its signed manifest and pinned signer, or raise.

    ``dependencies``: "all" hashes every dependency file; "non-modules" every
    one except Python module files (the launcher checks those when they are
    imported); "versions" only checks that each distribution is installed at
    the measured version (the host's quick pre-check before it starts the
    enclave, which then checks the files itself).
    """
    instance_dir = Path(instance_dir).resolve()
    local = InstanceConfig.load(instance_dir)
    manifest, signer = _read_manifest(instance_dir, expected_signer(instance_dir, local))
    document = canonical.loads(manifest, "image manifest")
    if document.get("version") != MANIFEST_VERSION or canonical.dumps(document) != manifest:
        raise FormatError(
            f"image manifest is not a canonical version {MANIFEST_VERSION} manifest; "
            + _rebuild_hint(instance_dir)
        )
    config_doc = canonical.field(document, "config", dict, "image manifest")
    config = InstanceConfig.from_dict(
        {
            **config_doc,
            "signer_key": local.signer_key,
            "signer_public_key": local.signer_public_key,
        },
        "image manifest",
    )
    _compare_configs(config, local, instance_dir / CONFIG_NAME)
    if (
        document.get("python") != python_info()
        or document.get("platform") != sysconfig.get_platform()
    ):
        raise IntegrityError(
            f"image was built for {document.get('python')} on {document.get('platform')}, "
            f"this is {python_info()} on {sysconfig.get_platform()}"
        )
    entries = canonical.field(document, "files", list, "image manifest")
    expected = {str(f["path"]): str(f["sha256"]) for f in entries}
    root = instance_dir / IMAGE_DIR / ROOT_DIR
    check_files(root, expected)
    distributions = canonical.field(document, "distributions", list, "image manifest")
    check_distributions(distributions)
    deps = _dependency_files(distributions)
    dirs = site_dirs()
    if dependencies != "versions":
        check_dependency_files(deps, dirs, modules=dependencies == "all")
    return VerifiedImage(
        instance_dir=instance_dir,
        root=root,
        config=config,
        manifest=manifest,
        files=expected,
        distributions=distributions,
        measurement=_measurement(config, manifest, signer, document),
        dependencies=deps,
        site_dirs=dirs,
    )
