"""Helpers for worker tests: real enclave worker processes, real jobs sealed to them."""

from __future__ import annotations

import hashlib
import secrets
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from coordinator.enclave_client import EnclaveClient, JobSpec, OutputPiece, SignedResult
from libos import image, launcher
from libos.sim import SimPlatform
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
from protocols.keys import HpkePrivateKey, HpkePublicKey, SigningKey, VerifyKey
from protocols.policy import AttestationPolicy
from protocols.statements import Envelope

START_TIMEOUT = 120.0


class Owner:
    def __init__(self, name: str) -> None:
        self.name = name
        self.signing = SigningKey.generate()
        self.hpke = HpkePrivateKey.generate()

    def recipient(self) -> Recipient:
        return Recipient(self.name, self.signing.verify_key, self.hpke.public_key)


def make_table(rows: int, seed: int, features: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    y = (x[:, 0] + rng.normal(scale=0.5, size=rows) > 0).astype(np.int64)
    columns: dict[str, Any] = {"id": np.arange(rows) + seed * 1_000_000}
    columns.update({f"f{j}": x[:, j] for j in range(features)})
    columns["label"] = y
    return pa.table(columns)


def seal_for(
    hpke_key: HpkePublicKey, mrenclave: str, owner: Owner, dataset_id: str, table: pa.Table
) -> tuple[bytes, bytes]:
    """A data set sealed to the enclave key ``hpke_key``: (signed manifest, ciphertext)."""
    key = secrets.token_bytes(32)
    blob = stream.seal_stream(key, to_ipc(table), dataset_id.encode())
    manifest = DatasetManifest(
        dataset_id=dataset_id,
        name=f"{dataset_id}.csv",
        owner_key=owner.signing.verify_key,
        schema_sha256=schema_sha256(schema_columns(table.schema)),
        row_count=table.num_rows,
        ciphertext_sha256=hashlib.sha256(blob).hexdigest(),
        ciphertext_size=len(blob),
        wrapped_key=hpke.wrap_key(key, hpke_key, hpke.data_key_info(dataset_id, hpke_key)),
        sealed_to_mrenclave=mrenclave,
        sealed_to_hpke_key=hpke_key,
    ).sign(owner.signing)
    return manifest.to_bytes(), blob


@dataclass
class Job:
    terms: JobTerms
    envelope: Envelope
    spec: JobSpec
    blobs: list[tuple[str, bytes]]
    tables: list[pa.Table]
    owners: list[Owner]

    def datasets(self) -> list[tuple[str, list[bytes]]]:
        chunk = 1 << 20
        return [
            (name, [blob[i : i + chunk] for i in range(0, len(blob), chunk)])
            for name, blob in self.blobs
        ]


def seal_job(
    hpke_key: HpkePublicKey,
    mrenclave: str,
    job_id: str,
    parts: list[tuple[Owner, str, pa.Table]],
    *,
    recipients: list[Owner] | None = None,
    **fields: Any,
) -> Job:
    """A job over ``parts`` — (owner, data set id, table), in join order — that every owner
    approved; ``fields`` set the terms (defaults: a horizontal binary:logistic job of 5
    rounds on ``label``, released to the first owner)."""
    owners = list(dict.fromkeys(owner for owner, _, _ in parts))
    sealed = [seal_for(hpke_key, mrenclave, o, d, t) for o, d, t in parts]
    terms = JobTerms(
        **{
            "job_id": job_id,
            "datasets": [
                (d, Envelope.from_bytes(m).digest)
                for (_, d, _), (m, _) in zip(parts, sealed, strict=True)
            ],
            "join": "horizontal",
            "objective": "binary:logistic",
            "label": "label",
            "params": {"tree_method": "hist", "max_depth": 3, "nthread": 1},
            "num_rounds": 5,
            "seed": 0,
            "allowed_mrenclaves": [mrenclave],
            "outputs": ["model"],
            "recipients": [o.recipient() for o in (recipients or owners[:1])],
            "expires_at": int(time.time()) + 3600,
            "proposer": owners[0].signing.verify_key.hex,
            **fields,
        }
    )
    envelope = terms.sign(owners[0].signing)
    approvals = [Approval(job_id, envelope.digest).sign(o.signing).to_bytes() for o in owners]
    spec = JobSpec(envelope.to_bytes(), approvals, [m for m, _ in sealed])
    blobs = [(d, b) for (_, d, _), (_, b) in zip(parts, sealed, strict=True)]
    return Job(terms, envelope, spec, blobs, [t for _, _, t in parts], owners)


def make_job(
    hpke_key: HpkePublicKey,
    mrenclave: str,
    job_id: str,
    *,
    rows: int = 300,
    features: int = 3,
    rounds: int = 5,
    params: dict[str, Any] | None = None,
    outputs: tuple[str, ...] = ("model",),
) -> Job:
    """Two owners, each with a table, a job over both that both approved."""
    owners = [Owner("a"), Owner("b")]
    tables = [make_table(rows, 1, features), make_table(rows // 2, 2, features)]
    return seal_job(
        hpke_key,
        mrenclave,
        job_id,
        [(o, f"{job_id}-{o.name}", t) for o, t in zip(owners, tables, strict=True)],
        params=params or {"tree_method": "hist", "max_depth": 3, "nthread": 1},
        num_rounds=rounds,
        outputs=list(outputs),
        id_column="id",
    )


def plaintext_model(job: Job) -> Any:
    """XGBoost trained in the clear on the joined rows, with the job's parameters."""
    import xgboost as xgb

    joined = pa.concat_tables(job.tables)
    names = [n for n in joined.column_names if n not in ("id", "label")]
    x = np.column_stack([joined.column(n).to_numpy().astype(np.float32) for n in names])
    y = joined.column("label").to_numpy().astype(np.float32)
    dtrain = xgb.DMatrix(x, label=y, feature_names=names)
    return xgb.train(job.terms.train_params(), dtrain, num_boost_round=job.terms.num_rounds), x


def released_model(job: Job, outputs: dict[str, bytes], enclave_key: VerifyKey) -> Any:
    """Verify the result statement, then open the released model as its recipient (owner a)."""
    import xgboost as xgb

    from protocols.documents import ResultStatement as Statement

    statement = Statement.verify(Envelope.from_bytes(outputs["statement"]), enclave_key)
    assert statement.terms_digest == job.envelope.digest
    me = job.owners[0]
    record = next(o for o in statement.outputs if o.name == "model")
    key = hpke.unwrap_key(
        record.wrapped_keys[me.signing.verify_key.hex],
        me.hpke,
        hpke.result_key_info(job.terms.job_id, "model", me.hpke.public_key),
    )
    model = xgb.Booster()
    plain = stream.open_stream(key, outputs["model"], f"{job.terms.job_id}/model".encode())
    model.load_model(bytearray(plain))
    return model


def plaintext_training(job: Job) -> tuple[Any, Any, Any, list[str], Any]:
    """XGBoost trained in the clear on the job's joined rows, by protocols.training's rules.

    Returns (booster, features, labels, feature names, evals_result): the
    joined rows as the training table (all of them, in join order), split by
    the terms' seed when they hold out validation rows, trained with a
    ``DMatrix`` and XGBoost's own early stopping on the validation rows.
    """
    import xgboost as xgb

    from protocols import training

    terms = job.terms
    named = [(d, t) for (d, _), t in zip(terms.datasets, job.tables, strict=True)]
    ids = {d: terms.id_column_of(d) for d, _ in named}
    if terms.join == "vertical":
        joined = training.join_vertical(named, ids, terms.label, terms.min_rows)
    else:
        joined = training.join_horizontal(named, ids, terms.min_rows)
    features, labels, names = training.training_table(joined, terms.label)
    evals: list[Any] = []
    if terms.validation_fraction > 0:
        train, valid = training.validation_split(
            labels,
            terms.validation_fraction,
            terms.seed,
            training.is_classification(terms.objective),
        )
        dtrain = xgb.DMatrix(
            features.take(pa.array(train)), label=labels[train], enable_categorical=True
        )
        dvalid = xgb.DMatrix(
            features.take(pa.array(valid)), label=labels[valid], enable_categorical=True
        )
        evals = [(dvalid, "validation")]
    else:
        dtrain = xgb.DMatrix(features, label=labels, enable_categorical=True)
    history: dict[str, Any] = {}
    booster = xgb.train(
        terms.train_params(),
        dtrain,
        num_boost_round=terms.num_rounds,
        evals=evals,
        early_stopping_rounds=terms.early_stopping_rounds,
        evals_result=history,
        verbose_eval=False,
    )
    return booster, features, labels, names, history


def open_outputs(
    job: Job, outputs: dict[str, bytes], enclave_key: VerifyKey, me: Owner
) -> tuple[Any, dict[str, bytes]]:
    """Verify the result statement; open every output it wraps to ``me``.

    Returns (the statement, {output name: plaintext}).
    """
    from protocols.documents import ResultStatement as Statement

    statement = Statement.verify(Envelope.from_bytes(outputs["statement"]), enclave_key)
    assert statement.terms_digest == job.envelope.digest
    mine = {}
    for record in statement.outputs:
        wrapped = record.wrapped_keys.get(me.signing.verify_key.hex)
        if wrapped is None:
            continue
        name = record.name
        assert hashlib.sha256(outputs[name]).hexdigest() == record.ciphertext_sha256
        key = hpke.unwrap_key(
            wrapped, me.hpke, hpke.result_key_info(job.terms.job_id, name, me.hpke.public_key)
        )
        mine[name] = stream.open_stream(key, outputs[name], f"{job.terms.job_id}/{name}".encode())
    return statement, mine


def _set_config(instance: Path, **settings: Any) -> None:
    """Change top-level tables of libos.toml (e.g. resources) with targeted line edits."""
    text = (instance / "libos.toml").read_text()
    current = tomllib.loads(text)
    for table, values in settings.items():
        for key, value in values.items():
            old = f"{key} = {current[table][key]}"
            assert text.count(old) == 1, f"{old!r} is not unique in libos.toml"
            text = text.replace(old, f"{key} = {value}")
    (instance / "libos.toml").write_text(text)


def build_worker_instance(directory: Path, **settings: Any) -> tuple[Path, image.Measurement]:
    """A worker image (the default config), built from this repository's sources."""
    image.init(directory)
    if settings:
        _set_config(directory, **settings)
    return directory, image.build(directory)


class Worker:
    """A real enclave worker: the enclave process itself, as `detente libos run` starts it."""

    def __init__(
        self,
        instance: Path,
        measured: image.Measurement,
        args: tuple[str, ...] = (),
        platform: Path | None = None,
    ) -> None:
        self.instance = instance
        self.measured = measured
        self.args = args  # the worker's own options (after `--`), e.g. --drain-seconds
        # The simulated platform (DETENTE_LIBOS_PLATFORM_DIR): workers of one pool share one.
        self.platform = platform or launcher.platform_dir(instance)
        self.popen: subprocess.Popen[bytes] | None = None
        self.address = ""

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> Worker:
        port_file = self.instance / "worker.port"
        port_file.unlink(missing_ok=True)
        cmd, env = launcher.command(self.instance, ["--port-file", str(port_file), *self.args])
        env[launcher.PLATFORM_DIR_ENV] = str(self.platform)
        log = (self.instance / "worker-test.out").open("ab")
        self.popen = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists():
            if self.popen.poll() is not None:
                out = (self.instance / "worker-test.out").read_text()[-3000:]
                raise AssertionError(f"the worker exited with {self.popen.returncode}:\n{out}")
            if time.monotonic() > deadline:
                raise AssertionError("the worker did not start in time")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{int(port_file.read_text())}"
        return self

    def client(self) -> EnclaveClient:
        root = SimPlatform(self.platform).root_fingerprint
        policy = AttestationPolicy(
            mrenclave=(self.measured.mrenclave,),
            allow_simulation=True,
            simulation_roots=(root,),
        )
        return EnclaveClient(self.address, policy)

    def job_processes(self) -> list[int]:
        """Pids of this worker's child processes that run libos.process (its job processes)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.pid and fields[0] != "Z" and b"libos.process" in cmdline:
                found.append(int(entry.name))
        return found

    def kill(self) -> None:
        """SIGKILL the enclave process (a crash of the whole worker)."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)


def run_job(worker: Worker, job: Job) -> Iterator[Any]:
    """The worker's stream for ``job``: EnclaveProgress, OutputPiece, SignedResult messages."""
    yield from worker.client().run_job(job.spec, job.datasets())


def collect(messages: Iterator[Any]) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """Outputs by name (plus "statement") and the progress events of a finished job."""
    outputs: dict[str, bytearray] = {}
    progress: list[tuple[str, str]] = []
    statement = b""
    for message in messages:
        if isinstance(message, OutputPiece):
            outputs.setdefault(message.name, bytearray()).extend(message.data)
        elif isinstance(message, SignedResult):
            statement = message.data
        else:
            progress.append((message.kind, message.text))
    result = {name: bytes(data) for name, data in outputs.items()}
    result["statement"] = statement
    return result, progress
