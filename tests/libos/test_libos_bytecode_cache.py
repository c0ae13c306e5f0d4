"""The enclave's bytecode cache: used when authentic, ignored (and rewritten) when not."""

from __future__ import annotations

import json
import marshal
from pathlib import Path

from libos_testkit import run_cli

from libos import enclave_start
from libos.verified_imports import BytecodeCache


def probe(instance: Path) -> dict[str, object]:
    result = run_cli("run", str(instance))
    assert result.returncode == 0, result.stderr
    assert "PLANTED" not in result.stdout + result.stderr
    return json.loads(result.stdout)


def test_planted_bytecode_is_never_run(probe_copy: Path) -> None:
    cache = probe_copy / enclave_start.CACHE_DIR / enclave_start.BYTECODE_DIR
    probe(probe_copy)
    entries = sorted(cache.iterdir())
    assert entries, "the first start fills the cache"
    # The host rewrites every entry with its own code, keeping the tags; and
    # plants an entry under a name of its choosing.
    planted = marshal.dumps(compile("print('PLANTED')", "x.py", "exec"))
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:32] + planted)
    (cache / ("0" * 64)).write_bytes(bytes(32) + planted)
    out = probe(probe_copy)
    assert out["backend"] == "sim"
    # Each refused entry was recompiled from its verified source and rewritten.
    assert all(not e.read_bytes().endswith(planted) for e in entries)


def test_cache_key_binds_the_secret_and_the_manifest() -> None:
    key = BytecodeCache.key_for(b"s" * 32, b"manifest")
    assert key != BytecodeCache.key_for(b"t" * 32, b"manifest")
    assert key != BytecodeCache.key_for(b"s" * 32, b"manifest2")
    shown = repr(BytecodeCache(Path("/x"), key))
    assert "key not shown" in shown and key.hex() not in shown
