"""Building an image: signer keys, init, the sources and distributions it holds, measure, build.

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
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from libos.config import CONFIG_NAME, InstanceConfig, render_default
from libos.image.manifest import (
    IMAGE_DIR,
    MANIFEST_NAME,
    ROOT_DIR,
    SIGNATURE_NAME,
    SIGNER_PUB_NAME,
    Measurement,
    digest_files,
    manifest_document,
    measurement_of,
)
from protocols import canonical
from protocols.errors import FormatError, IntegrityError, PolicyError
from protocols.keys import SigningKey, VerifyKey, write_secret_file

_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")
# Written by the installer, not part of the wheel: they differ between pip and
# other installers of the same wheel, and nothing imports them.
_INSTALLER_FILES = frozenset(
    {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "RECORD.jws", "RECORD.p7s"}
)


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


# --- measure and build ---------------------------------------------------------


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
    return measurement_of(
        config, canonical.dumps(document), _signer_public_key(instance_dir, config), document
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
    return measurement_of(config, manifest, key.verify_key, document)
