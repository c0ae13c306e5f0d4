"""Interrupted uploads, kept to be resumed: the sealed spool and what the upload was.

Once a data set is sealed and its manifest signed, the spool file becomes a
*pending upload*: renamed ``pending-DATASET.sealed`` in the spool folder
(0700; the file stays 0600) beside ``pending-DATASET.json``, the state — the
signed manifest, where the table came from (path, size and modification
time), and what the upload reports at its end. It is removed when the
coordinator confirms the data set, and kept when sending fails (a cut
network, a killed process, a coordinator restart), so that
`detente party upload FILE --resume` sends the rest of the very same
ciphertext from the last byte the coordinator acknowledged. The spool holds
only ciphertext under a key wrapped to the enclave; the party cannot open it
either.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocols import stream
from protocols.durable import write_atomic
from protocols.errors import DatasetError

_PENDING = "pending-"


@dataclass
class PendingUpload:
    """A sealed data set whose upload is not confirmed yet (see the module's docstring)."""

    dataset_id: str
    manifest: bytes
    size: int  # ciphertext bytes (the manifest's ciphertext_size)
    source: str  # the table's resolved path
    source_size: int  # -1: the table was given in memory (nothing to compare)
    source_mtime_ns: int
    rows: int
    columns: int
    simulation: bool
    chunk_size: int
    plaintext_size: int
    categorical: list[str] = field(default_factory=list)
    label: str | None = None
    marks: list[tuple[int, int]] = field(default_factory=list)  # (plaintext bytes, rows)
    folder: Path = Path()

    @property
    def spool_path(self) -> Path:
        return self.folder / f"{_PENDING}{self.dataset_id}.sealed"

    @property
    def state_path(self) -> Path:
        return self.folder / f"{_PENDING}{self.dataset_id}.json"

    def save(self) -> None:
        doc = asdict(self)
        doc.pop("folder")
        doc["manifest"] = base64.b64encode(self.manifest).decode()
        write_atomic(self.state_path, json.dumps(doc).encode(), mode=0o600)

    def remove(self) -> None:
        """Forget the upload: its state first (a spool without state is removed later)."""
        self.state_path.unlink(missing_ok=True)
        self.spool_path.unlink(missing_ok=True)

    def plaintext_within(self, ciphertext_bytes: int) -> int:
        """Plaintext bytes the first ``ciphertext_bytes`` of the spool carry whole."""
        if ciphertext_bytes >= self.size:
            return self.plaintext_size
        sealed_chunk = self.chunk_size + stream.TAG_SIZE
        chunks = max(0, ciphertext_bytes - stream.HEADER.size) // sealed_chunk
        return min(chunks * self.chunk_size, self.plaintext_size)

    def rows_within(self, ciphertext_bytes: int) -> int:
        """Rows the first ``ciphertext_bytes`` of the spool carry whole."""
        if ciphertext_bytes >= self.size:
            return self.rows
        whole = self.plaintext_within(ciphertext_bytes)
        done = 0
        for plaintext, rows in self.marks:
            if plaintext > whole:
                break
            done = rows
        return done

    def intact(self) -> bool:
        """Whether the spool still hashes to the manifest's ciphertext digest (read whole)."""
        from protocols.documents import DatasetManifest
        from protocols.statements import Envelope

        manifest = DatasetManifest.verify(Envelope.from_bytes(self.manifest, "dataset manifest"))
        digest = hashlib.sha256()
        try:
            with self.spool_path.open("rb") as spool:
                while piece := spool.read(stream.CHUNK_SIZE):
                    digest.update(piece)
        except OSError:
            return False
        return digest.hexdigest() == manifest.ciphertext_sha256

    def check(self) -> None:
        """Refuse to resume if the table changed since it was sealed or the spool is not
        whole: the rest would not be what the manifest signs."""
        try:
            now = os.stat(self.source)
        except OSError:
            now = None
        if self.source_size < 0:
            pass  # a table given in memory: only the spool counts
        elif now is None or (now.st_size, now.st_mtime_ns) != (
            self.source_size,
            self.source_mtime_ns,
        ):
            raise DatasetError(
                f"{self.source} changed since it was sealed for data set {self.dataset_id!r}: "
                "the interrupted upload would send its old content; upload the file again "
                "without --resume"
            )
        try:
            held = self.spool_path.stat().st_size
        except OSError:
            held = -1
        if held != self.size:
            raise DatasetError(
                f"the sealed copy of data set {self.dataset_id!r} ({self.spool_path}) is "
                f"missing or no longer {self.size} bytes long: upload the file again without "
                "--resume"
            )


def _load(path: Path) -> PendingUpload | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        doc["manifest"] = base64.b64decode(doc["manifest"])
        doc["marks"] = [tuple(m) for m in doc.get("marks", [])]
        return PendingUpload(**doc, folder=path.parent)
    except (OSError, ValueError, TypeError, KeyError):
        return None  # unreadable state: not resumable


def pending_uploads(folder: Path) -> list[PendingUpload]:
    """The pending uploads in a spool folder, oldest first (unreadable states skipped)."""
    if not folder.is_dir():
        return []
    found = [_load(p) for p in sorted(folder.glob(f"{_PENDING}*.json"))]
    return [p for p in found if p is not None]


def find_pending(folder: Path, path: Path, dataset_id: str | None) -> PendingUpload:
    """The interrupted upload of the table at ``path`` (and with ``dataset_id``, if given)."""
    source = str(Path(path).resolve())
    found = [
        p
        for p in pending_uploads(folder)
        if p.source == source and (dataset_id is None or p.dataset_id == dataset_id)
    ]
    if not found:
        which = f" as data set {dataset_id!r}" if dataset_id else ""
        raise DatasetError(
            f"no interrupted upload of {path}{which} to resume in this party's home: upload "
            "it without --resume"
        )
    if len(found) > 1:
        ids = ", ".join(p.dataset_id for p in found)
        raise DatasetError(
            f"{path} has several interrupted uploads ({ids}): choose one with --dataset-id"
        )
    return found[0]


def keep(folder: Path, spool: Path, pending: PendingUpload) -> PendingUpload:
    """Make the sealed spool file ``spool`` the pending upload ``pending`` (state first,
    then the spool moves: a crash between leaves a state whose check fails cleanly)."""
    pending.folder = folder
    pending.save()
    os.replace(spool, pending.spool_path)
    return pending
