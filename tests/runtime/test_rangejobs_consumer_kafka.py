"""Range jobs inside BatchingConsumer against a real broker: the owner of a partition it cannot
keep up with hands the backlog to range jobs, the other member takes jobs through its own
``flush``, the commit reaches the end with no record lost, and the owner takes the partition
back once the backlog is gone; a member gaining a partition whose commit records finished jobs
(from a killed owner, or one that left mid-jobs) schedules it at once and does not redo them."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaProducer

from capgroup import Record, TopicPartition
from capgroup.operations.metrics import metrics_registry, render_metrics
from capgroup.protocol.completed_ranges import CompletedRanges, encode_completed
from capgroup.runtime.relay import RELAY_ORIGIN_HEADER
from capgroup.runtime.retry import DEAD_LETTER_HEADER_PREFIX
from capgroup.settings import load_settings
from tests.runtime.harness import (
    Recorder,
    consumer_settings,
    produce,
    read_topic,
    running,
    wait_committed,
    wait_until,
)
from tests.runtime.rangejobs_harness import owner

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

RECORDS = 400


def jobs_settings(bootstrap: str, group: str, topic: str, names: tuple[str, str]) -> dict[str, Any]:
    """Settings of both members: the same jobs and completions topics."""
    return consumer_settings(
        bootstrap,
        group,
        topic,
        max_partitions=1,
        batch_max_records=10,
        batch_max_age_ms=200,
        lag_sample_interval_ms=200,
        range_jobs_enabled=True,
        range_jobs_lag_records=60,
        range_jobs_max_records=20,
        range_jobs_max_in_flight=6,
        range_jobs_worker_slots=2,
        range_jobs_timeout_ms=10_000,
        range_jobs_topic=names[0],
        range_jobs_completions_topic=names[1],
    )


async def test_a_lagging_partition_is_shared_as_range_jobs_and_taken_back(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    names = (unique_id("jobs"), unique_id("done"))
    a = Recorder("a", **jobs_settings(bootstrap, group, topic, names))
    b = Recorder("b", **jobs_settings(bootstrap, group, topic, names))
    a.flush_delay = 0.3  # about 33 records a second: it falls behind
    async with running(a) as start:
        await start(b)
        await wait_until(lambda: len(a.assignment) == 1 and len(b.assignment) == 1, 30, "split")
        (hot,) = a.assignment
        await produce(bootstrap, topic, hot.partition, RECORDS)
        await wait_until(
            lambda: a._range_jobs is not None and hot in a._range_jobs.controller.scheduling,
            30,
            "hand-off",
        )
        await wait_committed(bootstrap, group, {hot: RECORDS}, 60)
        await wait_until(lambda: hot in a._partitions, 30, "the owner to take it back")

        def flushed(consumer: Recorder) -> list[int]:
            return consumer.offsets(hot)

        assert set(flushed(a)) | set(flushed(b)) == set(range(RECORDS)), "no record lost"
        assert flushed(b), "the other member took jobs"
        assert a.stats.buffered_bytes >= 0
        # b flushed the hot partition only through range jobs: its counters say so, and so
        # does its metrics scrape.
        jobs_b = b.stats.counters
        assert jobs_b.range_jobs_done > 0
        assert jobs_b.range_job_records == len(flushed(b))
        scrape = render_metrics(metrics_registry(b, process=False))[0].decode()
        assert f'capgroup_range_jobs_total{{group="{group}",member=' in scrape
        done = [
            float(line.rsplit(" ", 1)[1])
            for line in scrape.splitlines()
            if line.startswith("capgroup_range_jobs_total{") and 'outcome="done"' in line
        ]
        assert done == [float(jobs_b.range_jobs_done)]
        assert hot not in a.stats.range_jobs, "taken back: no longer scheduled"
    assert TopicPartition(topic, hot.partition) == hot


async def test_a_new_owner_schedules_at_once_and_skips_the_finished_jobs(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=1)
    group = unique_id("g")
    names = (unique_id("jobs"), unique_id("done"))
    values = jobs_settings(bootstrap, group, topic, names)
    tp = TopicPartition(topic, 0)
    await produce(bootstrap, topic, 0, 300)
    # A previous owner (killed) left 100 committed, with [150, 250) finished beyond it.
    async with owner(load_settings(**values)) as engine:
        await engine.commit({tp: 100}, encode_completed(CompletedRanges(100, ((150, 250),))))
    a = Recorder("a", **values)
    async with running(a):
        await wait_committed(bootstrap, group, {tp: 300}, 60)
        await wait_until(lambda: tp in a._partitions, 30, "the ordinary path to take it back")
    assert sorted(a.offsets(tp)) == [*range(100, 150), *range(250, 300)]


async def test_the_owner_leaves_mid_jobs_and_the_next_owner_skips_what_it_recorded(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=1)
    group = unique_id("g")
    names = (unique_id("jobs"), unique_id("done"))
    a = Recorder("a", **jobs_settings(bootstrap, group, topic, names))
    b = Recorder("b", **jobs_settings(bootstrap, group, topic, names))
    a.flush_delay = 0.3  # it falls behind, and its jobs are slow too
    gate = anyio.Event()
    first_job: list[int] = []

    def straggle(batch: Any) -> None:
        # b's first job waits (in the flush, after on_flush) until a has left the group.
        if not first_job:
            first_job.append(batch.first_offset)

    b.on_flush = straggle
    original = b.flush

    async def flush(batch: Any) -> None:
        if first_job and batch.first_offset == first_job[0] and not gate.is_set():
            await gate.wait()
        await original(batch)

    b.flush = flush  # type: ignore[method-assign]
    async with running(a) as start:
        await start(b)
        await wait_until(lambda: len(a.assignment) == 1, 30, "a to own the partition")
        (tp,) = a.assignment
        await produce(bootstrap, topic, tp.partition, RECORDS)
        jobs = a._range_jobs
        assert jobs is not None
        await wait_until(lambda: tp in jobs.controller.scheduling, 30, "hand-off")
        window = jobs.scheduler.partitions[tp].window
        await wait_until(lambda: len(window.finished.ranges) > 0, 30, "jobs done beyond")
        recorded = window.finished.ranges  # in a's final commit whatever happens next
        a.stop()
        await wait_until(lambda: tp in b.assignment, 30, "b to own the partition")
        gate.set()
        await wait_committed(bootstrap, group, {tp: RECORDS}, 60)
    flushed = a.offsets(tp) + b.offsets(tp)
    assert set(flushed) == set(range(RECORDS)), "no record lost"
    twice = {o for o in flushed if flushed.count(o) > 1}
    assert not twice & {o for s, e in recorded for o in range(s, e)}, (
        "b redid jobs a's commit recorded as finished"
    )


POISON = b"\xff not a record"
POISON_AT = 200


class Decoding(Recorder):
    """A recording member whose ``deserialize`` raises on ``POISON``."""

    def deserialize(self, record: Record) -> Record:
        if record.value == POISON:
            raise UnicodeDecodeError("utf-8", record.value, 0, 1, "invalid start byte")
        return record


async def test_a_poison_record_inside_a_range_job_is_dead_lettered_not_retried_for_ever(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    """deserialize_failure_policy=dead_letter holds for range jobs: the job with the poison
    record flushes the others, the poison goes raw to the dead-letter topic, and the
    partition's commit reaches its end (before, the job failed and was offered for ever)."""
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    dlq = await topic_factory(partitions=1)
    group = unique_id("g")
    names = (unique_id("jobs"), unique_id("done"))
    policy = {"deserialize_failure_policy": "dead_letter", "dead_letter_topic": dlq}
    a = Decoding("a", **jobs_settings(bootstrap, group, topic, names), **policy)
    b = Decoding("b", **jobs_settings(bootstrap, group, topic, names), **policy)
    a.flush_delay = 0.3  # it falls behind: the backlog goes to range jobs
    async with running(a) as start:
        await start(b)
        await wait_until(lambda: len(a.assignment) == 1 and len(b.assignment) == 1, 30, "split")
        (hot,) = a.assignment
        await produce(bootstrap, topic, hot.partition, POISON_AT)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value=POISON, partition=hot.partition)
        finally:
            await producer.stop()
        await produce(bootstrap, topic, hot.partition, RECORDS - POISON_AT - 1, start=POISON_AT + 1)
        await wait_until(
            lambda: a._range_jobs is not None and hot in a._range_jobs.controller.scheduling,
            30,
            "hand-off",
        )
        assert max(a.offsets(hot), default=-1) < POISON_AT, "the poison is left to range jobs"
        await wait_committed(bootstrap, group, {hot: RECORDS}, 60)
        flushed = set(a.offsets(hot)) | set(b.offsets(hot))
        assert flushed == set(range(RECORDS)) - {POISON_AT}, "every good record, no poison"
        counters = [a.stats.counters, b.stats.counters]
        assert sum(c.records_undecodable for c in counters) >= 1
        assert sum(c.records_dead_lettered for c in counters) >= 1
        assert a._fatal is None
        assert b._fatal is None
    dead = await read_topic(bootstrap, dlq, 1)
    headers = dict(dead[0].headers)
    assert dead[0].value == POISON
    assert headers[DEAD_LETTER_HEADER_PREFIX + "stage"] == b"deserialize"
    assert headers[DEAD_LETTER_HEADER_PREFIX + "origin.offset"] == str(POISON_AT).encode()


