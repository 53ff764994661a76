"""``capgroup hotkeys`` against a real broker: a topic produced with a Zipf key distribution
(the top keys are found with their shares within the sketch's stated error, and the shard
factors follow the measured rates), an unknown topic, an unreachable Kafka and a closed pipe."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaProducer

from capgroup.sharding import ShardMap
from tests.processes import capgroup_env
from tests.runtime.harness import ROOT

PARTITIONS = 4
RECORDS = 4000


async def hotkeys(bootstrap: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(
        [sys.executable, "-m", "capgroup.cli.main", "hotkeys", *args],
        env=capgroup_env({"bootstrap_servers": bootstrap}),
        cwd=ROOT,
        check=False,
    )


async def produce_zipf(bootstrap: str, topic: str) -> dict[tuple[int, bytes], int]:
    """Produce RECORDS records with Zipf(1.2) keys over 500 names (and a few null keys);
    returns the exact count of every (partition, key)."""
    rng = random.Random(15)
    names = [b"user-%d" % i for i in range(500)]
    keys = rng.choices(names, weights=[1 / (i + 1) ** 1.2 for i in range(500)], k=RECORDS - 40)
    stream: list[bytes | None] = [*keys, *([None] * 40)]
    rng.shuffle(stream)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=b"v" * 20) for key in stream]
        metadata = [await f for f in futures]
    finally:
        await producer.stop()
    counts: Counter[tuple[int, bytes]] = Counter()
    for key, md in zip(stream, metadata, strict=True):
        if key is not None:
            counts[(md.partition, key)] += 1
    return dict(counts)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_hotkeys_finds_the_zipf_top_keys_within_the_error(
    kafka: Any, topic_factory: Any, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=PARTITIONS)
    truth = await produce_zipf(bootstrap, topic)
    per_partition = Counter[int]()
    for (p, _), n in truth.items():
        per_partition[p] += n
    shard_file = tmp_path / "shards.json"
    # --records N reads N / partitions from each partition: the Zipf keys fill partitions
    # unevenly, so ask for enough to read every record and compare with exact counts.
    result = await hotkeys(
        bootstrap,
        topic,
        "--records",
        str(RECORDS * PARTITIONS),
        "--lg-max-map-size",
        "6",  # 48 keys tracked of ~400 seen: the sketch must evict, so its error shows
        "--json",
        "--write-shard-map",
        str(shard_file),
    )
    assert result.returncode == 0, result.stderr.decode()
    doc = json.loads(result.stdout)
    assert doc["topic"] == topic
    assert doc["complete"] is True
    assert doc["records"] == RECORDS
    assert [p["partition"] for p in doc["partitions"]] == list(range(PARTITIONS))
    assert sum(p["null_key_records"] for p in doc["partitions"]) == 40
    sketch = doc["sketch"]
    assert sketch["lg_max_map_size"] == 6
    assert sketch["epsilon"] == pytest.approx(3.5 / 64)
    assert sketch["tracked_keys"] <= 48
    error = sketch["error_records"]
    assert error == math.ceil(3.5 / 64 * (RECORDS - 40))
    rates = [p["rate"] for p in doc["partitions"]]
    assert doc["skew"] == pytest.approx(max(rates) / (sum(rates) / len(rates)))
    assert doc["target_rate"] == pytest.approx(sum(rates) / len(rates))

    found = {(h["partition"], bytes.fromhex(h["key_hex"])): h for h in doc["hot_keys"]}
    true_top = sorted(truth, key=lambda pk: -truth[pk])
    # Every key heavier than twice the error is found, with its count and shares in bounds.
    for pk in true_top[:10]:
        if truth[pk] > 2 * error:
            assert pk in found, pk
    assert true_top[0] in found
    for (p, key), h in found.items():
        exact = truth.get((p, key), 0)
        assert abs(h["records"] - exact) <= error
        assert h["records_lower_bound"] <= exact <= h["records_upper_bound"]
        records_p = next(x["records"] for x in doc["partitions"] if x["partition"] == p)
        assert abs(h["share_of_partition"] - exact / records_p) <= error / records_p + 1e-9
        assert h["key"] == key.decode()
        # The shard factor: the smallest k that brings the key's shards under the target.
        k = h["shard_factor"]
        assert h["rate"] / k <= doc["target_rate"] * (1 + 1e-9)
        assert k == 1 or h["rate"] / (k - 1) > doc["target_rate"]
    top = found[true_top[0]]
    # user-0 is ~16% of the topic, far above a mean partition's 25% share? No: its rate
    # against the mean partition rate decides; Zipf(1.2) over 4 partitions makes it > 1/2 of
    # a mean partition at least.
    assert top["share_of_topic"] > 0.1
    written = ShardMap.load(shard_file)
    assert written.factors == {
        bytes.fromhex(h["key_hex"]): h["shard_factor"]
        for h in doc["hot_keys"]
        if h["shard_factor"] > 1
    }

    # A low explicit target asks for more shards, and the text says what sharding costs.
    target = top["rate"] / 3.5
    text = await hotkeys(
        bootstrap, topic, "--records", str(RECORDS * PARTITIONS), "--target-rate", str(target)
    )
    assert text.returncode == 0, text.stderr.decode()
    out = text.stdout.decode()
    assert f"topic {topic}: {RECORDS:,} records read from {PARTITIONS} partitions" in out
    assert "user-0" in out
    assert "gives up that key's total order" in out


@pytest.mark.anyio
async def test_an_unknown_topic_is_one_line_and_exit_2(kafka: Any, unique_id: Any) -> None:
    topic = unique_id("missing")
    result = await hotkeys(kafka.bootstrap_servers, topic, "--records", "10")
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert topic in lines[0]
    assert "does not exist" in lines[0]
    assert result.stdout == b""


@pytest.mark.anyio
@pytest.mark.timeout(90)
async def test_head_of_a_report_ends_quietly(kafka: Any, topic_factory: Any) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=PARTITIONS)
    await produce_zipf(bootstrap, topic)
    for args in ("", " --json"):
        result = await anyio.run_process(
            f"{sys.executable} -m capgroup.cli.main hotkeys {topic} --records {RECORDS}"
            f"{args} | head -1",
            env=capgroup_env({"bootstrap_servers": bootstrap}),
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0
        assert len(result.stdout.decode().splitlines()) == 1
        err = result.stderr.decode()
        assert "Traceback" not in err, err
        assert "BrokenPipeError" not in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--records", "0"], "--records"),
        (["--duration", "-1"], "--duration"),
        (["--target-rate", "0"], "--target-rate"),
        (["--lg-max-map-size", "40"], "--lg-max-map-size"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", "hotkeys", "t", *args],
        env=capgroup_env({"bootstrap_servers": "127.0.0.1:1"}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
