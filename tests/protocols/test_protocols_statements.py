"""DSSE envelopes (statements.py), the signed documents (documents/) and key handles (keys.py)."""

from __future__ import annotations

import base64
import copy
import json
import os
import pickle
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from protocols import canonical, statements
from protocols.documents import (
    Approval,
    DatasetManifest,
    IdentityDocument,
    JobTerms,
    OutputRecord,
    Recipient,
    Registration,
    ResultStatement,
    check_approvals,
    check_id,
)
from protocols.errors import ConsentError, FormatError, SignatureError
from protocols.keys import HpkePrivateKey, SigningKey, VerifyKey, write_secret_file
from protocols.statements import Envelope

# --- builders -------------------------------------------------------------------


def manifest_for(owner: SigningKey, dataset_id: str = "ds-1") -> DatasetManifest:
    return DatasetManifest(
        dataset_id=dataset_id,
        name="bank transactions",
        owner_key=owner.verify_key,
        schema_sha256="ab" * 32,
        row_count=1000,
        ciphertext_sha256="cd" * 32,
        ciphertext_size=123_456,
        wrapped_key=os.urandom(80),
        sealed_to_mrenclave="ef" * 32,
        sealed_to_hpke_key=HpkePrivateKey.generate().public_key,
        public_schema=[{"name": "amount", "type": "float64"}],
        created_at=1_700_000_000,
    )


def terms_for(proposer: SigningKey, job_id: str = "job-1") -> JobTerms:
    recipient = Recipient("bank-a", proposer.verify_key, HpkePrivateKey.generate().public_key)
    return JobTerms(
        job_id=job_id,
        datasets=[("ds-1", "11" * 32), ("ds-2", "22" * 32)],
        join="horizontal",
        objective="binary:logistic",
        label="fraud",
        params={"max_depth": 4, "eta": 0.3},
        num_rounds=10,
        seed=7,
        allowed_mrenclaves=["ef" * 32],
        outputs=["model", "metrics"],
        recipients=[recipient],
        expires_at=1_800_000_000,
        proposer=proposer.verify_key.hex,
    )


def result_for(terms_env: Envelope) -> ResultStatement:
    return ResultStatement(
        job_id="job-1",
        terms_digest=terms_env.digest,
        mrenclave="ef" * 32,
        outputs=[OutputRecord("model", "aa" * 32, {"bb" * 32: os.urandom(80)})],
        summary={"rounds": 10, "auc": 0.91},
    )


def reencode(envelope: Envelope, **changes: object) -> Envelope:
    """Round-trip through bytes after changing envelope fields."""
    return Envelope.from_bytes(replace(envelope, **changes).to_bytes())  # type: ignore[arg-type]


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


# --- canonical JSON and PAE -------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical.dumps({"b": 1, "a": [1, {"d": "é", "c": None}]}) == (
        '{"a":[1,{"c":null,"d":"é"}],"b":1}'.encode()
    )
    with pytest.raises(ValueError):
        canonical.dumps({"x": float("nan")})


def test_pae_matches_dsse_spec() -> None:
    # The example from the DSSE protocol description.
    assert statements.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert statements.pae("é", b"") == b"DSSEv1 2 \xc3\xa9 0 "


def test_envelope_wire_form() -> None:
    key = SigningKey.generate()
    env = statements.sign("t", {"x": 1}, key)
    doc = json.loads(env.to_bytes())
    assert doc == {
        "payloadType": "t",
        "payload": base64.b64encode(b'{"x":1}').decode(),
        "signatures": [
            {"keyid": key.verify_key.hex, "sig": base64.b64encode(env.signature).decode()}
        ],
    }
    assert env.to_bytes() == canonical.dumps(doc)
    assert Envelope.from_bytes(env.to_bytes()) == env
    assert env.digest == canonical.sha256_hex(b'{"x":1}')


# --- sign / verify ----------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    key = SigningKey.generate()
    env = statements.sign(statements.APPROVAL, {"a": 1}, key)
    assert statements.verify(env, statements.APPROVAL, key.verify_key, "x") == {"a": 1}
    assert statements.verify(env, statements.APPROVAL, None, "x") == {"a": 1}


def test_every_flipped_payload_byte_is_refused() -> None:
    key = SigningKey.generate()
    env = statements.sign(statements.APPROVAL, {"job_id": "j", "terms_digest": "00"}, key)
    for i in range(len(env.payload)):
        bad = reencode(env, payload=flip(env.payload, i))
        with pytest.raises(SignatureError, match="approval: signature does not verify"):
            statements.verify(bad, statements.APPROVAL, key.verify_key, "approval")


