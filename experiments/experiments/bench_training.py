"""Benchmark: the enclave's job path against plain XGBoost on the same rows.

    .venv/bin/python -m experiments.bench_training [--rounds 200] [--repeat 3] [--process]

Runs the worker's job code in-process (consent checks, key unwrapping,
STREAM decryption, Arrow parsing, join, training, sealing the model) on the
bundled credit data split into three parties, and plain `xgboost.train` on
the same joined float32 matrix with the same parameters. Prints the best of
``--repeat`` runs of each and their ratio. No enclave hardware is involved:
this measures Detente's own overhead, not SGX's.

``--process`` also runs the job the way the worker does, in a job process of
its own (enclave_worker.job_process over libos.process): it builds a worker
image in a temporary directory, installs that image's SIMULATION runtime in
this process (as a test harness would; this process is not itself an
enclave) and measures spawn, handshake, data over the pipe, the child's
verified start and its imports, against the same job code in-process; both
write checkpoints to the image's encrypted mount.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import statistics
import time
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import xgboost as xgb

from detente.demo import DEFAULT_ID, DEFAULT_LABEL, default_data, features, split_parties
from enclave_worker import jobs
from enclave_worker.identity import EnclaveIdentity
from party_client import DEFAULT_PARAMS
from party_client.tables import to_ipc
from protocols import hpke, stream
from protocols.documents import (
    Approval,
    DatasetManifest,
    JobTerms,
    Recipient,
    schema_columns,
    schema_sha256,
)
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.statements import Envelope


def _seal(
    enclave: EnclaveIdentity, owner: SigningKey, dataset_id: str, table: Any
) -> tuple[bytes, bytes]:
    key = secrets.token_bytes(32)
    blob = stream.seal_stream(key, to_ipc(table), dataset_id.encode())
    public = enclave.hpke_key.public_key
    manifest = DatasetManifest(
        dataset_id=dataset_id,
        name=dataset_id,
        owner_key=owner.verify_key,
        schema_sha256=schema_sha256(schema_columns(table.schema)),
        row_count=table.num_rows,
        ciphertext_sha256=hashlib.sha256(blob).hexdigest(),
        ciphertext_size=len(blob),
        wrapped_key=hpke.wrap_key(key, public, hpke.data_key_info(dataset_id, public)),
        sealed_to_mrenclave=enclave.mrenclave,
        sealed_to_hpke_key=public,
    ).sign(owner)
    return manifest.to_bytes(), blob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--process", action="store_true", help="also time the job in its own job process"
    )
    args = parser.parse_args()

    with default_data() as csv:
        table = pacsv.read_csv(csv)
    parts = split_parties(table, 3, "EDUCATION")
    enclave = EnclaveIdentity(SigningKey.generate(), HpkePrivateKey.generate(), "sim", "00" * 32)
    owners = [SigningKey.generate() for _ in parts]
    recipient = HpkePrivateKey.generate()
    sealed = [_seal(enclave, o, name, t) for o, (name, t) in zip(owners, parts, strict=True)]
    terms = JobTerms(
        job_id="bench",
        datasets=[
            (name, Envelope.from_bytes(m).digest)
            for (name, _), (m, _) in zip(parts, sealed, strict=True)
        ],
        join="horizontal",
        objective="binary:logistic",
        label=DEFAULT_LABEL,
        params=DEFAULT_PARAMS,
        num_rounds=args.rounds,
        seed=0,
        allowed_mrenclaves=[enclave.mrenclave],
        outputs=["model"],
        recipients=[Recipient("r", owners[0].verify_key, recipient.public_key)],
        expires_at=int(time.time()) + 3600,
        id_column=DEFAULT_ID,
        proposer=owners[0].verify_key.hex,
    )
    envelope = terms.sign(owners[0])
    approvals = [Approval("bench", envelope.digest).sign(o).to_bytes() for o in owners]

    def enclave_path() -> float:
        t0 = time.perf_counter()
        job = jobs.accept(enclave, envelope.to_bytes(), approvals, [m for m, _ in sealed])
        chunks = [(name, blob) for (name, _), (_, blob) in zip(parts, sealed, strict=True)]
        for _ in jobs.run(enclave, job, chunks):
            pass
        return time.perf_counter() - t0

    joined = pa.concat_tables([t for _, t in parts])

    def plain_path() -> float:
        t0 = time.perf_counter()
        x, y, names = features(joined, DEFAULT_LABEL, DEFAULT_ID)
        dtrain = xgb.DMatrix(x, label=y, feature_names=names)
        xgb.train(terms.train_params(), dtrain, num_boost_round=args.rounds)
        return time.perf_counter() - t0

    enclave_s = min(enclave_path() for _ in range(args.repeat))
    plain_s = min(plain_path() for _ in range(args.repeat))
    ciphertext = sum(len(b) for _, b in sealed)
    print(
        f"rows {joined.num_rows}, parties {len(parts)}, rounds {args.rounds}, "
        f"ciphertext {ciphertext / 1e6:.1f} MB"
    )
    print(f"plain XGBoost (matrix + train):          {plain_s:.3f} s")
    print("Detente job path (verify, decrypt, join,")
    print(f"  train, seal model):                     {enclave_s:.3f} s")
    print(f"ratio Detente / plain:                    {enclave_s / plain_s:.3f}")
    if args.process:
        _bench_process(parts, DEFAULT_PARAMS, args.rounds, args.repeat)


def _bench_process(
    parts: list[tuple[str, Any]], params: dict[str, Any], rounds: int, repeat: int
) -> None:
    """The job in its own process (as the worker runs it) against the same code in-process."""
    import tempfile
    from pathlib import Path

    from enclave_worker import job_process
    from libos import image, launcher, runtime
    from libos.sim import SimPlatform

    with tempfile.TemporaryDirectory(prefix="detente-bench-") as tmp:
        instance = Path(tmp) / "instance"
        image.init(instance)
        started = time.perf_counter()
        measurement = image.build(instance)
        build_s = time.perf_counter() - started
        verified = image.verify_image(instance)
        rt = runtime.SimRuntime(
            measurement,
            instance,
            SimPlatform(launcher.platform_dir(instance)),
            verified.config.mounts,
        )
        runtime._install(rt)
        enclave = EnclaveIdentity(
            SigningKey.generate(), HpkePrivateKey.generate(), "sim", measurement.mrenclave
        )
        owners = [SigningKey.generate() for _ in parts]
        recipient = HpkePrivateKey.generate()
        sealed = [_seal(enclave, o, n, t) for o, (n, t) in zip(owners, parts, strict=True)]
        mount = rt.default_mount()
        assert mount is not None, "the default image has a /data mount"
        checkpoints = job_process.MountCheckpoints(mount)
        counter = iter(range(1 << 30))

        def fresh() -> tuple[bytes, list[bytes], list[bytes]]:
            # A new job id each time: the same terms would resume from the
            # finished model this benchmark's previous run left in the mount.
            job_id = f"bench-{next(counter)}"
            terms = JobTerms(
                job_id=job_id,
                datasets=[
                    (name, Envelope.from_bytes(m).digest)
                    for (name, _), (m, _) in zip(parts, sealed, strict=True)
                ],
                join="horizontal",
                objective="binary:logistic",
                label=DEFAULT_LABEL,
                params=params,
                num_rounds=rounds,
                seed=0,
                allowed_mrenclaves=[enclave.mrenclave],
                outputs=["model"],
                recipients=[Recipient("r", owners[0].verify_key, recipient.public_key)],
                expires_at=int(time.time()) + 3600,
                id_column=DEFAULT_ID,
                proposer=owners[0].verify_key.hex,
            )
            envelope = terms.sign(owners[0])
            approvals = [Approval(job_id, envelope.digest).sign(o).to_bytes() for o in owners]
            return envelope.to_bytes(), approvals, [m for m, _ in sealed]

        def in_process() -> float:
            terms, approvals, manifests = fresh()
            t0 = time.perf_counter()
            job = jobs.accept(enclave, terms, approvals, manifests)
            chunks = [(name, blob) for (name, _), (_, blob) in zip(parts, sealed, strict=True)]
            env = jobs.JobEnvironment(checkpoints=checkpoints)
            for _ in jobs.run(enclave, job, chunks, env):
                pass
            return time.perf_counter() - t0

        spawn_times: list[float] = []

        def in_child() -> float:
            terms, approvals, manifests = fresh()
            t0 = time.perf_counter()
            now = time.time()
            job = jobs.accept(enclave, terms, approvals, manifests, now=now)
            with job_process.JobProcess.start(enclave, job, approvals, manifests, now) as child:
                spawn_times.append(time.perf_counter() - t0)
                for (name, _), (_, blob) in zip(parts, sealed, strict=True):
                    for i in range(0, len(blob), 1 << 20):
                        child.send_chunk(name, blob[i : i + (1 << 20)])
                for _ in child.results():
                    pass
            return time.perf_counter() - t0

        # Interleaved, so both sides see the same background load; min and median.
        inline: list[float] = []
        child: list[float] = []
        for _ in range(repeat):
            inline.append(in_process())
            child.append(in_child())
        runtime._install(None)
    print(f"worker image build:                       {build_s:.3f} s")
    print(f"job in-process (with checkpoints):        {_spread(inline)}")
    print(f"job in its own job process:               {_spread(child)}")
    print(f"  of which spawn + verified start:        {_spread(spawn_times)}")
    overhead = statistics.median(c - i for c, i in zip(child, inline, strict=True))
    print(
        f"job process overhead (median of pairs):   {overhead:+.3f} s "
        f"(ratio of medians {statistics.median(child) / statistics.median(inline):.3f})"
    )


def _spread(times: list[float]) -> str:
    return f"{min(times):.3f} s min, {statistics.median(times):.3f} s median"


if __name__ == "__main__":
    main()
