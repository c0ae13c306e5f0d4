"""What an image is: its layout, its manifest's fields, and the identity computed from them.

MRENCLAVE is SHA-256(manifest.json bytes); MRSIGNER is SHA-256(signer raw public
key). The manifest holds no absolute path and no timestamp, so the same sources,
dependency versions and config give the same MRENCLAVE in any directory and on
any machine with the same Python and platform. Shared by libos.image.builder,
which writes manifests, and libos.image.verifier, which checks them.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import platform as _platform
import sys
import sysconfig
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libos.config import InstanceConfig
from protocols.errors import FormatError
from protocols.keys import VerifyKey

# Version 2: dependency distributions measured file by file (version 1 pinned
# only their RECORD).
MANIFEST_VERSION = 2
IMAGE_DIR = "image"
ROOT_DIR = "root"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SIGNER_PUB_NAME = "signer.pub"
MODULE_SUFFIXES = (*importlib.machinery.SOURCE_SUFFIXES, *importlib.machinery.EXTENSION_SUFFIXES)


@dataclass(frozen=True)
class Measurement:
    """An image's identity, as a quote reports it.

    MRENCLAVE and MRSIGNER are 64 lowercase hex characters, as every Detente
    API, document and policy spells them; only the binary quote layout
    (``protocols.quote_layout.ReportBody``) holds the 32 raw bytes.
    """

    mrenclave: str
    mrsigner: str
    backend: str
    debug: bool
    isv_prod_id: int
    isv_svn: int
    file_count: int
    dependency_count: int = 0
    dependency_file_count: int = 0
    dependency_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("mrenclave", "mrsigner"):
            check_measurement_hex(getattr(self, name), name.upper())

    @property
    def simulation(self) -> bool:
        return self.backend == "sim"

    def to_json(self) -> dict[str, Any]:
        return {
            "mrenclave": self.mrenclave,
            "mrsigner": self.mrsigner,
            "backend": self.backend,
            "debug": self.debug,
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
        }


def check_measurement_hex(value: object, what: str = "MRENCLAVE") -> str:
    """``value`` if it is a 32-byte measurement as 64 lowercase hex characters, else FormatError."""
    if not (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    ):
        raise FormatError(f"{what} must be 64 lowercase hex characters, got {value!r}")
    return value


def mrsigner_of(key: VerifyKey) -> str:
    """MRSIGNER of an image signer: SHA-256 of its raw public key, as hex."""
    return hashlib.sha256(key.raw).hexdigest()


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
        return self.path.endswith(MODULE_SUFFIXES)


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


def measurement_of(
    config: InstanceConfig, manifest: bytes, signer: VerifyKey, document: dict[str, Any]
) -> Measurement:
    """The identity of the image whose manifest is ``manifest`` (parsed: ``document``)."""
    dependency_files = [f for d in document["distributions"] for f in d["files"]]
    return Measurement(
        mrenclave=hashlib.sha256(manifest).hexdigest(),
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
