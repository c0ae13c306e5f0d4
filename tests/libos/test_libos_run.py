"""Runs of real enclave processes (SIMULATION backend) started the way users start them."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from libos_testkit import make_instance, run_cli, write_config

from libos import image, launcher, runtime
from libos.sim import SimPlatform
from libos.verified_imports import VerifyingFinder
from protocols import quote_verify
from protocols.errors import IntegrityError

REPORT_DATA = bytes(range(64))


def probe(instance: Path, *args: str) -> tuple[dict[str, object], str]:
    result = run_cli("run", str(instance), *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_probe_reports_the_built_measurement(
    built_probe: tuple[Path, image.Measurement],
) -> None:
    instance, measurement = built_probe
    out, stderr = probe(instance, "--flag", "value", "--quote", REPORT_DATA.hex())
    assert out["mrenclave"] == measurement.mrenclave
    assert out["mrsigner"] == measurement.mrsigner
    assert out["backend"] == "sim" and out["simulation"] is True and out["debug"] is False
    assert out["argv"] == ["--flag", "value", "--quote", REPORT_DATA.hex()]
    # The enclave imported the image's copy of libos, not the repository's.
    root = (instance / "image" / "root").resolve()
    assert Path(str(out["libos_file"])).resolve().is_relative_to(root)
    assert "SIMULATION backend: no hardware protection" in stderr
    assert Path(str(out["sealed_dir"])).is_dir()
    assert not list(root.rglob("__pycache__"))  # no bytecode written into the image

    platform = SimPlatform(instance / "platform")
    assert out["simulation_root_sha256"] == platform.root_fingerprint
    verified = quote_verify.verify_quote(
        base64.b64decode(str(out["quote"])), [platform.root_certificate]
    )
    # The quote's binary layout holds the raw bytes of the hex measurement.
    assert verified.report.mr_enclave.hex() == measurement.mrenclave
    assert verified.report.mr_signer.hex() == measurement.mrsigner
    assert verified.report.report_data == REPORT_DATA
    assert not verified.report.debug
    assert (verified.report.isv_prod_id, verified.report.isv_svn) == (1, 1)


def test_exit_code_is_forwarded(built_probe: tuple[Path, image.Measurement]) -> None:
    instance, _ = built_probe
    assert run_cli("run", str(instance), "--exit", "5").returncode == 5
    assert launcher.run(instance, ["--exit", "4"]) == 4


def test_debug_image_sets_the_debug_bit(tmp_path: Path) -> None:
    instance = make_instance(tmp_path / "dbg", debug=True)
    measurement = image.build(instance)
    out, _ = probe(instance, "--quote", REPORT_DATA.hex())
    assert out["debug"] is True
    platform = SimPlatform(instance / "platform")
    verified = quote_verify.verify_quote(
        base64.b64decode(str(out["quote"])), [platform.root_certificate]
    )
    assert verified.report.debug
    assert verified.report.mr_enclave.hex() == measurement.mrenclave


def refused(instance: Path) -> str:
    result = run_cli("run", str(instance))
    assert result.returncode == 70, (result.stdout, result.stderr)
    assert result.stdout == ""  # the entry point never ran
    return result.stderr


def test_tampered_file_is_refused_by_name(probe_copy: Path) -> None:
    target = probe_copy / "image" / "root" / "libos_test_probes" / "probe.py"
    target.write_text(target.read_text() + "\n# changed\n")
    assert "'libos_test_probes/probe.py' differs" in refused(probe_copy)


def test_extra_file_is_refused_by_name(probe_copy: Path) -> None:
    (probe_copy / "image" / "root" / "protocols" / "backdoor.py").write_text("x = 1\n")
    assert "'protocols/backdoor.py'" in refused(probe_copy)
    assert "extra" in refused(probe_copy)


def test_planted_bytecode_is_refused(probe_copy: Path) -> None:
    cache = probe_copy / "image" / "root" / "libos_test_probes" / "__pycache__"
    cache.mkdir()
    (cache / "probe.cpython-311.pyc").write_bytes(b"\x00" * 32)
    assert "libos_test_probes/__pycache__/probe.cpython-311.pyc" in refused(probe_copy)


def test_missing_file_is_refused_by_name(probe_copy: Path) -> None:
    (probe_copy / "image" / "root" / "protocols" / "hpke.py").unlink()
    assert "'protocols/hpke.py' is missing" in refused(probe_copy)


def test_tampered_manifest_is_refused(probe_copy: Path) -> None:
    manifest = probe_copy / "image" / "manifest.json"
    data = manifest.read_bytes().replace(b'"debug":false', b'"debug":true ')
    manifest.write_bytes(data)
    assert "signature" in refused(probe_copy)


def test_config_changed_after_build_is_refused(probe_copy: Path) -> None:
    write_config(probe_copy, isv_svn=9)
    stderr = refused(probe_copy)
    assert "'isv_svn'" in stderr and "detente libos build" in stderr


def test_unbuilt_instance_is_refused(tmp_path: Path) -> None:
    instance = make_instance(tmp_path / "a")
    assert "detente libos build" in refused(instance)


def test_current_outside_an_enclave_is_a_clear_error() -> None:
    with pytest.raises(runtime.NotInEnclaveError, match="detente libos run"):
        runtime.current()


def test_verifying_finder_rechecks_files_at_import(tmp_path: Path) -> None:
    pkg = tmp_path / "libos_fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("VALUE = 1\n")
    import hashlib

    files = {
        "libos_fakepkg/__init__.py": hashlib.sha256(b"").hexdigest(),
        "libos_fakepkg/mod.py": hashlib.sha256(b"VALUE = 2\n").hexdigest(),
    }
    finder = VerifyingFinder(tmp_path, ["libos_fakepkg"])
    finder.bind(files, ["libos_fakepkg"], None, None)
    spec = finder.find_spec("libos_fakepkg.mod")
    assert spec is not None and spec.loader is not None
    with pytest.raises(IntegrityError, match=r"libos_fakepkg/mod\.py"):
        spec.loader.get_code("libos_fakepkg.mod")  # type: ignore[attr-defined]
    with pytest.raises(ModuleNotFoundError, match="not in the enclave image"):
        finder.find_spec("libos_fakepkg.other")
    assert finder.find_spec("json") is None


def test_run_uses_the_image_not_the_repository(probe_copy: Path, tmp_path: Path) -> None:
    # Moving the instance keeps it runnable: nothing refers to the build location.
    moved = tmp_path / "moved"
    shutil.move(probe_copy, moved)
    out, _ = probe(moved)
    assert Path(str(out["libos_file"])).resolve().is_relative_to(moved.resolve())
