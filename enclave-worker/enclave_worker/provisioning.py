"""Workers of one measurement share one identity: attested key provisioning (ShareIdentity).

Parties seal their data to an enclave's attested HPKE key and verify results
under its signing key. A pool whose workers each made their own keys could run
a job only on the worker its data was sealed to; so a worker started with
``--join HOST:PORT`` gets the identity keys from a worker of the pool, and only
this way (protocols/SPEC.md §9.4):

1. The joining worker reads the provider's RA-TLS certificate and verifies it
   against :func:`peer_policy` — exactly its own MRENCLAVE, and with
   :func:`check_peer` its own MRSIGNER, backend and debug flag — before it
   opens a channel pinned to that certificate. A host that puts another
   process at the address, or a worker of another build, is refused here.
2. On ``ShareIdentity`` it sends a fresh 32-byte nonce. The provider answers
   with its own nonce and its evidence for the joiner's nonce; the joiner
   verifies that evidence under the same rules, and that it names the TLS key
   of the certificate it connected to (the evidence comes from the endpoint
   itself, not relayed from elsewhere).
3. The joiner sends its evidence for the provider's nonce: an identity document
   signed by a one-time Ed25519 key and naming a one-time ML-KEM-768+X25519
   key, both made in its enclave for this call and never stored. The provider
   verifies it under the same rules — so keys go only to an enclave of its
   own measurement, signer, backend and debug flag (a debug enclave never
   gets keys from a production one), whatever the caller claims.
4. The provider wraps a fresh 32-byte key to that one-time key (HPKE, ``info``
   = ``"detente/v1 share-identity "`` ‖ provider nonce ‖ joiner nonce) and
   seals its private keys with it (STREAM, associated data
   ``"detente/v1 share-identity " ‖ MRENCLAVE``), over the TLS channel.
5. The joiner opens them, checks that their public keys are exactly those the
   provider's evidence names, records the provider's withdrawn list that came
   sealed with them (enclave_worker.withdrawals: each owner's statement checked
   against its manifest), and only then seals the keys to its own encrypted
   mount, as a worker seals keys it made itself (enclave_worker.identity). From
   then on it presents that identity, with an RA-TLS key of its own, and
   refuses every data set the pool refuses.

A joiner that already holds an identity refuses a different one (it never
replaces its keys silently). Nothing here logs or raises key material: errors
name rules and key fingerprints (public key prefixes) only.

On the ``sim`` backend this is a SIMULATION: each simulated machine has a root
of its own (libos.sim), standing in for Intel's, so a worker trusts its own and
those its operator names with ``--pool-simulation-root`` (the other simulated
machines of the pool; two instances of one build cannot share one simulated
platform, whose rollback counters are per measurement); whoever runs the host
can forge evidence under any of them. On hardware the rules need the quote's TCB collateral, which
workers do not fetch yet: a hardware worker's join is refused by the ``tcb``
rule.
"""

from __future__ import annotations

import logging
import queue
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc

from enclave_worker import withdrawals
from enclave_worker.identity import EnclaveIdentity, load_sealed, seal
from libos.runtime import Runtime
from protocols import canonical, hpke, ratls, statements, stream, tls
from protocols.attestation import (
    NONCE_SIZE,
    Evidence,
    EvidenceRefused,
    VerifiedEnclave,
    report_data_for,
    verify_evidence,
)
from protocols.documents import IdentityDocument
from protocols.errors import AttestationError, DetenteError, FormatError, SetupError
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.keys import HpkePrivateKey, Kem, SigningKey
from protocols.policy import AttestationPolicy
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc

log = logging.getLogger("enclave_worker.provisioning")

_CONTEXT = b"detente/v1 share-identity "
# Both sides answer a nonce at once: evidence older than this is not fresh.
EVIDENCE_AGE_SECONDS = 300
JOIN_TIMEOUT = 60.0
_WRAPPED_SIZE = hpke.wrapped_size(Kem.MLKEM768_X25519)


