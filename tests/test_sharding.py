"""The producer-side shard map: round-robin and stable-hash shards, unsharding, JSON files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from capgroup.sharding import ShardMap, ShardMapError


def test_unmapped_keys_are_unchanged() -> None:
    shards = ShardMap({"hot": 4})
    assert shards.shard_key("cold") == b"cold"
    assert shards.shard_key(b"cold", by="x") == b"cold"
    assert ShardMap({"one": 1}).shard_key("one") == b"one"
    assert shards.factor("cold") == 1
    assert shards.factor(b"hot") == 4


def test_round_robin_spreads_evenly_over_k_shards() -> None:
    shards = ShardMap({"hot": 3})
    produced = [shards.shard_key("hot") for _ in range(9)]
    assert produced[:3] == [b"hot.0", b"hot.1", b"hot.2"]
    assert Counter(produced) == {b"hot.0": 3, b"hot.1": 3, b"hot.2": 3}


def test_stable_hash_keeps_a_sub_key_on_one_shard() -> None:
    shards = ShardMap({b"tenant": 8}, separator="#")
    first = {sub: shards.shard_key("tenant", by=sub) for sub in (f"order-{i}" for i in range(200))}
    again = ShardMap({"tenant": 8}, separator="#")
    assert all(again.shard_key("tenant", by=sub) == key for sub, key in first.items())
    assert set(first.values()) == {b"tenant#%d" % i for i in range(8)}


def test_unshard_recovers_the_original_key() -> None:
    shards = ShardMap({"a.b": 4})
    assert shards.unshard_key("a.b.3") == b"a.b"
    assert shards.unshard_key("a.b.4") == b"a.b.4"  # not a shard of a 4-way key
    assert shards.unshard_key("a.b") == b"a.b"
    assert shards.unshard_key("other.1") == b"other.1"
    for _ in range(5):
        assert shards.unshard_key(shards.shard_key("a.b")) == b"a.b"


def test_a_json_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "shards.json"
    path.write_text(json.dumps(ShardMap({"hot": 4, "warm": 2}).to_json()))
    loaded = ShardMap.load(path)
    assert loaded.factors == {b"hot": 4, b"warm": 2}
    assert loaded.separator == "."


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"version": 2, "keys": {}}, "version"),
        ({"keys": []}, "keys"),
        ({"keys": {"a": 0}}, ">= 1"),
        ({"keys": {"a": "3"}}, ">= 1"),
        ({"keys": {"a": True}}, ">= 1"),
        ({"keys": {}, "separator": ""}, "separator"),
    ],
)
def test_bad_documents_are_refused(document: dict[str, object], message: str) -> None:
    with pytest.raises(ShardMapError, match=message):
        ShardMap.from_json(document)


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ShardMapError, match=r"bad\.json"):
        ShardMap.load(bad)
    with pytest.raises(ShardMapError, match=r"missing\.json"):
        ShardMap.load(tmp_path / "missing.json")
