"""Producer-side key sharding: spread a hot key over ``key.0 … key.k-1``.

A :class:`ShardMap` says, for each hot key, how many shards it gets (the shard factor
``capgroup hotkeys`` recommends). :meth:`ShardMap.shard_key` returns a key unchanged when it is
not in the map, and ``key.i`` otherwise, ``i`` chosen round-robin or by a stable hash of a
sub-key (records with the same sub-key then keep their relative order).

Only for keys that do not need order: Kafka orders records per partition, so the shards of a
key, on different partitions, are no longer ordered with each other. Consumers that aggregate
per key recover it with :meth:`ShardMap.unshard_key`.

The map is loaded from a JSON file (:meth:`ShardMap.from_json`); loading it from a compacted
topic is not provided. Pure: no Kafka client, no I/O beyond reading the file.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ShardMap", "ShardMapError"]

#: The JSON document's version this module reads and writes.
FORMAT_VERSION = 1


class ShardMapError(ValueError):
    """A shard map file or mapping is malformed (names the problem)."""


def _as_bytes(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


class ShardMap:
    """Shard factors of hot keys, applied to record keys on the producer side.

    ``factors`` maps a key (bytes, or str taken as UTF-8) to its shard factor ``k`` ≥ 1;
    ``separator`` goes between the key and the shard number (default ``.``).
    """

    def __init__(self, factors: Mapping[bytes | str, int], separator: str = ".") -> None:
        if not separator:
            raise ShardMapError("the separator must not be empty")
        self.separator = separator
        self._sep = separator.encode()
        self._factors: dict[bytes, int] = {}
        for key, k in factors.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ShardMapError(f"shard factor of {key!r} must be an integer >= 1, got {k!r}")
            self._factors[_as_bytes(key)] = k
        self._next: dict[bytes, Iterator[int]] = {}

    @property
    def factors(self) -> dict[bytes, int]:
        """A copy of the map: key → shard factor."""
        return dict(self._factors)

    def factor(self, key: bytes | str) -> int:
        """The shard factor of ``key`` (1 when it is not sharded)."""
        return self._factors.get(_as_bytes(key), 1)

    def shard_key(self, key: bytes | str, by: bytes | str | None = None) -> bytes:
        """``key`` as it should be produced: unchanged when it has no shard factor above 1,
        else ``key.i`` with ``i`` round-robin over ``0 … k-1`` (``by`` None) or
        ``crc32(by) mod k`` (stable: the same ``by`` always gives the same shard)."""
        raw = _as_bytes(key)
        k = self._factors.get(raw, 1)
        if k <= 1:
            return raw
        if by is None:
            cycle = self._next.get(raw)
            if cycle is None:
                cycle = self._next[raw] = itertools.cycle(range(k))
            i = next(cycle)
        else:
            i = zlib.crc32(_as_bytes(by)) % k
        return raw + self._sep + str(i).encode()

    def unshard_key(self, key: bytes | str) -> bytes:
        """The original key of a shard ``key.i`` of a mapped key; any other key unchanged."""
        raw = _as_bytes(key)
        base, sep, suffix = raw.rpartition(self._sep)
        if sep and suffix.isdigit() and int(suffix) < self._factors.get(base, 1):
            return base
        return raw

    def to_json(self) -> dict[str, Any]:
        """The JSON document :meth:`from_json` reads (keys as UTF-8 strings)."""
        return {
            "version": FORMAT_VERSION,
            "separator": self.separator,
            "keys": {k.decode("utf-8", "backslashreplace"): f for k, f in self._factors.items()},
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ShardMap:
        """Build from ``{"version": 1, "separator": ".", "keys": {"user-42": 4}}``."""
        version = document.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ShardMapError(f"unsupported shard map version {version!r}")
        keys = document.get("keys")
        if not isinstance(keys, Mapping):
            raise ShardMapError('a shard map needs "keys": an object of key -> shard factor')
        separator = document.get("separator", ".")
        if not isinstance(separator, str):
            raise ShardMapError('"separator" must be a string')
        return cls(keys, separator)

    @classmethod
    def load(cls, path: str | Path) -> ShardMap:
        """Read a shard map JSON file (as ``capgroup hotkeys --write-shard-map`` writes)."""
        try:
            document = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ShardMapError(f"cannot read shard map {path}: {exc}") from exc
        if not isinstance(document, Mapping):
            raise ShardMapError(f"shard map {path} is not a JSON object")
        return cls.from_json(document)