def peer_policy(runtime: Runtime, pool_roots: tuple[str, ...] = ()) -> AttestationPolicy:
    """The rules a worker holds a peer of its pool to: its own MRENCLAVE, and debug and
    simulation evidence only if it is such an enclave itself — simulation evidence under its
    own simulated root or one of ``pool_roots`` (the pool's other simulated machines)."""
    if pool_roots and not runtime.simulation:
        raise SetupError(
            "--pool-simulation-root is for workers on the sim backend; hardware workers "
            "trust Intel's root only"
        )
    roots = (runtime.root_fingerprint, *pool_roots) if runtime.simulation else ()
    return AttestationPolicy(
        mrenclave=(runtime.mrenclave,),
        allow_debug=runtime.debug,
        allow_simulation=runtime.simulation,
        simulation_roots=roots,
        max_evidence_age_seconds=EVIDENCE_AGE_SECONDS,
    )


def check_peer(runtime: Runtime, peer: VerifiedEnclave, who: str) -> None:
    """What the policy does not pin: the same MRSIGNER, backend and debug flag as this worker."""
    problems = []
    if peer.mrsigner != runtime.mrsigner:
        problems.append(f"MRSIGNER {peer.mrsigner[:16]}… is not this worker's")
    if peer.simulation != runtime.simulation or peer.identity.backend != runtime.backend:
        problems.append(f"backend {peer.identity.backend!r} is not this worker's")
    if bool(peer.quote.quote.debug) != runtime.debug:
        problems.append("its debug flag differs from this worker's")
    if problems:
        raise AttestationError(
            f"{who} is not a worker of this pool: {'; '.join(problems)}; only workers of one "
            "build (same MRENCLAVE, MRSIGNER, backend and debug flag) share an identity"
        )


def _verify(
    runtime: Runtime, roots: tuple[str, ...], evidence: Evidence, nonce: bytes, who: str
) -> VerifiedEnclave:
    try:
        peer = verify_evidence(evidence, nonce, peer_policy(runtime, roots), datetime.now(UTC))
    except EvidenceRefused as exc:
        failed = "; ".join(f"{r.name}: {r.detail}" for r in exc.verdict if not r.passed)
        raise AttestationError(f"{who}'s evidence is refused — {failed}") from None
    check_peer(runtime, peer, who)
    return peer


def _evidence(message: Any) -> Evidence:
    return Evidence(bytes(message.identity), bytes(message.quote), str(message.backend))


def _nonce(data: bytes, who: str) -> bytes:
    if len(data) != NONCE_SIZE:
        raise FormatError(f"{who}'s nonce must be {NONCE_SIZE} bytes, got {len(data)}")
    return bytes(data)


def _info(provider_nonce: bytes, joiner_nonce: bytes) -> bytes:
    return _CONTEXT + provider_nonce + joiner_nonce


# --- the provider: a worker of the pool --------------------------------------------


def share(
    runtime: Runtime,
    identity: EnclaveIdentity,
    requests: Iterator[Any],
    pool_roots: tuple[str, ...] = (),
) -> Iterator[Any]:
    """The provider's side of ShareIdentity: yields the challenge, then the sealed keys."""
    first = next(requests, None)
    if first is None or not first.HasField("nonce"):
        raise FormatError("ShareIdentity must start with the joining worker's nonce")
    joiner_nonce = _nonce(first.nonce, "the joining worker")
    nonce = secrets.token_bytes(NONCE_SIZE)
    mine = identity.evidence(runtime, joiner_nonce)
    yield enclave_pb2.ShareIdentityResponse(
        challenge=enclave_pb2.ShareIdentityChallenge(
            nonce=nonce,
            evidence=enclave_pb2.Evidence(
                identity=mine.identity, quote=mine.quote, backend=mine.backend
            ),
        )
    )
    second = next(requests, None)
    if second is None or not second.HasField("evidence"):
        raise FormatError("ShareIdentity takes the joining worker's evidence second")
    joiner = _verify(runtime, pool_roots, _evidence(second.evidence), nonce, "the joining worker")
    one_time = joiner.identity.hpke_pq_key
    if one_time is None:
        raise FormatError(
            "the joining worker's evidence names no ML-KEM-768+X25519 key to seal the keys to"
        )
    key = secrets.token_bytes(stream.KEY_SIZE)
    wrapped = hpke.wrap_key(key, one_time, _info(nonce, joiner_nonce))
    # The withdrawn list travels with the keys: a worker that can open the pool's data
    # must refuse what the pool refuses (enclave_worker.withdrawals).
    fs = runtime.default_mount()
    withdrawn = withdrawals.Withdrawals(fs).export() if fs is not None else []
    keys = canonical.dumps({**identity.private_keys(), "withdrawn": withdrawn})
    sealed = stream.seal_stream(key, keys, _CONTEXT + runtime.mrenclave.encode())
    del key, keys
    log.info(
        "shared this enclave's identity with a joining worker of its measurement "
        "(one-time key %s…)",
        joiner.identity.signing_key.hex[:16],
    )
    yield enclave_pb2.ShareIdentityResponse(sealed_keys=wrapped + sealed)


