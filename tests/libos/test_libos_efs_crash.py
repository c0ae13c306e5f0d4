"""Crashes in the middle of an EFS write: a real process dies (os._exit) at a chosen point.

Nothing of the dying process runs after that point (no except, no finally), as
in a power cut; then a fresh enclave opens the mount.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from libos.config import Mount
from libos.image import Measurement
from libos.runtime import SimRuntime
from libos.sim import SimPlatform
from protocols.errors import IntegrityError

REPO = Path(__file__).resolve().parents[2]
ENCLAVE = hashlib.sha256(b"efs crash test enclave").hexdigest()
SIGNER = hashlib.sha256(b"efs crash test signer").hexdigest()
MOUNTS = (Mount("/data", "data", "mrenclave"),)
OLD = b"version 1 " * 30000
NEW = b"version 2 " * 30000
CRASHED = 17

# The enclave process: mounts /data, arranges to die at WHERE, writes NEW.
CHILD = r"""
import os, sys
from pathlib import Path
import libos.counter as counter
import libos.efs.index as efs_index
from libos.config import Mount
from libos.image import Measurement
from libos.runtime import SimRuntime
from libos.sim import SimPlatform

base, where = Path(sys.argv[1]), sys.argv[2]
enclave, signer = sys.argv[3], sys.argv[4]
new = b"version 2 " * 30000  # NEW of the test
rt = SimRuntime(
    Measurement(enclave, signer, "sim", False, 1, 1, 0), base / "instance",
    SimPlatform(base / "platform"), [Mount("/data", "data", "mrenclave")],
)
fs = rt.mount("/data")

def die(*args, **kwargs):
    os._exit(17)

if where == "mid-stream":
    writer = fs.open("model", "wb")
    writer.write(new[: len(new) // 2])
    die()
if where == "before-counter":
    counter.SimCounter.increment = die
elif where == "before-index-write":
    efs_index.MountIndex._write_index = die
elif where == "before-index-rename":
    real = efs_index.replace_durably
    def replace(source, target):
        if target.name == efs_index.INDEX_NAME:
            die()
        real(source, target)
    efs_index.replace_durably = replace
fs.write_bytes("model", new)
"""


def runtime_for(base: Path) -> SimRuntime:
    measurement = Measurement(ENCLAVE, SIGNER, "sim", False, 1, 1, 0)
    return SimRuntime(measurement, base / "instance", SimPlatform(base / "platform"), MOUNTS)


def crash_while_writing(base: Path, where: str) -> None:
    runtime_for(base).mount("/data").write_bytes("model", OLD)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(base), where, ENCLAVE, SIGNER],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == CRASHED, result.stderr


def host_files(base: Path) -> list[str]:
    return sorted(p.name for p in (base / "instance" / "data").iterdir())


@pytest.mark.parametrize("where", ["mid-stream", "before-counter"])
def test_crash_before_the_commit_leaves_the_old_version(tmp_path: Path, where: str) -> None:
    crash_while_writing(tmp_path, where)
    # The dead writer left a staged file (mid-stream) or a placed blob (before
    # the counter moved): the host directory has more than the index refers to.
    assert (
        len([n for n in host_files(tmp_path) if re.fullmatch(r"[0-9a-f]{40}|.*\.staged", n)]) == 2
    )
    fs = runtime_for(tmp_path).mount("/data")
    assert fs.read_bytes("model") == OLD
    assert fs.version == 1
    # Opening the mount removed what the crash left behind.
    assert len([n for n in host_files(tmp_path) if re.fullmatch(r"[0-9a-f]{40}", n)]) == 1
    assert not [n for n in host_files(tmp_path) if n.endswith(".staged") or n == "index.next"]
    fs.write_bytes("model", NEW)
    assert runtime_for(tmp_path).mount("/data").read_bytes("model") == NEW


def test_crash_after_the_index_was_staged_rolls_forward(tmp_path: Path) -> None:
    crash_while_writing(tmp_path, "before-index-rename")
    assert "index.next" in host_files(tmp_path)
    fs = runtime_for(tmp_path).mount("/data")
    # The counter had moved and the new index was complete: the commit is finished.
    assert fs.read_bytes("model") == NEW
    assert fs.version == 2
    assert "index.next" not in host_files(tmp_path)
    assert len([n for n in host_files(tmp_path) if re.fullmatch(r"[0-9a-f]{40}", n)]) == 1


def test_crash_between_counter_and_index_is_refused_not_guessed(tmp_path: Path) -> None:
    # The narrow window the design gives up (docs/libos.md): the counter moved,
    # no new index was written. The enclave cannot tell this from a host that
    # put back the old index, so it refuses rather than accept a possible rollback.
    crash_while_writing(tmp_path, "before-index-write")
    with pytest.raises(IntegrityError) as info:
        runtime_for(tmp_path).mount("/data")
    message = str(info.value)
    assert "was rolled back: its index is version 1 but the platform counter is at 2" in message
    assert "died between a counter increment and the index write" in message
