"""The gramine backend: the exported manifest, and GramineRuntime against a FAKE /dev/attestation.

There is no SGX hardware or Gramine here. ``fake_dev_attestation`` builds a
directory laid out like Gramine's ``/dev/attestation`` (attestation_type,
user_report_data, quote, keys/_sgx_mrenclave, keys/_sgx_mrsigner) whose
``quote`` is a FIFO served by a thread: like Gramine, it answers a read of
``quote`` with a quote over the bytes last written to ``user_report_data``. Its
quotes are signed by a SIMULATION platform, not by Intel's quoting enclave.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from libos_testkit import make_instance, run_cli
from typer.testing import CliRunner

from libos import gramine, image
from libos.cli import app
from libos.gramine import GramineRuntime
from libos.runtime import (
    FLAG_INIT,
    FLAG_MODE64BIT,
    MountUnavailableError,
    NotInEnclaveError,
    Runtime,
)
from libos.sim import SimPlatform
from protocols import quote_layout, quote_verify
from protocols.errors import AttestationError, FormatError, IntegrityError, PolicyError

FAKE_MRENCLAVE = hashlib.sha256(b"FAKE gramine enclave").digest()
FAKE_MRSIGNER = hashlib.sha256(b"FAKE gramine signer").digest()


class FakeDevAttestation:
    """A FAKE of Gramine's /dev/attestation, served by a thread. Not SGX; no protection.

    ``user_report_data`` and ``quote`` are FIFOs, so the two sides take strict
    turns as with Gramine's pseudo-files: the fake reads the report data the
    runtime writes, then answers the runtime's read of ``quote``.
    """

    def __init__(self, directory: Path, platform: SimPlatform, mrenclave: bytes) -> None:
        self.directory = directory
        self.platform = platform
        self.mrenclave = mrenclave
        self.stale = False  # answer with a quote over other report data
        self.last_report_data: bytes | None = None
        (directory / "keys").mkdir(parents=True)
        (directory / "attestation_type").write_text("dcap")
        (directory / "keys" / "_sgx_mrenclave").write_bytes(os.urandom(16))
        (directory / "keys" / "_sgx_mrsigner").write_bytes(os.urandom(16))
        self.report_data_path = directory / "user_report_data"
        self.quote_path = directory / "quote"
        os.mkfifo(self.report_data_path)
        os.mkfifo(self.quote_path)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name="fake-dev-attestation", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        while True:
            with open(self.report_data_path, "rb") as src:  # blocks until the runtime writes
                data = src.read()
            if self._stop.is_set():
                return
            self.last_report_data = data
            report = quote_layout.ReportBody(
                cpu_svn=bytes(16),
                misc_select=0,
                attributes=(FLAG_INIT | FLAG_MODE64BIT).to_bytes(8, "little")
                + (3).to_bytes(8, "little"),
                mr_enclave=self.mrenclave,
                mr_signer=FAKE_MRSIGNER,
                isv_prod_id=7,
                isv_svn=3,
                report_data=bytes(64) if self.stale else data,
            )
            with open(self.quote_path, "wb") as out:  # blocks until the runtime reads
                out.write(self.platform.quote(report))

    def close(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + 5
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:  # succeeds once the thread waits for report data; it then reads EOF
                fd = os.open(self.report_data_path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: it is not waiting yet
                time.sleep(0.01)
                continue
            os.close(fd)
            self._thread.join(timeout=1)
        assert not self._thread.is_alive(), "the fake /dev/attestation thread did not stop"


@pytest.fixture
def fake_dev_attestation(tmp_path: Path) -> Iterator[FakeDevAttestation]:
    fake = FakeDevAttestation(
        tmp_path / "fake-dev-attestation", SimPlatform(tmp_path / "platform"), FAKE_MRENCLAVE
    )
    try:
        yield fake
    finally:
        fake.close()


def test_identity_comes_from_the_enclaves_own_quote(
    fake_dev_attestation: FakeDevAttestation, tmp_path: Path
) -> None:
    rt = GramineRuntime(tmp_path / "instance", fake_dev_attestation.directory)
    assert isinstance(rt, Runtime)  # the one runtime type enclave code is written against
    assert rt.mrenclave == FAKE_MRENCLAVE.hex() and rt.mrsigner == FAKE_MRSIGNER.hex()
    assert (rt.isv_prod_id, rt.isv_svn) == (7, 3)
    assert rt.backend == "gramine" and rt.simulation is False and rt.debug is False
    assert rt.measurement.mrenclave == FAKE_MRENCLAVE.hex()
    assert rt.root_fingerprint == quote_verify.certificate_fingerprint(
        quote_verify.intel_sgx_root()
    )
    assert rt.sealed_dir.is_dir() and rt.log_dir.is_dir()
    assert FAKE_MRENCLAVE.hex()[:16] in repr(rt)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(rt)


def test_quotes_carry_the_report_data_written_to_the_device(
    fake_dev_attestation: FakeDevAttestation, tmp_path: Path
) -> None:
    rt = GramineRuntime(tmp_path / "instance", fake_dev_attestation.directory)
    report_data = bytes(range(64))
    quote = rt.quote(report_data)
    assert fake_dev_attestation.last_report_data == report_data
    verified = quote_verify.verify_quote(quote, [fake_dev_attestation.platform.root_certificate])
    assert verified.report.report_data == report_data
    assert verified.report.mr_enclave == FAKE_MRENCLAVE
    assert rt.report(bytes(64)).mr_signer == FAKE_MRSIGNER
    with pytest.raises(FormatError, match="64 bytes"):
        rt.quote(b"short")


def test_a_stale_quote_is_refused(fake_dev_attestation: FakeDevAttestation, tmp_path: Path) -> None:
    rt = GramineRuntime(tmp_path / "instance", fake_dev_attestation.directory)
    fake_dev_attestation.stale = True
    with pytest.raises(AttestationError, match="other report data"):
        rt.quote(b"\x01" * 64)


def test_a_quote_of_another_enclave_is_refused(
    fake_dev_attestation: FakeDevAttestation, tmp_path: Path
) -> None:
    rt = GramineRuntime(tmp_path / "instance", fake_dev_attestation.directory)
    fake_dev_attestation.mrenclave = hashlib.sha256(b"FAKE other").digest()
    with pytest.raises(AttestationError, match="another enclave"):
        rt.quote(b"\x02" * 64)


def test_sealing_uses_the_devices_keys(
    fake_dev_attestation: FakeDevAttestation, tmp_path: Path
) -> None:
    rt = GramineRuntime(tmp_path / "instance", fake_dev_attestation.directory)
    blob = rt.seal(b"model bytes", "label")
    assert rt.unseal(blob, "label") == b"model bytes"
    by_signer = rt.seal(b"across versions", "label", policy="mrsigner")
    assert rt.unseal(by_signer, "label", policy="mrsigner") == b"across versions"
    assert rt.sealing_key("mrenclave") != rt.sealing_key("mrsigner")
    # Another platform (another sealing key on the device) cannot open it.
    keys = fake_dev_attestation.directory / "keys"
    (keys / "_sgx_mrenclave").write_bytes(os.urandom(16))
    with pytest.raises(IntegrityError, match="sealed by another enclave"):
        rt.unseal(blob, "label")
    (keys / "_sgx_mrenclave").write_bytes(b"short")
    with pytest.raises(FormatError, match="16-byte key"):
        rt.seal(b"x", "label")


def test_mounts_are_refused_with_the_reason(
    fake_dev_attestation: FakeDevAttestation, tmp_path: Path
) -> None:
    from libos.config import Mount

    rt = GramineRuntime(
        tmp_path / "instance", fake_dev_attestation.directory, [Mount("/data", "data", "mrenclave")]
    )
    assert [m.path for m in rt.mounts] == ["/data"]
    with pytest.raises(MountUnavailableError, match="monotonic") as refused:
        rt.mount("/data")
    assert isinstance(refused.value, PolicyError)
    with pytest.raises(PolicyError, match="no encrypted mount at '/other'"):
        rt.mount("/other")
    # The one rule for the enclave's own files: without a usable mount, do without.
    assert rt.default_mount() is None


def test_outside_gramine_or_without_dcap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotInEnclaveError, match="gramine-sgx"):
        GramineRuntime(tmp_path / "instance", tmp_path / "no-such-device")
    device = tmp_path / "device"
    device.mkdir()
    (device / "attestation_type").write_text("none")
    with pytest.raises(AttestationError, match="dcap"):
        GramineRuntime(tmp_path / "instance", device)


# --- the exported manifest -----------------------------------------------------


@pytest.fixture(scope="module")
def gramine_instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    instance = make_instance(
        tmp_path_factory.mktemp("gramine") / "instance",
        backend="gramine",
        resources={"memory_mb": 3000, "threads": 6, "processes": 2},
        env_allow=["LANG", "LC_*", "TZ"],
    )
    image.build(instance)
    return instance


def test_export_is_valid_toml_with_every_required_key(
    gramine_instance: Path, tmp_path: Path
) -> None:
    path = gramine.export(gramine_instance, tmp_path / "out")
    doc = tomllib.loads(path.read_text())
    instance = str(gramine_instance.resolve())
    assert doc["loader"]["entrypoint"]["uri"] == "file:{{ gramine.libos }}"
    assert Path(doc["libos"]["entrypoint"]).name.startswith("python")
    argv = ["-B", "-P", "-S", "-m", "libos.enclave_start", instance, "--"]
    assert doc["loader"]["argv"][1:] == argv
    assert doc["sgx"]["debug"] is False
    assert doc["sgx"]["remote_attestation"] == "dcap"
    assert doc["sgx"]["enclave_size"] == "4G"  # 3000 MiB rounded up to a power of two
    assert doc["sgx"]["max_threads"] == 6 + gramine.THREAD_HEADROOM
    assert (doc["sgx"]["isvprodid"], doc["sgx"]["isvsvn"]) == (1, 1)

    env = doc["loader"]["env"]
    assert env["OMP_NUM_THREADS"] == "6"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(gramine_instance.resolve() / "image/root")
    passed = {k for k, v in env.items() if v == {"passthrough": True}}
    assert {"LANG", "TZ", "LC_ALL", "LC_CTYPE"} <= passed
    assert not any(k.startswith(("AWS", "DETENTE", "PATH")) for k in passed)

    encrypted = [m for m in doc["fs"]["mounts"] if m.get("type") == "encrypted"]
    assert encrypted == [
        {
            "type": "encrypted",
            "path": f"{instance}/data",
            "uri": f"file:{instance}/data",
            "key_name": "_sgx_mrenclave",
        }
    ]

    # Every file of the image manifest is a trusted file with its SHA-256.
    trusted = {
        e["uri"].removeprefix("file:"): e["sha256"]
        for e in doc["sgx"]["trusted_files"]
        if isinstance(e, dict)
    }
    manifest = json.loads((gramine_instance / "image" / "manifest.json").read_bytes())
    for f in manifest["files"]:
        assert trusted[f"{instance}/image/root/{f['path']}"] == f["sha256"]
    site = image.site_dirs()
    for dist in manifest["distributions"]:
        for f in dist["files"]:
            assert trusted[str(site[0] / f["path"])] == f["sha256"]
    manifest_bytes = (gramine_instance / "image" / "manifest.json").read_bytes()
    assert trusted[f"{instance}/image/manifest.json"] == hashlib.sha256(manifest_bytes).hexdigest()
    strings = [e for e in doc["sgx"]["trusted_files"] if isinstance(e, str)]
    assert "file:{{ gramine.libos }}" in strings
    assert f"file:{instance}/logs/" in doc["sgx"]["allowed_files"]


def test_export_of_a_debug_image_says_so(tmp_path: Path) -> None:
    instance = make_instance(tmp_path / "dbg", backend="gramine", debug=True)
    image.build(instance)
    doc = tomllib.loads(gramine.export(instance, tmp_path / "out").read_text())
    assert doc["sgx"]["debug"] is True


def test_export_refuses_a_tampered_image(gramine_instance: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(gramine_instance, copy)
    target = copy / "image" / "root" / "libos" / "enclave_start.py"
    target.write_text(target.read_text() + "\n# changed\n")
    with pytest.raises(IntegrityError, match=r"libos/enclave_start\.py"):
        gramine.export(copy, tmp_path / "out")


def test_cli_export_and_run_refusal(gramine_instance: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--target", "gramine", str(gramine_instance),
                                 str(tmp_path / "out"), "--", "--port", "7001"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = tomllib.loads((tmp_path / "out" / gramine.MANIFEST_TEMPLATE_NAME).read_text())
    assert doc["loader"]["argv"][-2:] == ["--port", "7001"]
    assert "cannot run it" in result.output
    bad = runner.invoke(app, ["export", "--target", "occlum", str(gramine_instance), "x"])
    assert bad.exit_code == 2 and "gramine" in bad.output
    # A gramine image runs under gramine-sgx; `detente libos run` says how.
    refused = run_cli("run", str(gramine_instance))
    assert refused.returncode == 70 and "gramine-sgx" in refused.stderr


def test_manifest_helpers() -> None:
    assert [gramine.enclave_size(m) for m in (64, 100, 1024, 4096, 5000)] == [
        "64M", "128M", "1G", "4G", "8G"
    ]  # fmt: skip
    assert gramine.passthrough_env(["LANG", "X_*", "PYTHONPATH"], ["X_A", "Y"]) == ["LANG", "X_A"]
