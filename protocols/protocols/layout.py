"""Binary layouts described once, as tables of fields (STYLE.md habit 6).

A :class:`Layout` is an ordered table of fixed-size fields. ``unpack`` checks
the length and returns a name → value dict; ``pack`` checks every value's type
and range and writes them at their offsets. Integers are unsigned and
little-endian unless the field says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols.errors import FormatError


@dataclass(frozen=True)
class Field:
    name: str
    size: int
    kind: str = "bytes"  # "bytes" or "uint"
    byteorder: str = "little"


class Layout:
    def __init__(self, what: str, fields: list[Field]) -> None:
        self.what = what
        self.fields = fields
        self.offsets: dict[str, int] = {}
        offset = 0
        for f in fields:
            self.offsets[f.name] = offset
            offset += f.size
        self.size = offset

    def unpack(self, data: bytes) -> dict[str, Any]:
        if len(data) != self.size:
            raise FormatError(f"{self.what} must be {self.size} bytes, got {len(data)}")
        values: dict[str, Any] = {}
        for f in self.fields:
            start = self.offsets[f.name]
            raw = bytes(data[start : start + f.size])
            values[f.name] = (
                int.from_bytes(raw, f.byteorder)  # type: ignore[arg-type]
                if f.kind == "uint"
                else raw
            )
        return values

    def pack(self, values: dict[str, Any]) -> bytes:
        out = bytearray()
        for f in self.fields:
            if f.name not in values:
                raise FormatError(f"{self.what}: field {f.name!r} is missing")
            value = values[f.name]
            if f.kind == "uint":
                if not isinstance(value, int) or not 0 <= value < 1 << (8 * f.size):
                    raise FormatError(f"{self.what}: field {f.name!r} out of range: {value!r}")
                out += value.to_bytes(f.size, f.byteorder)  # type: ignore[arg-type]
            else:
                if not isinstance(value, bytes | bytearray) or len(value) != f.size:
                    raise FormatError(f"{self.what}: field {f.name!r} must be {f.size} bytes")
                out += value
        return bytes(out)
