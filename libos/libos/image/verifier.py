"""Verifying an image before and while it runs: signature, pinned signer, config, every file.

``detente libos run`` re-checks: in the launcher, the signature, the signer
pinned by libos.toml, the image's own files and every dependency file that is
not a Python module (shared libraries, data), before anything of the image
runs; then every module file, of the image and of its dependencies, when it is
imported (libos.verified_imports).
"""

from __future__ import annotations

import importlib.metadata
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from libos.config import CONFIG_NAME, InstanceConfig
from libos.image.builder import load_signer_key
from libos.image.manifest import (
    IMAGE_DIR,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    MODULE_SUFFIXES,
    ROOT_DIR,
    SIGNATURE_NAME,
    SIGNER_PUB_NAME,
    DependencyFile,
    Measurement,
    digest_files,
    measurement_of,
    mrsigner_of,
    python_info,
    site_dirs,
)
from protocols import canonical
from protocols.errors import FormatError, IntegrityError, PolicyError, SignatureError
from protocols.keys import VerifyKey

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
            f"image {image} is signed by MRSIGNER {mrsigner_of(signer)}, but "
            f"{CONFIG_NAME} pins the signer with MRSIGNER {mrsigner_of(expected)}: it "
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
            elif first.endswith(MODULE_SUFFIXES):  # a top-level module file
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


def _parse_manifest(
    instance_dir: Path, manifest: bytes, local: InstanceConfig
) -> tuple[dict[str, Any], InstanceConfig]:
    """The manifest's document and the config it measured (with the local, unmeasured keys)."""
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
    return document, config


def built_measurement(instance_dir: Path) -> Measurement:
    """MRENCLAVE and MRSIGNER of the image built in ``instance_dir`` (what ``run`` starts).

    Read from the signed manifest ``detente libos build`` wrote, after checking
    its signature and that the signer libos.toml pins made it; the image's
    files are checked when it runs (:func:`verify_image`). Unlike
    ``builder.measure``, the current sources play no part: edit a source after
    the build and this still measures the built image.
    """
    instance_dir = Path(instance_dir)
    local = InstanceConfig.load(instance_dir)
    if not (instance_dir / IMAGE_DIR / MANIFEST_NAME).exists():
        raise PolicyError(
            f"no image has been built in {instance_dir} yet: run "
            f"`detente libos build {instance_dir}` first, then measure it"
        )
    manifest, signer = _read_manifest(instance_dir, expected_signer(instance_dir, local))
    document, config = _parse_manifest(instance_dir, manifest, local)
    return measurement_of(config, manifest, signer, document)


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
    document, config = _parse_manifest(instance_dir, manifest, local)
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
        measurement=measurement_of(config, manifest, signer, document),
        dependencies=deps,
        site_dirs=dirs,
    )
