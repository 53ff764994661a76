"""A small bloom filter: a bit array and double hashing over one BLAKE2b digest.

Sized for ``capacity`` keys at false-positive rate ``fp_rate`` with the textbook formulas
``m = -n ln p / (ln 2)^2`` bits and ``k = (m / n) ln 2`` hash functions. The ``k`` positions
come from two 64-bit halves of one digest (Kirsch and Mitzenmacher), which keeps the rate of
``k`` independent hashes at a fraction of the cost.
"""

from __future__ import annotations

import hashlib
import math
import struct

#: Serialised header: magic, version, bit count, hash count, keys added.
_HEADER = struct.Struct(">4sBQBQ")
_MAGIC = b"CGBF"
_VERSION = 1


class BloomFilter:
    """Set membership with false positives but never false negatives."""

    __slots__ = ("bits", "count", "hashes", "size")

    def __init__(self, size: int, hashes: int, bits: bytearray | None = None, count: int = 0):
        if size < 8 or hashes < 1:
            raise ValueError(
                f"a bloom filter needs at least 8 bits and 1 hash, got {size}/{hashes}"
            )
        self.size = size
        self.hashes = hashes
        self.bits = bits if bits is not None else bytearray((size + 7) // 8)
        if len(self.bits) != (size + 7) // 8:
            raise ValueError(f"{len(self.bits)} bytes do not hold {size} bits")
        self.count = count

    @classmethod
    def for_capacity(cls, capacity: int, fp_rate: float) -> BloomFilter:
        """An empty filter for ``capacity`` keys at false-positive rate ``fp_rate``."""
        if not 0.0 < fp_rate < 1.0:
            raise ValueError(f"fp_rate must be in (0, 1), got {fp_rate}")
        n = max(1, capacity)
        size = max(8, math.ceil(-n * math.log(fp_rate) / math.log(2) ** 2))
        hashes = max(1, round(size / n * math.log(2)))
        return cls(size, hashes)

    def _positions(self, key: bytes) -> list[int]:
        digest = hashlib.blake2b(key, digest_size=16).digest()
        h1, h2 = struct.unpack(">QQ", digest)
        h2 |= 1  # odd, so the k positions differ whatever the size
        return [(h1 + i * h2) % self.size for i in range(self.hashes)]

    def add(self, key: bytes) -> None:
        """Add ``key``."""
        for pos in self._positions(key):
            self.bits[pos >> 3] |= 1 << (pos & 7)
        self.count += 1

    def __contains__(self, key: bytes) -> bool:
        """False if ``key`` was certainly never added; True if it possibly was."""
        return all(self.bits[pos >> 3] & (1 << (pos & 7)) for pos in self._positions(key))

    def to_bytes(self) -> bytes:
        """Serialise (header and bit array)."""
        return _HEADER.pack(_MAGIC, _VERSION, self.size, self.hashes, self.count) + bytes(self.bits)

    @classmethod
    def from_bytes(cls, data: bytes) -> BloomFilter:
        """Read what :meth:`to_bytes` wrote."""
        magic, version, size, hashes, count = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError("not a version 1 capgroup bloom filter")
        return cls(size, hashes, bytearray(data[_HEADER.size :]), count)