# --- the joiner: a worker started with --join --------------------------------------


def _one_time_evidence(runtime: Runtime, nonce: bytes) -> tuple[Evidence, HpkePrivateKey]:
    """Evidence for ``nonce`` naming one-time keys made for this call (never stored)."""
    signing = SigningKey.generate()
    one_time = HpkePrivateKey.generate(Kem.MLKEM768_X25519)
    document = IdentityDocument(
        backend=runtime.backend,
        hpke_key=HpkePrivateKey.generate().public_key,  # unused; the document requires one
        signing_key=signing.verify_key,
        tls_public_key_sha256="",
        hpke_pq_key=one_time.public_key,
    )
    envelope = statements.sign(statements.IDENTITY, document.to_dict(), signing)
    quote = runtime.quote(report_data_for(envelope.payload, nonce))
    return Evidence(envelope.to_bytes(), quote, runtime.backend), one_time


def _same_keys(received: EnclaveIdentity, named: IdentityDocument) -> bool:
    pq = received.hpke_pq_key.public_key if received.hpke_pq_key is not None else None
    return (
        received.signing_key.verify_key == named.signing_key
        and received.hpke_key.public_key == named.hpke_key
        and pq == named.hpke_pq_key
    )


def _fingerprint(identity: IdentityDocument | EnclaveIdentity) -> str:
    if isinstance(identity, EnclaveIdentity):
        return identity.signing_key.verify_key.hex[:16] + "…"
    return identity.signing_key.hex[:16] + "…"


def join(runtime: Runtime, address: str, pool_roots: tuple[str, ...] = ()) -> EnclaveIdentity:
    """Get the pool's identity from the worker at ``address``; seal it; return it.

    Raises AttestationError if either side refuses the other, SetupError if
    this worker already holds a different identity, EnclaveUnavailable-like
    SetupError if the provider cannot be reached.
    """
    policy = peer_policy(runtime, pool_roots)
    try:
        der = tls.peer_certificate(address, JOIN_TIMEOUT)
    except (OSError, FormatError) as exc:
        raise SetupError(
            f"cannot reach the pool's worker at {address} over TLS ({exc}); start it first, "
            "or give --join the address of a running worker of the pool"
        ) from None
    try:
        certified = ratls.verify_ratls_certificate(der, policy)
    except AttestationError as exc:
        raise AttestationError(
            f"the worker at {address} is refused as a source of this enclave's keys: {exc}"
        ) from None
    check_peer(runtime, certified, f"the worker at {address}")
    held = load_sealed(runtime)
    if held is not None:
        # The certificate's evidence names the pool's public keys: no key needs to travel.
        if not _same_keys(held, certified.identity):
            raise SetupError(
                f"this worker already holds its own identity (signing key "
                f"{_fingerprint(held)}), not the pool's ({_fingerprint(certified.identity)}): "
                "it does not replace its keys. Start it without --join to keep its identity, "
                "or start a fresh instance (a new ENCLAVE_DIR) with --join"
            )
        log.info("joined the pool again: this worker already holds its identity")
        return held
    certificate = tls.load_certificate(der, "the pool worker's certificate")
    received, named, withdrawn = _exchange(runtime, pool_roots, address, certificate)
    if named.tls_public_key_sha256 != tls.public_key_sha256(certificate):
        raise AttestationError(
            f"the worker at {address} answered with evidence that names another TLS key than "
            "the certificate it presented: the evidence was relayed from elsewhere"
        )
    if not _same_keys(received, named):
        raise AttestationError(
            f"the worker at {address} sent keys other than those its evidence names"
        )
    # The pool's withdrawn list first: keys are never kept without it.
    fs = runtime.default_mount()
    if fs is not None:
        adopted = withdrawals.Withdrawals(fs).adopt(withdrawn)
        log.info("joined the pool at %s: %d withdrawn data set(s) recorded", address, adopted)
    elif withdrawn:
        raise SetupError(
            "this worker has no rollback-protected encrypted mount to keep the pool's "
            f"withdrawn list ({len(withdrawn)} data set(s)) in, so it would run data their "
            "owners withdrew: it does not join; give it such a mount (docs/libos.md)"
        )
    seal(runtime, received)
    log.info("joined the pool at %s: identity %s sealed", address, _fingerprint(named))
    return received


