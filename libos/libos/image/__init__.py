"""Enclave images: init, build, measure and verify (docs/architecture.md, flows).

An image is ``<DIR>/image/``::

    root/<package>/...   copies of the configured in-repo packages
    manifest.json        canonical JSON (protocols.canonical) describing everything loaded
    manifest.sig         Ed25519 signature by the image signer over manifest.json's bytes
    signer.pub           the signer's raw public key, hex

``manifest`` holds the layout and the identity (MRENCLAVE, MRSIGNER) computed
from a manifest, ``builder`` writes and signs images, ``verifier`` checks them
before and while they run.
"""

from libos.image.builder import (
    build,
    init,
    load_signer_key,
    measure,
    measure_distributions,
    package_dir,
    resolve_distributions,
    source_files,
    write_signer_key,
)
from libos.image.manifest import (
    IMAGE_DIR,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    ROOT_DIR,
    SIGNATURE_NAME,
    SIGNER_PUB_NAME,
    DependencyFile,
    Measurement,
    digest_file,
    digest_files,
    mrsigner_of,
    python_info,
    site_dirs,
)
from libos.image.verifier import (
    DependencyCheck,
    VerifiedImage,
    built_measurement,
    check_dependency_files,
    check_distributions,
    check_files,
    expected_signer,
    locate_dependency,
    top_level_modules,
    verify_image,
)

__all__ = [
    "IMAGE_DIR",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "ROOT_DIR",
    "SIGNATURE_NAME",
    "SIGNER_PUB_NAME",
    "DependencyCheck",
    "DependencyFile",
    "Measurement",
    "VerifiedImage",
    "build",
    "built_measurement",
    "check_dependency_files",
    "check_distributions",
    "check_files",
    "digest_file",
    "digest_files",
    "expected_signer",
    "init",
    "load_signer_key",
    "locate_dependency",
    "measure",
    "measure_distributions",
    "mrsigner_of",
    "package_dir",
    "python_info",
    "resolve_distributions",
    "site_dirs",
    "source_files",
    "top_level_modules",
    "verify_image",
    "write_signer_key",
]