def test_flipped_signature_byte_is_refused() -> None:
    key = SigningKey.generate()
    env = statements.sign(statements.APPROVAL, {"a": 1}, key)
    bad = reencode(env, signature=flip(env.signature, 10))
    with pytest.raises(SignatureError, match="signature does not verify"):
        statements.verify(bad, statements.APPROVAL, None, "approval")


def test_wrong_payload_type() -> None:
    key = SigningKey.generate()
    env = statements.sign(statements.APPROVAL, {"a": 1}, key)
    with pytest.raises(FormatError, match=r"has type .*approval.* expected .*job-terms"):
        statements.verify(env, statements.JOB_TERMS, key.verify_key, "job terms")


def test_payload_type_is_signed() -> None:
    """Relabelling an envelope with another type breaks the PAE signature."""
    key = SigningKey.generate()
    env = statements.sign(statements.APPROVAL, {"a": 1}, key)
    relabelled = reencode(env, payload_type=statements.JOB_TERMS)
    with pytest.raises(SignatureError, match="signature does not verify"):
        statements.verify(relabelled, statements.JOB_TERMS, None, "job terms")


def test_envelope_claiming_another_keyid() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    env = statements.sign(statements.APPROVAL, {"a": 1}, key)
    claimed = reencode(env, signer=other.verify_key)
    with pytest.raises(SignatureError, match="signature does not verify"):
        statements.verify(claimed, statements.APPROVAL, None, "approval")
    with pytest.raises(SignatureError, match="signature does not verify"):
        statements.verify(claimed, statements.APPROVAL, other.verify_key, "approval")


