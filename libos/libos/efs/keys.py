"""The keys of an encrypted mount: derived from the sealing secret, never printed or pickled.

Keys (HKDF-SHA256, RFC 5869). The mount key derives from the platform's
sealing secret and the enclave's identity under the mount's key policy, as
a sealing key does (SGX EGETKEY with KEYPOLICY MRENCLAVE or MRSIGNER)::

    mount key = HKDF(sealing secret, info = "detente/v1 efs mount " policy " " identity " " path)

so another MRENCLAVE (mrenclave policy) or another signer (mrsigner policy),
or another platform, derives another key and cannot open the mount. From the
mount key come the name key, the index key, the key id and the counter name;
each write of a file draws a fresh 32-byte salt and derives that version's
keys::

    file keys = HKDF(mount key, salt, info = "detente/v1 efs file " file id)
              -> AES-256-GCM key ‖ HMAC-SHA256 key

Names. The file id is HMAC(name key, "file id" ‖ path) and the host name of a
version is HMAC(name key, "host name" ‖ path ‖ salt): keyed hashes, so the
host cannot guess a path from a name, and a new version never reuses a name.
"""

from __future__ import annotations

import hmac
from typing import NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from libos.efs.format import FILE_ID_SIZE
from libos.sealing import POLICIES
from protocols import canonical
from protocols.errors import FormatError

KEY_ID_SIZE = 16
_INFO_MOUNT = b"detente/v1 efs mount "
_INFO_FILE = b"detente/v1 efs file "


def _hkdf(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


class MountKey:
    """The keys of one mount. Holds secrets: never printed or pickled."""

    def __init__(self, key: bytes, policy: str, mount_path: str) -> None:
        if len(key) != 32:
            raise FormatError(f"a mount key is 32 bytes, got {len(key)}")
        if policy not in POLICIES:
            raise FormatError(f"unknown key policy {policy!r}; use 'mrenclave' or 'mrsigner'")
        self.policy = policy
        self.mount_path = mount_path
        self._key = key
        self._names = _hkdf(key, b"names")
        self._index = AESGCM(_hkdf(key, b"index"))
        self.key_id = _hkdf(key, b"key id", KEY_ID_SIZE)
        # The counter's name is derived too: the platform directory does not
        # learn the mount path, and another key never touches this counter.
        self.counter_name = "efs-" + _hkdf(key, b"counter name", 16).hex()

    @classmethod
    def derive(
        cls, secret: bytes, mrenclave: str, mrsigner: str, policy: str, mount_path: str
    ) -> MountKey:
        """The key of ``mount_path`` for this enclave (``mrenclave``) or signer (``mrsigner``).

        MRENCLAVE and MRSIGNER come as hex; the info string holds their 32 raw bytes.
        """
        if policy not in POLICIES:
            raise FormatError(f"unknown key policy {policy!r}; use 'mrenclave' or 'mrsigner'")
        identity = canonical.unhex(
            mrenclave if policy == "mrenclave" else mrsigner,
            "an enclave identity (MRENCLAVE or MRSIGNER)",
            32,
        )
        info = _INFO_MOUNT + policy.encode() + b" " + identity + b" " + mount_path.encode()
        return cls(_hkdf(secret, info), policy, mount_path)

    def __repr__(self) -> str:
        return f"<MountKey {self.mount_path} policy={self.policy} (secret, not shown)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("MountKey holds a secret key and cannot be pickled")

    def file_id(self, path: str) -> bytes:
        return hmac.digest(self._names, b"file id\0" + path.encode(), "sha256")[:FILE_ID_SIZE]

    def host_name(self, path: str, salt: bytes) -> str:
        digest = hmac.digest(self._names, b"host name\0" + path.encode() + b"\0" + salt, "sha256")
        return digest[:20].hex()

    def file_keys(self, file_id: bytes, salt: bytes) -> tuple[AESGCM, bytes]:
        okm = _hkdf(self._key, _INFO_FILE + file_id, 64, salt=salt)
        return AESGCM(okm[:32]), okm[32:]

    def seal_index(self, header: bytes, nonce: bytes, plaintext: bytes) -> bytes:
        return self._index.encrypt(nonce, plaintext, header)

    def open_index(self, header: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
        return self._index.decrypt(nonce, ciphertext, header)
