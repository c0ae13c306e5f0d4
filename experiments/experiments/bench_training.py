"""Benchmark: the enclave's job path against plain XGBoost on the same rows.

    .venv/bin/python -m experiments.bench_training [--rounds 200] [--repeat 3]

Runs the worker's job code in-process (consent checks, key unwrapping,
STREAM decryption, Arrow parsing, join, training, sealing the model) on the
bundled credit data split into three parties, and plain `xgboost.train` on
the same joined float32 matrix with the same parameters. Prints the best of
``--repeat`` runs of each and their ratio. No enclave hardware is involved:
this measures Detente's own overhead, not SGX's.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import time
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import xgboost as xgb

from enclave_worker import jobs
from enclave_worker.identity import EnclaveIdentity
from experiments.demo import DEFAULT_DATA, DEFAULT_ID, DEFAULT_LABEL, features, split_parties
from party_client.party import DEFAULT_PARAMS
from party_client.tables import schema_columns, to_ipc
from protocols import hpke, stream
from protocols.documents import Approval, DatasetManifest, JobTerms, Recipient, schema_sha256
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
        schema_sha256=schema_sha256(schema_columns(table)),
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
    args = parser.parse_args()

    table = pacsv.read_csv(DEFAULT_DATA)
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
        for (name, _), (_, blob) in zip(parts, sealed, strict=True):
            job.add_chunk(name, blob)
        for _ in jobs.run(enclave, job):
            pass
        return time.perf_counter() - t0

    joined = pa.concat_tables([t for _, t in parts])

    def plain_path() -> float:
        t0 = time.perf_counter()
        x, y, names = features(joined, DEFAULT_LABEL, DEFAULT_ID)
        dtrain = xgb.DMatrix(x, label=y, feature_names=names)
        xgb.train(jobs.train_params(terms), dtrain, num_boost_round=args.rounds)
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


if __name__ == "__main__":
    main()
