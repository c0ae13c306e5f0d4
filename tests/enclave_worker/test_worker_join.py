"""Workers of one measurement share one identity: --join, attested both ways, on real workers.

Worker B starts with `--join A`; it and A verify each other's evidence, A seals
its keys to B's one-time attested key, and B presents A's identity from then
on. The refusals: a worker of another build (its libos.toml changed, so its
MRENCLAVE differs) gets no keys from A and gives none to a worker of A's build;
a caller with forged evidence or none gets nothing; a worker that holds its own
identity does not take another; and no key byte lands in any host file or log.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import xgboost as xgb
from worker_testkit import (
    Worker,
    build_worker_instance,
    collect,
    make_job,
    plaintext_model,
    released_model,
    run_job,
)

from enclave_worker.identity import load_sealed
from libos import image, launcher
from libos.config import Mount
from libos.runtime import SimRuntime
from libos.sim import SimPlatform
from protocols import statements
from protocols.attestation import NONCE_SIZE, report_data_for
from protocols.documents import IdentityDocument
from protocols.keys import HpkePrivateKey, Kem, SigningKey
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc

BOUND = 120.0


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A: a worker of the pool's build; B: a second instance of that build that joins A.

    Each on a simulated machine of its own (its instance's platform/), trusting the
    other's SIMULATION root (--pool-simulation-root), as workers of a pool on two hosts.
    """
    root = tmp_path_factory.mktemp("join")
    a_dir, measured = build_worker_instance(root / "a")
    b_dir = _copy_build(a_dir, root / "b", measured)
    a_root = SimPlatform(launcher.platform_dir(a_dir)).root_fingerprint
    b_root = SimPlatform(launcher.platform_dir(b_dir)).root_fingerprint
    a = Worker(a_dir, measured, ("--pool-simulation-root", b_root)).start()
    b = Worker(b_dir, measured, ("--join", a.address, "--pool-simulation-root", a_root))
    try:
        b.start()
        yield {"root": root, "a": a, "b": b, "measured": measured, "b_root": b_root}
    finally:
        b.stop()
        a.stop()


def _copy_build(source: Path, target: Path, measured: image.Measurement) -> Path:
    """A second instance of the same build: the same libos.toml and signer, so the same
    MRENCLAVE and MRSIGNER; its own data, logs and sealed keys."""
    target.mkdir()
    for name in ("libos.toml", "signer.key"):
        (target / name).write_bytes((source / name).read_bytes())
        (target / name).chmod((source / name).stat().st_mode)
    built = image.build(target)
    assert (built.mrenclave, built.mrsigner) == (measured.mrenclave, measured.mrsigner)
    return target


def _identity(worker: Worker) -> IdentityDocument:
    evidence = worker.client().get_evidence(secrets.token_bytes(32))
    envelope = statements.Envelope.from_bytes(evidence.identity)
    return IdentityDocument.from_dict(statements.verify(envelope, statements.IDENTITY, None, "id"))


def _refused_start(worker: Worker) -> str:
    """Start ``worker`` expecting it to refuse: its exit code 2 and its output."""
    port_file = worker.instance / "worker.port"
    port_file.unlink(missing_ok=True)
    cmd, env = launcher.command(worker.instance, ["--port-file", str(port_file), *worker.args])
    env[launcher.PLATFORM_DIR_ENV] = str(worker.platform)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=BOUND)
    assert done.returncode == 2, done.stdout + done.stderr
    assert not port_file.exists()
    return done.stderr


def test_a_joined_worker_presents_the_pools_identity_with_its_own_tls_key(pool):
    a, b = _identity(pool["a"]), _identity(pool["b"])
    assert (b.signing_key, b.hpke_key, b.hpke_pq_key) == (a.signing_key, a.hpke_key, a.hpke_pq_key)
    assert b.tls_public_key_sha256 != a.tls_public_key_sha256  # its own RA-TLS key
    # A restart keeps the sealed identity, with --join (the same keys) or without.
    b_worker: Worker = pool["b"]
    b_worker.stop()
    b_worker.start()
    assert _identity(b_worker).signing_key == a.signing_key
    log = (b_worker.instance / "logs" / "worker.log").read_text()
    assert "joined the pool again: this worker already holds its identity" in log


def test_data_sealed_to_the_first_worker_trains_on_the_joined_one(pool):
    a = _identity(pool["a"])
    job = make_job(a.hpke_key, pool["measured"].mrenclave, "job-pool", rows=400, rounds=6)
    outputs, _ = collect(run_job(pool["b"], job))
    model = released_model(job, outputs, a.signing_key)  # signed with the pool's key
    plain, x = plaintext_model(job)
    probe = xgb.DMatrix(x, feature_names=[f"f{j}" for j in range(3)])
    assert np.array_equal(model.predict(probe), plain.predict(probe))


