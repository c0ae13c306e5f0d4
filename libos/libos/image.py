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

Dependency distributions are pinned by name, version and the SHA-256 of their
RECORD file; RECORD lists the SHA-256 of every file of the distribution, so the
pin covers the files as the installer recorded them without hashing hundreds of
megabytes on every build.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform as _platform
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from libos.config import CONFIG_NAME, InstanceConfig, render_default
from protocols import canonical
from protocols.errors import FormatError, IntegrityError, PolicyError, SignatureError
from protocols.keys import SigningKey, VerifyKey, write_secret_file

MANIFEST_VERSION = 1
IMAGE_DIR = "image"
ROOT_DIR = "root"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SIGNER_PUB_NAME = "signer.pub"
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")


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
        load_signer_key(key_path)  # fail now, not at build time
        key_setting = str(key_path)
    else:
        key_setting = "signer.key"
        key_file = instance_dir / key_setting
        if key_file.exists():
            raise PolicyError(f"{key_file} already exists; pass it with --signer-key to reuse it")
        write_signer_key(key_file, SigningKey.generate())
    config_path.write_text(render_default(key_setting), encoding="utf-8")
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


def _record_sha256(dist: importlib.metadata.Distribution, name: str) -> str:
    for f in dist.files or []:
        if f.name == "RECORD" and f.parent.name.endswith(".dist-info"):
            return hashlib.sha256(Path(str(dist.locate_file(f))).read_bytes()).hexdigest()
    raise PolicyError(
        f"distribution {name!r} has no RECORD file, so its files cannot be pinned; "
        "reinstall it with pip"
    )


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
            found[key] = {
                "name": key,
                "version": dist.version,
                "record_sha256": _record_sha256(dist, name),
            }
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


def python_info() -> dict[str, str]:
    return {"implementation": sys.implementation.name, "version": _platform.python_version()}


def manifest_document(
    config: InstanceConfig, files: list[dict[str, Any]], distributions: list[dict[str, str]]
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
    pub = instance_dir / IMAGE_DIR / SIGNER_PUB_NAME
    if pub.exists():
        return VerifyKey.from_hex(pub.read_text(encoding="ascii").strip())
    raise PolicyError(
        f"image signer key {key_path} does not exist: run `detente libos init DIR` "
        "or set signer_key in libos.toml"
    )


def measure(instance_dir: Path) -> Measurement:
    """MRENCLAVE and MRSIGNER of the image ``build`` would make, without writing or running."""
    instance_dir = Path(instance_dir)
    config = InstanceConfig.load(instance_dir)
    files = [
        {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for rel, data in ((rel, path.read_bytes()) for rel, path in source_files(config))
    ]
    document = manifest_document(config, files, resolve_distributions(config.distributions))
    return _measurement(
        config, canonical.dumps(document), _signer_public_key(instance_dir, config), len(files)
    )


def _measurement(
    config: InstanceConfig, manifest: bytes, signer: VerifyKey, file_count: int
) -> Measurement:
    return Measurement(
        mrenclave=hashlib.sha256(manifest).digest(),
        mrsigner=mrsigner_of(signer),
        backend=config.backend,
        debug=config.debug,
        isv_prod_id=config.isv_prod_id,
        isv_svn=config.isv_svn,
        file_count=file_count,
    )


def build(instance_dir: Path) -> Measurement:
    """Copy the packages into ``image/root``, write and sign the manifest, return it."""
    instance_dir = Path(instance_dir)
    config = InstanceConfig.load(instance_dir)
    key = load_signer_key(config.signer_key_path(instance_dir))
    distributions = resolve_distributions(config.distributions)
    staging = instance_dir / f"{IMAGE_DIR}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    root = staging / ROOT_DIR
    files: list[dict[str, Any]] = []
    for rel, path in source_files(config):
        # Hash the bytes we copy, so the manifest describes exactly the copy.
        data = path.read_bytes()
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = canonical.dumps(manifest_document(config, files, distributions))
    (staging / MANIFEST_NAME).write_bytes(manifest)
    (staging / SIGNATURE_NAME).write_bytes(key.sign(manifest))
    (staging / SIGNER_PUB_NAME).write_text(key.verify_key.hex + "\n", encoding="ascii")
    final = instance_dir / IMAGE_DIR
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return _measurement(config, manifest, key.verify_key, len(files))


# --- verification before running ---------------------------------------------


@dataclass(frozen=True)
class VerifiedImage:
    """An image whose manifest signature, files and distributions matched. Made by verify_image."""

    instance_dir: Path
    root: Path
    config: InstanceConfig  # the measured config, from the manifest
    manifest: bytes
    files: dict[str, str]  # image-relative path -> sha256 hex
    distributions: list[dict[str, Any]]  # name, version, record_sha256
    measurement: Measurement


def _rebuild_hint(instance_dir: Path) -> str:
    return f"rebuild with `detente libos build {instance_dir}`"


def _read_manifest(instance_dir: Path) -> tuple[bytes, VerifyKey]:
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
    try:
        signer.verify(signature, manifest)
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
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected[rel]:
            raise IntegrityError(f"image file {rel!r} differs from the manifest")


def top_level_modules(distributions: list[dict[str, Any]]) -> set[str]:
    """Top-level import names that the given (installed) distributions' RECORD files list."""
    names: set[str] = set()
    for entry in distributions:
        dist = importlib.metadata.distribution(str(entry.get("name")))
        for f in dist.files or []:
            first = f.parts[0] if f.parts else ""
            if (
                not first
                or first in ("..", "__pycache__")
                or first.endswith((".dist-info", ".data", ".pth"))
            ):
                continue
            name = first.split(".")[0] if "." in first else first
            if name.isidentifier():
                names.add(name)
    return names


def check_distributions(distributions: list[dict[str, Any]]) -> None:
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
        if _record_sha256(dist, name) != entry.get("record_sha256"):
            raise IntegrityError(
                f"distribution {name!r} {dist.version}: its RECORD differs from the image's "
                "(reinstalled or altered)"
            )


def _compare_configs(image_config: InstanceConfig, local: InstanceConfig, where: Path) -> None:
    measured, current = image_config.measured(), local.measured()
    for key in measured:
        if measured[key] != current[key]:
            raise PolicyError(
                f"{where}: key {key!r} is {current[key]!r} but the image was built with "
                f"{measured[key]!r}; {_rebuild_hint(where.parent)}"
            )


def verify_image(instance_dir: Path) -> VerifiedImage:
    """Check everything the image will load against its signed manifest, or raise."""
    instance_dir = Path(instance_dir).resolve()
    local = InstanceConfig.load(instance_dir)
    manifest, signer = _read_manifest(instance_dir)
    document = canonical.loads(manifest, "image manifest")
    if document.get("version") != MANIFEST_VERSION or canonical.dumps(document) != manifest:
        raise FormatError(f"image manifest is not a canonical version {MANIFEST_VERSION} manifest")
    config_doc = canonical.field(document, "config", dict, "image manifest")
    config = InstanceConfig.from_dict(
        {**config_doc, "signer_key": local.signer_key}, "image manifest"
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
    return VerifiedImage(
        instance_dir=instance_dir,
        root=root,
        config=config,
        manifest=manifest,
        files=expected,
        distributions=distributions,
        measurement=_measurement(config, manifest, signer, len(expected)),
    )
