"""Bounded byte reader and writer shared by capgroup's wire encodings.

The reader never reads past its window, never allocates more than the bytes it was given, and
turns every malformation into :class:`MetadataDecodeError`, so callers can hand it untrusted
bytes from other group members.
"""

from __future__ import annotations

import math
import struct

_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")

#: A LEB128 varint of a 64-bit value never needs more than 10 bytes; longer is malformed.
_MAX_VARINT_BYTES = 10
INT32_MAX = 2**31 - 1
INT63_MAX = 2**63 - 1


class MetadataDecodeError(ValueError):
    """Bytes from another member could not be decoded; ``reason`` says why.

    ``code`` is a short machine-readable category (``"bad_magic"``, ``"future_major"``,
    ``"truncated"``, ``"too_large"``, ``"invalid_value"``, ``"malformed"``) for log events.
    """

    def __init__(self, reason: str, *, code: str = "malformed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class Reader:
    """A cursor over ``buf[start:end]`` whose reads fail with :class:`MetadataDecodeError`."""

    __slots__ = ("_buf", "_end", "_pos")

    def __init__(self, buf: bytes, start: int = 0, end: int | None = None) -> None:
        self._buf = buf
        self._pos = start
        self._end = len(buf) if end is None else end

    def remaining(self) -> int:
        """Bytes left in this window."""
        return self._end - self._pos

    def _need(self, n: int, what: str) -> int:
        if n > self._end - self._pos:
            raise MetadataDecodeError(
                f"truncated: {what} needs {n} bytes, {self._end - self._pos} left", code="truncated"
            )
        pos = self._pos
        self._pos += n
        return pos

    def tell(self) -> int:
        """The cursor's offset in the underlying buffer."""
        return self._pos

    def copy(self) -> Reader:
        """An independent reader at this one's cursor, over the same window."""
        return Reader(self._buf, self._pos, self._end)

    def peek(self, n: int) -> bytes:
        """Up to ``n`` of the next bytes (fewer at the window's end), without reading them."""
        return self._buf[self._pos : min(self._pos + n, self._end)]

    def raw(self, n: int, what: str) -> bytes:
        """The next ``n`` bytes."""
        pos = self._need(n, what)
        return self._buf[pos : pos + n]

    def u8(self, what: str) -> int:
        """One unsigned byte."""
        return self._buf[self._need(1, what)]

    def uvarint(self, what: str, max_value: int = INT63_MAX) -> int:
        """An unsigned LEB128 varint no larger than ``max_value``."""
        # The bytes are read in place (this is the decoders' innermost loop); running out is
        # reported as reading one more byte would report it.
        buf, pos = self._buf, self._pos
        value = 0
        for k in range(_MAX_VARINT_BYTES):
            if pos + k >= self._end:
                self._pos = self._end
                self._need(1, what)
            byte = buf[pos + k]
            value |= (byte & 0x7F) << (7 * k)
            if not byte & 0x80:
                self._pos = pos + k + 1
                if value > max_value:
                    raise MetadataDecodeError(
                        f"{what} is {value}, above the maximum {max_value}", code="invalid_value"
                    )
                return value
        self._pos = pos + _MAX_VARINT_BYTES
        raise MetadataDecodeError(f"{what}: varint longer than 10 bytes")

    def svarint(self, what: str, lo: int, hi: int) -> int:
        """A zigzag-encoded signed varint within ``[lo, hi]``."""
        raw = self.uvarint(what, max_value=2**64 - 1)
        value = (raw >> 1) ^ -(raw & 1)
        if not lo <= value <= hi:
            raise MetadataDecodeError(
                f"{what} is {value}, outside [{lo}, {hi}]", code="invalid_value"
            )
        return value

    def count(self, what: str, min_item_bytes: int, max_count: int) -> int:
        """An element count, rejected before any allocation if the remaining bytes cannot
        possibly hold that many elements of at least ``min_item_bytes`` each."""
        n = self.uvarint(what, max_value=max_count)
        if n * min_item_bytes > self.remaining():
            raise MetadataDecodeError(
                f"{what} claims {n} entries but only {self.remaining()} bytes remain",
                code="truncated",
            )
        return n

    def f32(self, what: str) -> float:
        """A big-endian IEEE-754 single."""
        pos = self._need(4, what)
        return float(_F32.unpack_from(self._buf, pos)[0])

    def f64(self, what: str) -> float:
        """A big-endian IEEE-754 double."""
        pos = self._need(8, what)
        return float(_F64.unpack_from(self._buf, pos)[0])

    def text(self, what: str, max_bytes: int) -> str:
        """A varint-length-prefixed UTF-8 string of at most ``max_bytes`` bytes."""
        n = self.uvarint(f"{what} length", max_value=max_bytes)
        data = self.raw(n, what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MetadataDecodeError(f"{what} is not valid UTF-8") from exc

    def window(self, n: int, what: str) -> Reader:
        """A sub-reader over the next ``n`` bytes; this reader skips past them."""
        pos = self._need(n, what)
        return Reader(self._buf, pos, pos + n)


class Writer:
    """Appends the primitives :class:`Reader` reads."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def uvarint(self, value: int) -> None:
        """Append an unsigned LEB128 varint."""
        if value < 0:
            raise ValueError(f"uvarint cannot encode negative {value}")
        while value >= 0x80:
            self.buf.append((value & 0x7F) | 0x80)
            value >>= 7
        self.buf.append(value)

    def svarint(self, value: int) -> None:
        """Append a zigzag-encoded signed varint (64-bit range)."""
        self.uvarint((value << 1) ^ (value >> 63))

    def f32(self, value: float) -> None:
        """Append a big-endian single."""
        self.buf += _F32.pack(value)

    def f64(self, value: float) -> None:
        """Append a big-endian double."""
        self.buf += _F64.pack(value)

    def text(self, value: bytes) -> None:
        """Append an already UTF-8-encoded string with its varint length."""
        self.uvarint(len(value))
        self.buf += value

    def field(self, tag: int, payload: bytes | bytearray) -> None:
        """Append one tagged, length-prefixed field."""
        self.uvarint(tag)
        self.uvarint(len(payload))
        self.buf += payload


def float32(value: float) -> float:
    """``value`` rounded to the nearest IEEE-754 single, as the wire carries it."""
    return float(_F32.unpack(_F32.pack(value))[0])


def fits_float32(value: float) -> bool:
    """Whether ``value`` is finite and stays finite as a single."""
    if not math.isfinite(value):
        return False
    try:
        return math.isfinite(float32(value))
    except OverflowError:
        return False
