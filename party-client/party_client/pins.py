"""Known parties: the key first seen for each name, pinned in the party's home.

The coordinator's registry is a convenience, never the authority (docs/architecture.md,
roles): it could list an attacker's self-signed registration under the name of a
party we know. So the first time this party sees a name (listing parties,
proposing, approving), it pins that name's fingerprint (trust on first use);
later, a recipient or registration under that name with other keys is
refused, naming both fingerprints. A fingerprint learned out of band (read
aloud, from a signed e-mail) is pinned with ``detente party pin NAME
FINGERPRINT``, which replaces whatever was seen first.

``known-parties.json`` in the party's home: ``{name: {"fingerprint", "source",
"since"}}`` with source ``first-use`` or ``out-of-band``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from protocols.durable import write_atomic
from protocols.errors import ConsentError, FormatError

FIRST_USE = "first-use"
OUT_OF_BAND = "out-of-band"
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")

PinStatus = Literal["pinned", "new"]


class KeyMismatch(ConsentError):
    """A name comes with keys other than the ones pinned for it."""


def normalise_fingerprint(text: str) -> str:
    """Accept a fingerprint as printed (groups of hex digits, any case, spaces or colons)."""
    cleaned = re.sub(r"[\s:-]", "", text).lower()
    if not _FINGERPRINT.fullmatch(cleaned):
        raise FormatError(
            f"a party fingerprint is 64 hex digits (as `detente party parties` prints it), "
            f"got {text[:80]!r}"
        )
    return cleaned


def show_fingerprint(fingerprint: str) -> str:
    """64 hex digits in groups of four, for reading aloud."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))


@dataclass(frozen=True)
class Pin:
    name: str
    fingerprint: str
    source: str
    since: int


class KnownParties:
    """The pins of one party's home."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Pin]:
        if not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return {
                name: Pin(name, str(v["fingerprint"]), str(v["source"]), int(v["since"]))
                for name, v in doc.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FormatError(
                f"{self.path} is damaged: restore it from a backup (it holds the keys you "
                "trust for each party name)"
            ) from None

    def _save(self, pins: dict[str, Pin]) -> None:
        doc = {
            p.name: {"fingerprint": p.fingerprint, "source": p.source, "since": p.since}
            for p in sorted(pins.values(), key=lambda p: p.name)
        }
        write_atomic(self.path, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")

    def get(self, name: str) -> Pin | None:
        return self._load().get(name)

    def all(self) -> list[Pin]:
        return sorted(self._load().values(), key=lambda p: p.name)

    def check(self, name: str, fingerprint: str, role: str) -> PinStatus:
        """Compare ``name``'s fingerprint with its pin: "pinned" if equal, "new" if none.

        Raises KeyMismatch, naming both fingerprints, if the pin differs.
        ``role`` says where the name came from ("recipient", "registration").
        """
        pin = self.get(name)
        if pin is None:
            return "new"
        if pin.fingerprint != fingerprint:
            raise KeyMismatch(
                f"the {role} {name!r} has fingerprint {show_fingerprint(fingerprint)[:39]}…, but "
                f"you pinned {show_fingerprint(pin.fingerprint)[:39]}… for {name!r} "
                f"({pin.source}): someone may be impersonating {name!r}. Refused. If {name!r} "
                "really has new keys, confirm the new fingerprint with them out of band, then "
                f"run `detente party pin {name} FINGERPRINT`"
            )
        return "pinned"

    def remember(self, name: str, fingerprint: str) -> PinStatus:
        """Check ``name`` and pin it on first use; returns what :meth:`check` found."""
        status = self.check(name, fingerprint, "party")
        if status == "new":
            pins = self._load()
            pins[name] = Pin(name, fingerprint, FIRST_USE, int(time.time()))
            self._save(pins)
        return status

    def pin(self, name: str, fingerprint: str) -> Pin:
        """Pin ``fingerprint`` for ``name`` (learned out of band), replacing any pin."""
        pins = self._load()
        pin = Pin(name, normalise_fingerprint(fingerprint), OUT_OF_BAND, int(time.time()))
        pins[name] = pin
        self._save(pins)
        return pin