def test_a_worker_of_another_build_gets_no_keys_and_gives_none(pool):
    root, a = pool["root"], pool["a"]
    a_root = SimPlatform(a.platform).root_fingerprint
    # Another build: one measured file (libos.toml) differs, so MRENCLAVE differs.
    other_dir, other = build_worker_instance(root / "other", resources={"threads": 3})
    assert other.mrenclave != pool["measured"].mrenclave
    other_root = SimPlatform(launcher.platform_dir(other_dir)).root_fingerprint
    # It cannot get A's keys: it refuses A (not its build) before it asks, even trusting
    # A's simulated machine.
    thief = Worker(other_dir, other, ("--join", a.address, "--pool-simulation-root", a_root))
    out = _refused_start(thief)
    assert f"cannot join the pool at {a.address}" in out
    assert "measurement: MRENCLAVE" in out and "is not in the policy" in out
    # Nor can it give keys to a worker of A's build: that worker refuses it.
    other_worker = Worker(other_dir, other, ("--pool-simulation-root", a_root)).start()
    try:
        fresh = _copy_build(a.instance, root / "fresh", pool["measured"])
        args = ("--join", other_worker.address, "--pool-simulation-root", other_root)
        out = _refused_start(Worker(fresh, pool["measured"], args))
        assert "is refused as a source of this enclave's keys" in out
        assert "measurement: MRENCLAVE" in out
        m = pool["measured"]
        fresh_rt = _runtime(fresh, launcher.platform_dir(fresh), m.mrenclave, m.mrsigner)
        assert load_sealed(fresh_rt) is None
    finally:
        other_worker.stop()
    # A, asked directly with the other build's evidence from a machine A trusts, refuses it.
    b_platform = launcher.platform_dir(pool["b"].instance)
    rt = _runtime(root / "forger", b_platform, other.mrenclave, other.mrsigner)
    code, details = _ask(a, lambda nonce: _forged(rt, nonce))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "the joining worker's evidence is refused" in details
    assert "measurement: MRENCLAVE" in details


def _runtime(
    directory: Path, platform: Path, mrenclave: str, mrsigner: str, debug: bool = False
) -> SimRuntime:
    measurement = image.Measurement(mrenclave, mrsigner, "sim", debug, 1, 1, 0)
    mounts = (Mount("/data", "data", "mrenclave"),)
    return SimRuntime(measurement, directory, SimPlatform(platform), mounts)


def _forged(rt: SimRuntime, nonce: bytes) -> enclave_pb2.Evidence:
    """Evidence a host makes with a simulated platform: a one-time key, quoted for ``nonce``."""
    signing = SigningKey.generate()
    document = IdentityDocument(
        backend="sim",
        hpke_key=HpkePrivateKey.generate().public_key,
        signing_key=signing.verify_key,
        tls_public_key_sha256="",
        hpke_pq_key=HpkePrivateKey.generate(Kem.MLKEM768_X25519).public_key,
    )
    envelope = statements.sign(statements.IDENTITY, document.to_dict(), signing)
    quote = rt.quote(report_data_for(envelope.payload, nonce))
    return enclave_pb2.Evidence(identity=envelope.to_bytes(), quote=quote, backend="sim")


def _ask(worker: Worker, evidence_for: Any) -> tuple[grpc.StatusCode, str]:
    """Call ShareIdentity as a TLS client (the certificate checked, nothing else of ours is):
    our nonce, then ``evidence_for(provider nonce)``; expect a refusal."""
    import queue

    requests: queue.Queue[Any] = queue.Queue()
    requests.put(enclave_pb2.ShareIdentityRequest(nonce=secrets.token_bytes(NONCE_SIZE)))
    with worker.client().channel() as channel:
        call = enclave_pb2_grpc.EnclaveStub(channel).ShareIdentity(
            iter(requests.get, None), timeout=BOUND
        )
        try:
            first = next(call)
            assert first.HasField("challenge")
            evidence = evidence_for(bytes(first.challenge.nonce))
            if evidence is not None:
                requests.put(enclave_pb2.ShareIdentityRequest(evidence=evidence))
            requests.put(None)
            with pytest.raises(grpc.RpcError) as failure:
                rest = list(call)
                raise AssertionError(f"the worker shared its keys: {rest}")
        finally:
            requests.put(None)
    exc: Any = failure.value
    return exc.code(), exc.details()


