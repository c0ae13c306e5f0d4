"""Encrypted mounts in real enclave processes started by `detente libos run`.

The mounts come from the image's measured config, so changing one means a new
MRENCLAVE; under the mrenclave policy that new image cannot open the old data,
under the mrsigner policy it can.
"""

from __future__ import annotations

import json
from pathlib import Path

from libos_testkit import run_cli, write_config

from libos import image

CANARY = b"CANARY-efs-e2e-4d1c " * 200
MOUNTS = [
    {"path": "/data", "host": "data", "key_policy": "mrenclave"},
    {"path": "/keep", "host": "keep", "key_policy": "mrsigner"},
]


def enclave(instance: Path, *args: str) -> dict[str, object]:
    result = run_cli("run", str(instance), *args)
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


def test_enclave_writes_and_reads_its_mounts_across_restarts_and_upgrades(
    probe_copy: Path,
) -> None:
    write_config(probe_copy, mounts=MOUNTS)
    first = image.build(probe_copy)
    out = enclave(
        probe_copy,
        "--efs-write", "/data", "jobs/job-1/model.json", CANARY.hex(),
        "--efs-write", "/keep", "identity.key", CANARY.hex(),
    )  # fmt: skip
    assert out["mrenclave"] == first.mrenclave
    again = enclave(probe_copy, "--efs-read", "/data", "jobs/job-1/model.json")
    assert again["efs_read"] == CANARY.hex()

    # The host sees neither the content nor the names.
    for mount in ("data", "keep"):
        for path in (probe_copy / mount).rglob("*"):
            assert "job" not in path.name and "identity" not in path.name
            assert b"CANARY" not in path.read_bytes()

    # A new release by the same signer (isv_svn is measured: new MRENCLAVE).
    write_config(probe_copy, isv_svn=2)
    upgraded = image.build(probe_copy)
    assert upgraded.mrenclave != first.mrenclave and upgraded.mrsigner == first.mrsigner
    kept = enclave(probe_copy, "--efs-read", "/keep", "identity.key")
    assert kept["efs_read"] == CANARY.hex()
    refused = run_cli("run", str(probe_copy), "--efs-read", "/data", "jobs/job-1/model.json")
    assert refused.returncode != 0
    assert "written under another key: by another enclave (mrenclave policy" in refused.stderr
    assert "CANARY" not in refused.stderr + refused.stdout


def test_unconfigured_mount_is_refused(probe_copy: Path) -> None:
    write_config(probe_copy, mounts=MOUNTS[:1])
    image.build(probe_copy)
    result = run_cli("run", str(probe_copy), "--efs-read", "/keep", "x")
    assert result.returncode != 0
    assert "no encrypted mount at '/keep' (configured: /data)" in result.stderr