@pytest.mark.parametrize("arrival", ["burst", "waves"])
async def test_relay_and_range_jobs_on_one_topic_lose_nothing(
    kafka: Any, topic_factory: Any, unique_id: Any, arrival: str
) -> None:
    """Both escape hatches on at once (relay past a lag of 20, range jobs past 60) behind a
    slow owner. A burst passes both thresholds in one lag sample and range jobs take the
    backlog (measured: 20 jobs, nothing relayed); waves pass the relay's first, and the relay
    keeps the lag under the other (measured: 370-380 relayed, no job). Either way every record
    is flushed (from the partition, by a job, or as a relayed copy) and the partition's
    commit reaches its end."""
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    names = (unique_id("jobs"), unique_id("done"))
    both = {"relay_enabled": True, "relay_lag_records": 20}
    a = Recorder("a", **jobs_settings(bootstrap, group, topic, names), **both)
    b = Recorder("b", **jobs_settings(bootstrap, group, topic, names), **both)
    a.flush_delay = 0.3
    async with running(a) as start:
        await start(b)
        await wait_until(lambda: len(a.assignment) == 1 and len(b.assignment) == 1, 30, "split")
        (hot,) = a.assignment
        produced = 0
        while produced < RECORDS:
            wave = RECORDS if arrival == "burst" else min(30, RECORDS - produced)
            await produce(bootstrap, topic, hot.partition, wave, start=produced)
            produced += wave
            if produced < RECORDS:
                await anyio.sleep(0.3)

        def covered() -> set[int]:
            seen: set[int] = set()
            for member in (a, b):
                for batch in member.batches:
                    for record in batch.records:
                        origin = dict(record.headers).get(RELAY_ORIGIN_HEADER)
                        if origin is not None:
                            _, partition, offset = origin.decode().rsplit("/", 2)
                            if int(partition) == hot.partition:
                                seen.add(int(offset))
                        elif batch.tp == hot:
                            seen.add(record.offset)
            return seen

        try:
            await wait_until(lambda: covered() >= set(range(RECORDS)), 90, "every record flushed")
        except AssertionError as exc:
            missing = sorted(set(range(RECORDS)) - covered())
            raise AssertionError(
                f"{exc}: {len(missing)} missing, from {missing[:5]} to {missing[-5:]}; "
                f"a {a.stats.counters}, range jobs {a.stats.range_jobs}; b {b.stats.counters}"
            ) from exc
        await wait_committed(bootstrap, group, {hot: RECORDS}, 60)
        assert a._fatal is None
        assert b._fatal is None
        counters = [a.stats.counters, b.stats.counters]
        used = (
            sum(c.records_relayed for c in counters),
            sum(c.range_jobs_done for c in counters),
        )
        assert any(used), f"neither hatch was used: relayed, jobs done = {used}"