def test_forged_or_missing_evidence_gets_nothing(pool):
    a: Worker = pool["a"]
    measured = pool["measured"]
    # A host's own simulated platform, claiming A's measurement: its root is not the pool's.
    elsewhere = _runtime(
        pool["root"] / "elsewhere",
        pool["root"] / "other-platform",
        measured.mrenclave,
        measured.mrsigner,
    )
    code, details = _ask(a, lambda nonce: _forged(elsewhere, nonce))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "quote" in details
    # A machine of the pool and A's measurement, but evidence for another nonce (a replay).
    b_platform = launcher.platform_dir(pool["b"].instance)
    same = _runtime(pool["root"] / "same", b_platform, measured.mrenclave, measured.mrsigner)
    code, details = _ask(a, lambda nonce: _forged(same, secrets.token_bytes(NONCE_SIZE)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "report-data" in details
    # A debug enclave of A's measurement and signer on a machine of the pool: a production
    # worker never hands its keys to an enclave whose memory the host can read.
    debug = _runtime(
        pool["root"] / "debug", b_platform, measured.mrenclave, measured.mrsigner, debug=True
    )
    code, details = _ask(a, lambda nonce: _forged(debug, nonce))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "debug enclave (refused" in details

    # A tampered quote.
    def tampered(nonce: bytes) -> Any:
        good = _forged(same, nonce)
        quote = bytearray(good.quote)
        quote[100] ^= 1
        return enclave_pb2.Evidence(identity=good.identity, quote=bytes(quote), backend="sim")

    code, details = _ask(a, tampered)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    # Another signer's enclave claiming A's MRENCLAVE.
    signer = _runtime(pool["root"] / "signer", b_platform, measured.mrenclave, "11" * 32)
    code, details = _ask(a, lambda nonce: _forged(signer, nonce))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "MRSIGNER" in details
    # A plain TLS client that sends no evidence at all: the call ends without keys.
    code, details = _ask(a, lambda nonce: None)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "evidence second" in details
    # A nonce of the wrong size is refused before any evidence.
    with a.client().channel() as channel:
        call = enclave_pb2_grpc.EnclaveStub(channel).ShareIdentity(
            iter([enclave_pb2.ShareIdentityRequest(nonce=b"short")]), timeout=BOUND
        )
        with pytest.raises(grpc.RpcError) as failure:
            list(call)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_a_worker_that_holds_its_own_identity_refuses_to_join(pool):
    a, measured = pool["a"], pool["measured"]
    own = _copy_build(a.instance, pool["root"] / "own", measured)
    worker = Worker(own, measured).start()
    mine = _identity(worker)
    worker.stop()
    a_root = SimPlatform(a.platform).root_fingerprint
    joiner = Worker(own, measured, ("--join", a.address, "--pool-simulation-root", a_root))
    out = _refused_start(joiner)
    assert "already holds its own identity" in out and "does not replace its keys" in out
    assert "Start it without --join" in out
    # Its keys are unchanged.
    again = Worker(own, measured).start()
    try:
        assert _identity(again).signing_key == mine.signing_key
    finally:
        again.stop()


def test_no_key_byte_in_any_host_file_or_log(pool):
    # The host of a SIMULATION platform can unseal what the enclave sealed: that is how
    # this test learns the keys it then searches for.
    measured = pool["measured"]
    a = pool["a"]
    rt = _runtime(a.instance, a.platform, measured.mrenclave, measured.mrsigner)
    fs = rt.default_mount()
    assert fs is not None
    keys = json.loads(rt.unseal(fs.read_bytes("keys/identity.sealed"), "enclave-identity/v1"))
    needles = []
    for hexed in keys.values():
        raw = bytes.fromhex(hexed)
        needles += [raw, hexed.encode(), raw[-32:], raw[-32:].hex().encode()]
    searched = 0
    for path in pool["root"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            searched += 1
            for needle in needles:
                assert needle not in data, f"key material in {path}"
    assert searched > 20
    # The joined worker's log says it joined, naming the public key's fingerprint only.
    log = (pool["b"].instance / "logs" / "worker.log").read_text()
    assert "joined the pool at" in log
    assert keys["signing"] not in log


def test_the_harness_starts_a_pool_of_one_identity(tmp_path: Path) -> None:
    from coordinator.enclave_client import EnclaveClient
    from detente.cluster import cluster, start_enclave_pool
    from protocols.policy import AttestationPolicy

    with cluster(tmp_path) as c:
        workers, measured, policy_file = start_enclave_pool(c, tmp_path, 3)
        assert len({w.pid for w in workers}) == 3
        assert len({w.simulation_root for w in workers}) == 3  # three simulated machines
        policy = AttestationPolicy.load(policy_file)
        identities = []
        for worker in workers:
            _der, verified = EnclaveClient(worker.address, policy).verify()
            identities.append(verified.identity)
        assert len({i.signing_key.hex for i in identities}) == 1
        assert len({i.hpke_key.hex for i in identities}) == 1
        assert len({i.tls_public_key_sha256 for i in identities}) == 3
        # Data sealed to the pool's key trains on the last worker.
        job = make_job(identities[0].hpke_key, measured["mrenclave"], "job-harness", rows=300)
        client = EnclaveClient(workers[-1].address, policy)
        outputs, _ = collect(client.run_job(job.spec, job.datasets()))
        released_model(job, outputs, identities[0].signing_key)
    assert all(p.popen.poll() is not None for p in c.processes)  # stopped, each by its pid
