"""Finished offset ranges beyond the committed offset, carried in the OffsetCommit metadata.

Range jobs (issue 14) finish out of order. The scheduler of a partition commits the highest
offset below which every job is done (the *frontier*); the jobs finished beyond it are encoded
here into the commit's metadata string, so a new owner (after a rebalance or a crash) reads
them back with the committed offset and does not redo them.

Wire format. OffsetCommit metadata is a string (the broker caps its length at
``offset.metadata.max.bytes``, 4,096 by default), so the bytes are base64url without padding
behind an ASCII prefix naming the format and its version::

    metadata := "cgr1" kind base64url(body)
    kind     := "R" (run-length) | "B" (bitset) | "Z" (zlib of a run-length body)
    body     := uvarint base | payload
    R, Z     := uvarint n | n x (uvarint gap - 1, uvarint length - 1)
    B        := uvarint nbits - 1 | ceil(nbits / 8) bytes, bit i (LSB first) = base + 1 + i done

``base`` is the committed offset the metadata belongs to; a decoder given another committed
offset (someone committed without metadata, or a stale read) ignores the metadata. Ranges are
half-open, strictly ascending, never adjacent (merged) and all beyond ``base``: ``gap`` is the
distance from the end of the previous range (``base`` for the first) to the start of this one,
so it is at least 1 (the offset at ``base`` is never done: it would have been committed past).
A bitset's last bit is set (canonical). The encoder writes every kind and keeps the shortest
(ties: R, then B, then Z), as parallel-consumer does with its ``OffsetEncoding`` (there: byte
array, bitset, run-length, optionally zstd; the smallest wins).

Decoding is total: :func:`decode_completed` never raises. Foreign metadata (another tool's
string, empty), a future version, truncated or malformed bytes, a compressed body larger than
:data:`MAX_DECOMPRESSED_BYTES` and metadata of another committed offset all decode to
"nothing known beyond the committed offset" with a ``reason``: the only cost is redoing
finished jobs (at-least-once), never skipping unfinished ones.

Sizes (measured by ``tests/protocol/test_completed_ranges.py::test_realistic_sizes``, base
offset 10,000,000; the characters the metadata takes, prefix included):

======================================================================  =====  ====
pattern                                                                 chars  kind
======================================================================  =====  ====
100 jobs of 1,000 records, 10 unfinished scattered (every 10th)            33  Z
100 jobs of 1,000 records, 10 % unfinished at random (seed 14)             63  R
1 straggler, then 500 finished jobs of 1,000 records after it              19  R
1 straggler, then 500 finished jobs, every 2nd one unfinished              45  Z
1 straggler, then 2,000 jobs of 100 records, 10 % unfinished at random    428  Z
alternating done/undone single offsets, 4,000 offsets                      55  Z
2,000 single-record jobs, half of them done at random                     347  B
======================================================================  =====  ====

A range costs two varints (2 to 6 bytes for realistic gaps and job sizes), i.e. 3 to 8
characters after base64: the 75 % budget of a 4,096-byte limit (3,072 characters) holds about
400 to 1,000 irregular ranges, and regular patterns compress far below that.

The scheduler keeps the encoding under 75 % of ``offset.metadata.max.bytes`` *before* it hands
out a job (:func:`worst_case_chars`): every job that can still finish adds at most one range,
so the bound holds whatever order they finish in.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from capgroup.protocol._wire import INT63_MAX, MetadataDecodeError, Reader, Writer

__all__ = [
    "BROKER_DEFAULT_METADATA_MAX_BYTES",
    "DEFAULT_FILL_FRACTION",
    "MAX_DECOMPRESSED_BYTES",
    "PREFIX",
    "CompletedRanges",
    "DecodedRanges",
    "decode_completed",
    "encode_completed",
    "normalize_ranges",
    "worst_case_chars",
]

#: Format and version tag; a different version is "future", anything else "foreign".
PREFIX = "cgr1"
_FAMILY = "cgr"
#: The broker's default ``offset.metadata.max.bytes``.
BROKER_DEFAULT_METADATA_MAX_BYTES = 4096
#: Share of the metadata limit the scheduler fills at most (parallel-consumer's 75 %).
DEFAULT_FILL_FRACTION = 0.75
#: A compressed body never inflates beyond this (a zlib bomb decodes to "too large").
MAX_DECOMPRESSED_BYTES = 1 << 20
#: Offsets a bitset may span; longer is rejected on decode (its encoding would be huge anyway).
_MAX_BITSET_BITS = 8 * MAX_DECOMPRESSED_BYTES
#: Longest uvarint of a 63-bit value.
_MAX_VARINT = 9


@dataclass(frozen=True, slots=True)
class CompletedRanges:
    """Offsets known done beyond ``base`` (the committed offset): half-open ``[start, end)``
    ranges, strictly ascending, not adjacent, every ``start > base``."""

    base: int
    ranges: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.base <= INT63_MAX:
            raise ValueError(f"base offset {self.base} is outside [0, 2**63-1]")
        previous = self.base
        for start, end in self.ranges:
            if not previous < start < end <= INT63_MAX:
                raise ValueError(
                    f"range [{start}, {end}) is empty, not after {previous} or not merged"
                )
            previous = end

    def contains(self, offset: int) -> bool:
        """Whether ``offset`` is known done (it is beyond ``base`` and in a range)."""
        return any(start <= offset < end for start, end in self.ranges)

    @property
    def done_offsets(self) -> int:
        """How many offsets the ranges cover."""
        return sum(end - start for start, end in self.ranges)


@dataclass(frozen=True, slots=True)
class DecodedRanges:
    """What a commit's metadata says: ``ranges`` (empty when nothing is known) and, when the
    metadata was ignored, ``reason`` (``"foreign"``, ``"future_version"``, ``"stale"``,
    ``"truncated"``, ``"too_large"``, ``"invalid_value"``, ``"malformed"``)."""

    ranges: CompletedRanges
    reason: str | None = None
    detail: str = ""


def normalize_ranges(base: int, ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """``ranges`` sorted and merged, empty ones dropped, clipped to offsets beyond ``base``
    (the offset at ``base`` itself is excluded: it is not done, or ``base`` would be later)."""
    merged: list[list[int]] = []
    for start, end in sorted((max(s, base + 1), e) for s, e in ranges):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


def _run_length(completed: CompletedRanges) -> bytes:
    w = Writer()
    w.uvarint(completed.base)
    w.uvarint(len(completed.ranges))
    previous = completed.base
    for start, end in completed.ranges:
        w.uvarint(start - previous - 1)
        w.uvarint(end - start - 1)
        previous = end
    return bytes(w.buf)


def _bitset(completed: CompletedRanges) -> bytes | None:
    if not completed.ranges:
        return None
    nbits = completed.ranges[-1][1] - completed.base - 1
    if nbits > _MAX_BITSET_BITS:
        return None
    bits = bytearray((nbits + 7) // 8)
    for start, end in completed.ranges:
        for offset in range(start, end):
            i = offset - completed.base - 1
            bits[i >> 3] |= 1 << (i & 7)
    w = Writer()
    w.uvarint(completed.base)
    w.uvarint(nbits - 1)
    return bytes(w.buf) + bytes(bits)


def _text(kind: str, body: bytes) -> str:
    return PREFIX + kind + base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


def encode_completed(completed: CompletedRanges) -> str:
    """The metadata string of ``completed``: ``""`` when no range is known, else the shortest
    of the run-length, bitset and compressed encodings."""
    if not completed.ranges:
        return ""
    rle = _run_length(completed)
    candidates = [_text("R", rle)]
    # A bitset only pays for dense patterns; past a few times the RLE's bits it cannot win.
    span = completed.ranges[-1][1] - completed.base
    if span <= 8 * 4 * len(rle):
        bitset = _bitset(completed)
        if bitset is not None:
            candidates.append(_text("B", bitset))
    candidates.append(_text("Z", zlib.compress(rle, 9)))
    return min(candidates, key=len)


def worst_case_chars(completed: CompletedRanges, more_ranges: int, span: int) -> int:
    """An upper bound of the metadata's length once up to ``more_ranges`` ranges more are
    known (each finished job adds at most one), all ending below ``base + span``.

    Bounds the run-length encoding, which the encoder always considers, so the real encoding
    (the shortest) never exceeds it whatever order the jobs finish in.
    """
    if more_ranges < 0 or span < 0:
        raise ValueError("more_ranges and span must be >= 0")
    body = len(_run_length(completed)) if completed.ranges else len(_uvarint(completed.base)) + 1
    per_range = 2 * len(_uvarint(max(span, 1)))
    # The count varint may grow too: allow its longest form.
    body += more_ranges * per_range + _MAX_VARINT
    return len(PREFIX) + 1 + (4 * body + 2) // 3


def _uvarint(value: int) -> bytes:
    w = Writer()
    w.uvarint(value)
    return bytes(w.buf)


def _decode_run_length(r: Reader) -> CompletedRanges:
    base = r.uvarint("base offset")
    # Each range takes at least two bytes, checked before anything is allocated.
    n = r.count("range count", 2, INT63_MAX)
    ranges = []
    previous = base
    for _ in range(n):
        start = previous + 1 + r.uvarint("gap")
        end = start + 1 + r.uvarint("length")
        if end > INT63_MAX:
            raise MetadataDecodeError(f"range end {end} exceeds 2**63-1", code="invalid_value")
        ranges.append((start, end))
        previous = end
    if r.remaining():
        raise MetadataDecodeError(f"{r.remaining()} bytes after the last range")
    return CompletedRanges(base, tuple(ranges))


def _decode_bitset(r: Reader) -> CompletedRanges:
    base = r.uvarint("base offset")
    nbits = r.uvarint("bit count", max_value=_MAX_BITSET_BITS - 1) + 1
    size = (nbits + 7) // 8
    if r.remaining() != size:
        raise MetadataDecodeError(
            f"bitset of {nbits} bits needs {size} bytes, {r.remaining()} given", code="truncated"
        )
    bits = r.raw(size, "bitset")
    if not bits[(nbits - 1) >> 3] >> ((nbits - 1) & 7) & 1:
        raise MetadataDecodeError("the last bit of a bitset must be set")
    if bits[-1] >> (((nbits - 1) & 7) + 1):
        raise MetadataDecodeError("bits set past the bit count")
    ranges: list[tuple[int, int]] = []
    start: int | None = None
    for i in range(nbits):
        done = bits[i >> 3] >> (i & 7) & 1
        if done and start is None:
            start = i
        elif not done and start is not None:
            ranges.append((base + 1 + start, base + 1 + i))
            start = None
    if start is not None:
        ranges.append((base + 1 + start, base + 1 + nbits))
    return CompletedRanges(base, tuple(ranges))


def _body(metadata: str) -> tuple[str, bytes]:
    kind, text = metadata[len(PREFIX)], metadata[len(PREFIX) + 1 :]
    if not text.isascii():
        raise MetadataDecodeError("body is not base64url", code="malformed")
    try:
        padded = text + "=" * (-len(text) % 4)
        body = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MetadataDecodeError(f"body is not base64url: {exc}") from None
    if kind == "Z":
        inflate = zlib.decompressobj()
        try:
            body = inflate.decompress(body, MAX_DECOMPRESSED_BYTES)
        except zlib.error as exc:
            raise MetadataDecodeError(f"compressed body is corrupt: {exc}") from None
        if inflate.unconsumed_tail:
            raise MetadataDecodeError(
                f"compressed body inflates beyond {MAX_DECOMPRESSED_BYTES} bytes",
                code="too_large",
            )
        if not inflate.eof:
            raise MetadataDecodeError("compressed body is truncated", code="truncated")
        if inflate.unused_data:
            raise MetadataDecodeError("bytes after the compressed body")
        kind = "R"
    return kind, body


def decode_completed(metadata: str | None, committed: int | None) -> DecodedRanges:
    """The finished ranges ``metadata`` records beyond ``committed`` (the committed offset it
    was read with); never raises: anything unusable is "nothing known" with a reason."""
    nothing = CompletedRanges(max(committed or 0, 0))
    if committed is None or not metadata:
        return DecodedRanges(nothing, None if not metadata else "stale", "no committed offset")
    if not metadata.startswith(_FAMILY):
        return DecodedRanges(nothing, "foreign", "not a capgroup range encoding")
    if not metadata.startswith(PREFIX):
        return DecodedRanges(nothing, "future_version", f"version {metadata[3:4]!r} unknown")
    if len(metadata) <= len(PREFIX) or metadata[len(PREFIX)] not in "RBZ":
        return DecodedRanges(nothing, "malformed", "unknown encoding kind")
    try:
        kind, body = _body(metadata)
        reader = Reader(body)
        completed = _decode_bitset(reader) if kind == "B" else _decode_run_length(reader)
    except MetadataDecodeError as exc:
        return DecodedRanges(nothing, exc.code, exc.reason)
    except ValueError as exc:  # a range the dataclass refuses (cannot happen when canonical)
        return DecodedRanges(nothing, "invalid_value", str(exc))
    if completed.base != committed:
        return DecodedRanges(
            nothing, "stale", f"metadata is for offset {completed.base}, committed {committed}"
        )
    return DecodedRanges(completed)