def test_envelope_by_unexpected_key() -> None:
    key, expected = SigningKey.generate(), SigningKey.generate()
    env = statements.sign(statements.APPROVAL, {"a": 1}, key)
    with pytest.raises(SignatureError, match=f"signed by key {key.verify_key.hex[:16]}"):
        statements.verify(env, statements.APPROVAL, expected.verify_key, "approval")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "no field 'payloadType'"),
        ({"payloadType": 1, "payload": "", "signatures": []}, "'payloadType' must be str"),
        ({"payloadType": "t", "payload": "!!", "signatures": []}, "payload is not valid base64"),
        ({"payloadType": "t", "payload": "", "signatures": []}, "exactly one signature"),
        ({"payloadType": "t", "payload": "", "signatures": [1]}, "exactly one signature"),
        (
            {"payloadType": "t", "payload": "", "signatures": [{"keyid": "zz", "sig": ""}]},
            "not a hex Ed25519 public key",
        ),
        (
            {"payloadType": "t", "payload": "", "signatures": [{"keyid": "00", "sig": ""}]},
            "32 bytes, got 1",
        ),
    ],
)
def test_malformed_envelope(doc: dict[str, object], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Envelope.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[1]", b"nul"])
def test_envelope_not_json_object(data: bytes) -> None:
    with pytest.raises(FormatError, match="signed statement"):
        Envelope.from_bytes(data)


@pytest.mark.parametrize(
    "data", [b"[" * 100_000, b'{"payloadType":' + b"1" * 5000 + b"}"], ids=["deep", "bigint"]
)
def test_hostile_json_raises_format_error(data: bytes) -> None:
    """canonical.loads must turn every JSON failure into FormatError.

    Today a deeply nested document escapes as RecursionError and an integer of more than
    4300 digits as a bare ValueError, because only JSONDecodeError is caught.
    """
    with pytest.raises(FormatError, match="not valid JSON"):
        Envelope.from_bytes(data)


# --- documents ---------------------------------------------------------------------


def test_registration_round_trip_and_wrong_signer() -> None:
    key = SigningKey.generate()
    reg = Registration("bank-a", key.verify_key, HpkePrivateKey.generate().public_key)
    env = Envelope.from_bytes(reg.sign(key).to_bytes())
    assert Registration.verify(env) == reg
    other = SigningKey.generate()
    with pytest.raises(SignatureError, match="not signed by the key it registers"):
        Registration.verify(reg.sign(other))


def test_registration_name_is_checked() -> None:
    key = SigningKey.generate()
    doc = Registration("bank-a", key.verify_key, HpkePrivateKey.generate().public_key).to_dict()
    doc["name"] = "bank a/../b"
    with pytest.raises(FormatError, match="party name"):
        Registration.from_dict(doc)


def test_identity_document_round_trip() -> None:
    key = SigningKey.generate()
    ident = IdentityDocument("sim", HpkePrivateKey.generate().public_key, key.verify_key, "00" * 32)
    env = statements.sign(statements.IDENTITY, ident.to_dict(), key)
    doc = statements.verify(env, statements.IDENTITY, None, "identity document")
    assert IdentityDocument.from_dict(doc) == ident


def test_dataset_manifest_round_trip() -> None:
    owner = SigningKey.generate()
    manifest = manifest_for(owner)
    env = Envelope.from_bytes(manifest.sign(owner).to_bytes())
    assert DatasetManifest.verify(env) == manifest


def test_dataset_manifest_without_public_schema_round_trip() -> None:
    owner = SigningKey.generate()
    manifest = replace(manifest_for(owner), public_schema=None)
    assert "public_schema" not in manifest.to_dict()
    assert DatasetManifest.verify(manifest.sign(owner)) == manifest


def test_dataset_manifest_signed_by_non_owner() -> None:
    owner, intruder = SigningKey.generate(), SigningKey.generate()
    env = manifest_for(owner).sign(intruder)
    with pytest.raises(SignatureError, match="'ds-1' is not signed by its owner"):
        DatasetManifest.verify(env)


def test_dataset_manifest_flipped_byte() -> None:
    owner = SigningKey.generate()
    env = manifest_for(owner).sign(owner)
    bad = reencode(env, payload=flip(env.payload, len(env.payload) // 2))
    with pytest.raises(SignatureError, match="dataset manifest: signature does not verify"):
        DatasetManifest.verify(bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("row_count"), "no field 'row_count'"),
        (lambda d: d.update(row_count=True), "'row_count' must be an integer"),
        (lambda d: d.update(version=2), "unsupported version 2"),
        (lambda d: d.update(dataset_id="has space"), "dataset id"),
        (lambda d: d.update(wrapped_key="***"), "wrapped key is not valid base64"),
        (lambda d: d.update(public_schema=[{"name": 1}]), "public_schema"),
        (lambda d: d["sealed_to"].pop("mrenclave"), "no field 'mrenclave'"),
    ],
)
def test_dataset_manifest_bad_fields(change, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = copy.deepcopy(manifest_for(SigningKey.generate()).to_dict())
    change(doc)
    with pytest.raises(FormatError, match=message):
        DatasetManifest.from_dict(doc)


def test_job_terms_round_trip() -> None:
    proposer = SigningKey.generate()
    terms = terms_for(proposer)
    env = Envelope.from_bytes(terms.sign(proposer).to_bytes())
    assert JobTerms.verify(env) == terms


def test_job_terms_proposer_mismatch() -> None:
    proposer, other = SigningKey.generate(), SigningKey.generate()
    env = terms_for(proposer).sign(other)
    with pytest.raises(SignatureError, match="not signed by the proposer"):
        JobTerms.verify(env)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(datasets=[]), "name no data set"),
        (lambda d: d.update(join="vertical-ish"), "join 'vertical-ish'"),
        (lambda d: d["release"].update(outputs=["plaintext-rows"]), "output 'plaintext-rows'"),
        (lambda d: d["release"].update(recipients=[]), "no recipient"),
        (lambda d: d.update(num_rounds=0), "num_rounds must be 1–100000"),
        (lambda d: d.update(id_column=3), "id_column"),
        (lambda d: d.update(job_id=""), "job id"),
    ],
)
def test_job_terms_bad_fields(change, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = copy.deepcopy(terms_for(SigningKey.generate()).to_dict())
    change(doc)
    with pytest.raises(FormatError, match=message):
        JobTerms.from_dict(doc)


@pytest.mark.parametrize("bad", ["ds-1\n", "", ".hidden", "a" * 129, "a/b", "a b", "é"])
def test_ids_are_strictly_checked(bad: str) -> None:
    """Ids are 1–128 of [A-Za-z0-9._-], starting alphanumeric: nothing else, no newline.

    The check uses re.match with ``$``, which also matches before a trailing newline,
    so "ds-1\\n" is accepted today.
    """
    with pytest.raises(FormatError, match="dataset id must be 1–128"):
        check_id(bad, "dataset id")


# --- approvals ---------------------------------------------------------------------


class Scenario:
    def __init__(self) -> None:
        self.proposer = SigningKey.generate()
        self.owner_a = SigningKey.generate()
        self.owner_b = SigningKey.generate()
        self.terms = terms_for(self.proposer)
        self.terms_env = self.terms.sign(self.proposer)
        self.owners = {self.owner_a.verify_key, self.owner_b.verify_key}

    def approve(
        self, key: SigningKey, digest: str | None = None, job_id: str = "job-1"
    ) -> Envelope:
        return Approval(job_id, digest or self.terms_env.digest).sign(key)


def test_all_owners_approved() -> None:
    s = Scenario()
    check_approvals(s.terms_env, s.owners, [s.approve(s.owner_a), s.approve(s.owner_b)])


def test_non_owner_approval_does_not_count_but_is_harmless() -> None:
    s = Scenario()
    approvals = [s.approve(s.owner_a), s.approve(s.owner_b), s.approve(s.proposer)]
    check_approvals(s.terms_env, s.owners, approvals)


def test_missing_approval_names_the_owner_and_the_command() -> None:
    s = Scenario()
    with pytest.raises(ConsentError) as info:
        check_approvals(s.terms_env, s.owners, [s.approve(s.owner_a)])
    message = str(info.value)
    assert s.owner_b.verify_key.hex[:16] in message
    assert s.owner_a.verify_key.hex[:16] not in message
    assert "detente party approve" in message
    assert "'job-1'" in message


def test_no_approvals_at_all() -> None:
    s = Scenario()
    with pytest.raises(ConsentError, match=r"lacks the approval of .*detente party approve"):
        check_approvals(s.terms_env, s.owners, [])


def test_approval_over_different_terms() -> None:
    s = Scenario()
    other_terms = replace(s.terms, num_rounds=11).sign(s.proposer)
    approvals = [s.approve(s.owner_a), s.approve(s.owner_b, digest=other_terms.digest)]
    with pytest.raises(ConsentError, match="over different job terms") as info:
        check_approvals(s.terms_env, s.owners, approvals)
    assert s.owner_b.verify_key.hex[:16] in str(info.value)


def test_approval_for_another_job() -> None:
    s = Scenario()
    approvals = [s.approve(s.owner_a), s.approve(s.owner_b, job_id="job-2")]
    with pytest.raises(ConsentError, match="different job terms"):
        check_approvals(s.terms_env, s.owners, approvals)


def test_forged_approval() -> None:
    s = Scenario()
    good = s.approve(s.owner_b)
    forged = replace(s.approve(s.proposer), signer=s.owner_b.verify_key)
    with pytest.raises(ConsentError, match="approval of job 'job-1' is invalid"):
        check_approvals(s.terms_env, s.owners, [s.approve(s.owner_a), forged])
    # and the genuine one still passes
    check_approvals(s.terms_env, s.owners, [s.approve(s.owner_a), good])


def test_approval_with_wrong_payload_type() -> None:
    s = Scenario()
    wrong = statements.sign(
        statements.JOB_TERMS, Approval("job-1", s.terms_env.digest).to_dict(), s.owner_b
    )
    with pytest.raises(ConsentError, match="invalid"):
        check_approvals(s.terms_env, s.owners, [s.approve(s.owner_a), wrong])


# --- result statement --------------------------------------------------------------


def test_result_statement_round_trip() -> None:
    s = Scenario()
    enclave = SigningKey.generate()
    result = result_for(s.terms_env)
    env = Envelope.from_bytes(result.sign(enclave).to_bytes())
    assert ResultStatement.verify(env, enclave.verify_key) == result


def test_result_statement_by_other_key() -> None:
    s = Scenario()
    enclave, impostor = SigningKey.generate(), SigningKey.generate()
    env = result_for(s.terms_env).sign(impostor)
    with pytest.raises(SignatureError, match="not the attested enclave key"):
        ResultStatement.verify(env, enclave.verify_key)


def test_result_statement_relabelled_signer() -> None:
    s = Scenario()
    enclave, impostor = SigningKey.generate(), SigningKey.generate()
    env = replace(result_for(s.terms_env).sign(impostor), signer=enclave.verify_key)
    with pytest.raises(SignatureError, match="result statement: signature does not verify"):
        ResultStatement.verify(env, enclave.verify_key)


def test_result_statement_flipped_byte() -> None:
    s = Scenario()
    enclave = SigningKey.generate()
    env = result_for(s.terms_env).sign(enclave)
    bad = replace(env, payload=flip(env.payload, 5))
    with pytest.raises(SignatureError, match="signature does not verify"):
        ResultStatement.verify(bad, enclave.verify_key)


# --- key handles -------------------------------------------------------------------


@pytest.mark.parametrize("make", [SigningKey.generate, HpkePrivateKey.generate])
def test_private_key_handles_do_not_show_or_pickle(make) -> None:  # type: ignore[no-untyped-def]
    key = make()
    raw = key.private_raw()
    for text in (repr(key), str(key), f"{key}", f"{key!r}", repr([key])):
        assert raw.hex() not in text
        assert raw.hex().upper() not in text
        assert repr(raw) not in text
        assert "secret" in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(key)


def test_private_key_raw_round_trip() -> None:
    key = SigningKey.generate()
    assert SigningKey.from_raw(key.private_raw()).verify_key == key.verify_key
    hkey = HpkePrivateKey.generate()
    assert HpkePrivateKey.from_raw(hkey.private_raw()).public_key == hkey.public_key
    with pytest.raises(FormatError, match="32 bytes"):
        SigningKey.from_raw(b"x")
    with pytest.raises(FormatError, match="32 bytes"):
        HpkePrivateKey.from_raw(b"x")


def test_verify_key_rejects_wrong_length() -> None:
    with pytest.raises(FormatError, match="32 bytes, got 31"):
        VerifyKey(bytes(31))
    with pytest.raises(FormatError, match="not a hex"):
        VerifyKey.from_hex("xyz")


def test_write_secret_file_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.key"
    write_secret_file(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Overwriting a file that was world-readable leaves it 0600.
    path.chmod(0o644)
    write_secret_file(path, b"secret2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"secret2"
    assert not list(path.parent.glob("*.tmp"))


# ---------------------------------------------------------------- strict fields (SPEC §10)


@pytest.mark.parametrize("spelling", ["AB" * 32, "ab " * 21 + "a", "0x" + "ab" * 31])
def test_keys_and_digests_have_one_spelling(spelling: str) -> None:
    """Two spellings of one value would give two digests of one document: refused."""
    with pytest.raises(FormatError, match="not a hex Ed25519 public key"):
        VerifyKey.from_hex(spelling)
    approval = {"version": 1, "job_id": "job-1", "terms_digest": spelling}
    with pytest.raises(FormatError, match="terms_digest' must be"):
        Approval.from_dict(approval)


def test_a_digest_of_the_wrong_length_and_a_negative_size_are_refused() -> None:
    with pytest.raises(FormatError, match="64 lowercase hex digits"):
        Approval.from_dict({"version": 1, "job_id": "job-1", "terms_digest": "ab" * 31})
    key = SigningKey.generate()
    manifest = DatasetManifest(
        dataset_id="ds",
        name="",
        owner_key=key.verify_key,
        schema_sha256="00" * 32,
        row_count=1,
        ciphertext_sha256="00" * 32,
        ciphertext_size=10,
        wrapped_key=b"k",
        sealed_to_mrenclave="ab" * 32,
        sealed_to_hpke_key=HpkePrivateKey.generate().public_key,
    ).to_dict()
    for name in ("row_count", "ciphertext_size"):
        with pytest.raises(FormatError, match=f"'{name}' must not be negative"):
            DatasetManifest.from_dict({**manifest, name: -1})


# ---------------------------------------------------------------- job terms: joins and training


def test_terms_carry_vertical_joins_and_training_choices_through_their_bytes() -> None:
    key = SigningKey.generate()
    base = terms_for(key)
    terms = replace(
        base,
        join="vertical",
        datasets=[("ds-a", "aa" * 32), ("ds-b", "bb" * 32)],
        id_columns={"ds-a": "customer", "ds-b": "client_id"},
        min_rows=500,
        validation_fraction=0.2,
        early_stopping_rounds=10,
        metrics_every=5,
        model_format="ubj",
        objective="multi:softprob",
        params={**base.params, "num_class": 3},
        outputs=["model", "metrics", "importance"],
    )
    again = JobTerms.verify(Envelope.from_bytes(terms.sign(key).to_bytes()))
    assert again == terms
    assert again.id_column_of("ds-a") == "customer" and again.id_column_of("x") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"join": "vertical"}, "names the id column of every data set"),
        (
            {"join": "vertical", "id_column": "id", "outputs": ["model", "predictions"]},
            "releases no predictions",
        ),
        ({"early_stopping_rounds": 5}, "needs a validation_fraction above 0"),
        ({"objective": "multi:softmax"}, "needs the parameter num_class"),
        ({"objective": "reg:nonsense"}, "is not one of"),
        ({"validation_fraction": 0.9}, "validation_fraction must be a number from 0 to 0.5"),
        ({"model_format": "pickle"}, "model_format 'pickle' is not one of"),
        ({"min_rows": 0}, "min_rows must be a positive integer"),
    ],
)
def test_terms_that_cannot_run_are_refused_when_read(change: dict, message: str) -> None:
    key = SigningKey.generate()
    bad = replace(terms_for(key), **change)
    with pytest.raises(FormatError, match=message):
        JobTerms.verify(Envelope.from_bytes(bad.sign(key).to_bytes()))
