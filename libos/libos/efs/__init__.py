"""The encrypted file system: files the host stores but can neither read, name nor alter.

A mount is a host directory. The enclave sees paths and plaintext; the host
sees only opaque file names, ciphertext, sizes and access times::

    fs = runtime.current().mount("/data")
    fs.write_bytes("models/m1.json", data)      # atomic: all of it or the old file
    fs.read_bytes("models/m1.json")             # IntegrityError on any change
    with fs.open("checkpoints/round-40.bin", "wb") as f: ...   # streaming, for large files

One module per job, each with the part of the design it implements:

- ``keys``: the mount key (HKDF from the sealing secret under the key policy),
  the per-version file keys, file ids and host names;
- ``format``: the blob layout of one version (header, AES-256-GCM blocks) and
  the RFC 6962 Merkle tree over the block tags;
- ``index``: the encrypted index, commits (counter first, then the index) and
  the rollback check against the platform's monotonic counter;
- ``reader`` and ``writer``: verified reads, and atomic staged writes;
- ``fs``: :class:`EncryptedFS`, the file system operations on in-enclave paths.
"""

from libos.efs.format import DEFAULT_BLOCK_SIZE, HEADER_SIZE, TAG_SIZE, blob_size, merkle_root
from libos.efs.fs import (
    EfsFileNotFoundError,
    EfsIsADirectoryError,
    EfsNotADirectoryError,
    EncryptedFS,
    FileInfo,
)
from libos.efs.keys import MountKey
from libos.efs.reader import EncryptedFileReader
from libos.efs.writer import EncryptedFileWriter

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "HEADER_SIZE",
    "TAG_SIZE",
    "EfsFileNotFoundError",
    "EfsIsADirectoryError",
    "EfsNotADirectoryError",
    "EncryptedFS",
    "EncryptedFileReader",
    "EncryptedFileWriter",
    "FileInfo",
    "MountKey",
    "blob_size",
    "merkle_root",
]