def _exchange(
    runtime: Runtime, roots: tuple[str, ...], address: str, certificate: Any
) -> tuple[EnclaveIdentity, IdentityDocument, Any]:
    """The ShareIdentity call: nonces, evidence both ways, the sealed keys opened; with
    the provider's withdrawn list (records, checked when adopted)."""
    requests: queue.Queue[Any] = queue.Queue()
    nonce = secrets.token_bytes(NONCE_SIZE)
    requests.put(enclave_pb2.ShareIdentityRequest(nonce=nonce))
    with tls.pinned_channel(address, certificate, CHANNEL_OPTIONS) as channel:
        call = enclave_pb2_grpc.EnclaveStub(channel).ShareIdentity(
            iter(requests.get, None), timeout=JOIN_TIMEOUT
        )
        try:
            first = next(call)
            if not first.HasField("challenge"):
                raise FormatError(f"the worker at {address} did not answer with its challenge")
            provider_nonce = _nonce(first.challenge.nonce, f"the worker at {address}")
            provider = _verify(
                runtime,
                roots,
                _evidence(first.challenge.evidence),
                nonce,
                f"the worker at {address}",
            )
            evidence, one_time = _one_time_evidence(runtime, provider_nonce)
            requests.put(
                enclave_pb2.ShareIdentityRequest(
                    evidence=enclave_pb2.Evidence(
                        identity=evidence.identity, quote=evidence.quote, backend=evidence.backend
                    )
                )
            )
            last = next(call)
            requests.put(None)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else ""
            raise AttestationError(
                f"the worker at {address} refused to share its identity "
                f"({code.name if code else 'UNKNOWN'}: {details})"
            ) from None
        finally:
            requests.put(None)
    if not last.HasField("sealed_keys") or len(last.sealed_keys) <= _WRAPPED_SIZE:
        raise FormatError(f"the worker at {address} did not send the sealed keys")
    blob = bytes(last.sealed_keys)
    try:
        key = hpke.unwrap_key(blob[:_WRAPPED_SIZE], one_time, _info(provider_nonce, nonce))
        keys = canonical.loads(
            stream.open_stream(key, blob[_WRAPPED_SIZE:], _CONTEXT + runtime.mrenclave.encode()),
            "shared identity",
        )
    except DetenteError:
        raise AttestationError(
            f"the keys from the worker at {address} do not open with this call's one-time key"
        ) from None
    withdrawn = keys.pop("withdrawn", []) if isinstance(keys, dict) else []
    received = EnclaveIdentity.from_private_keys(
        keys, runtime.backend, runtime.mrenclave, "shared identity"
    )
    return received, provider.identity, withdrawn
