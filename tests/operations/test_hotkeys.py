"""The hot-key analysis without a broker: shard-factor arithmetic, skew, the sketch wrapper on a
Zipf stream (top keys within the stated error) and its bounded memory on 1M distinct keys."""

from __future__ import annotations

import math
import random
import tracemalloc
from collections import Counter

import pytest

from capgroup.operations.hotkeys import (
    KeySketch,
    PartitionWindow,
    analyse,
    shard_factor,
    skew,
)


@pytest.mark.parametrize(
    ("key_rate", "target", "k"),
    [
        (0.0, 10.0, 1),
        (10.0, 10.0, 1),  # exactly at the target: no sharding
        (10.5, 10.0, 2),
        (100.0, 25.0, 4),
        (101.0, 25.0, 5),
        (0.30000000000000004, 0.1, 3),  # a float hair above an integer ratio
        (0.3, 0.1, 3),  # 2.9999999999999996
        (1000.0, 1.0, 1000),
    ],
)
def test_shard_factor_is_the_smallest_k_under_the_target(
    key_rate: float, target: float, k: int
) -> None:
    assert shard_factor(key_rate, target) == k
    assert key_rate / k <= target * (1 + 1e-9)
    if k > 1:
        assert key_rate / (k - 1) > target


@pytest.mark.parametrize("target", [0.0, -1.0, math.nan])
def test_shard_factor_needs_a_positive_target(target: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        shard_factor(10.0, target)


def test_skew_is_max_over_mean() -> None:
    assert skew([10.0, 10.0, 10.0]) == 1.0
    assert skew([30.0, 10.0, 10.0, 10.0]) == 2.0
    assert skew([]) == 1.0
    assert skew([0.0, 0.0]) == 1.0
    assert skew([5.0, 0.0, 0.0, 0.0, 0.0]) == 5.0


def zipf_stream(n: int, keys: int, s: float, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    names = [b"user-%d" % i for i in range(keys)]
    weights = [1 / (i + 1) ** s for i in range(keys)]
    return rng.choices(names, weights=weights, k=n)


def test_the_sketch_finds_the_top_keys_of_a_zipf_stream_within_its_error() -> None:
    # A small sketch (2^8: at most 192 keys tracked, ε = 3.5/256) over 20,000 distinct keys, so
    # the error bound is tight enough to matter and the sketch really has to evict.
    stream = zipf_stream(200_000, 20_000, 1.1)
    truth = Counter(stream)
    sketch = KeySketch(8)
    for key in stream:
        sketch.update(0, key)
    assert sketch.total == len(stream)
    assert sketch.tracked <= 0.75 * 2**8
    bound = sketch.error_bound
    assert bound == pytest.approx(3.5 / 256 * len(stream))
    found = sketch.heaviest(10)
    true_top = [key for key, _ in truth.most_common(10)]
    # Every key heavier than twice the bound is found, in the right order of magnitude.
    heavy = [key for key in true_top if truth[key] > 2 * bound]
    assert heavy, "the stream should have keys above the error bound"
    assert set(heavy) <= {c.key for c in found}
    for c in found:
        assert abs(c.estimate - truth[c.key]) <= bound
        assert c.lower_bound <= truth[c.key] <= c.upper_bound
        assert abs(c.estimate / len(stream) - truth[c.key] / len(stream)) <= sketch.epsilon
    assert found[0].key == true_top[0]


def test_the_sketch_memory_is_bounded_with_a_million_distinct_keys() -> None:
    sketch = KeySketch()  # the default: 2^12
    tracemalloc.start()
    try:
        for i in range(1_000_000):
            sketch.update(i % 8, b"key-%d" % i)
            if i % 10 == 0:
                sketch.update(3, b"hot")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sketch.tracked <= 0.75 * 2**12
    # Python objects the sketch holds: at most 3,072 (partition, key) tuples; measured peak
    # about 0.3 MB. Keeping every key (a dict of 1M bytes keys) would take well over 100 MB.
    assert peak < 2 * 1024 * 1024, peak
    top = sketch.heaviest(1)[0]
    assert (top.partition, top.key) == (3, b"hot")
    assert abs(top.estimate - 100_000) <= sketch.error_bound


def test_analyse_gives_shares_rates_skew_and_shard_factors() -> None:
    windows = [
        PartitionWindow(0, records=600, seconds=10.0),
        PartitionWindow(1, records=200, seconds=10.0),
        PartitionWindow(2, records=200, seconds=10.0, null_key_records=50),
    ]
    sketch = KeySketch(10)
    sketch.update(0, b"hot", 450)
    sketch.update(0, b"warm", 150)
    sketch.update(1, b"a", 200)
    sketch.update(2, b"b", 150)
    report = analyse("t", windows, sketch, top=3)
    assert report.records == 1000
    assert report.total_rate == pytest.approx(100.0)
    assert report.mean_rate == pytest.approx(100 / 3)
    assert report.skew == pytest.approx(60 / (100 / 3))
    assert report.target_rate == pytest.approx(100 / 3)
    hot = report.hot_keys[0]
    assert (hot.partition, hot.key, hot.records) == (0, b"hot", 450)
    assert hot.share_of_partition == pytest.approx(0.75)
    assert hot.share_of_topic == pytest.approx(0.45)
    assert hot.rate == pytest.approx(45.0)
    assert hot.shard_factor == 2  # 45/s over a mean of 33.3/s
    assert [h.key for h in report.hot_keys] == [b"hot", b"a", b"warm"]
    assert report.hot_keys[1].shard_factor == 1  # 20/s
    assert report.error_records == math.ceil(3.5 / 1024 * 950)
    explicit = analyse("t", windows, sketch, top=1, target_rate=10.0)
    assert explicit.hot_keys[0].shard_factor == 5  # 45/s under 10/s a shard


def test_an_empty_read_reports_no_keys() -> None:
    report = analyse("t", [PartitionWindow(0), PartitionWindow(1)], KeySketch(8))
    assert report.hot_keys == ()
    assert report.skew == 1.0
    assert report.records == 0
