"""Group figures against the real broker: every member's scrape shows the group's deficit as
soon as the leader plans it, and the autoscaling target it implies."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capgroup import BatchingConsumer, metrics_registry
from tests.runtime.harness import Recorder, consumer_settings, running, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def group_figures(consumer: BatchingConsumer) -> dict[str, float]:
    """The ``capgroup_group_*`` samples of one scrape of ``consumer``, by name."""
    text = generate_latest(metrics_registry(consumer, process=False)).decode()
    return {
        sample.name.removeprefix("capgroup_group_"): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("capgroup_group_") and sample.name != "capgroup_group_joins_total"
    }


def generation(consumer: BatchingConsumer) -> int:
    snapshot = consumer.membership
    return -1 if snapshot is None else snapshot.generation_id


@pytest.mark.anyio
async def test_deficit_on_every_member_and_the_replicas_it_wants(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=6)
    group = unique_id("g")

    def member(name: str) -> Recorder:
        # Two partitions each; no spare wanted, so that the target is exactly the members
        # needed (the default of one spare is covered by the scripted tests).
        return Recorder(
            name,
            **consumer_settings(
                kafka.bootstrap_servers,
                group,
                topic,
                max_partitions=2,
                autoscale_headroom_members=0,
            ),
        )

    a, b, c = member("a"), member("b"), member("c")
    async with running(a, b, c) as start:
        members = (a, b, c)

        def settled(*consumers: BatchingConsumer, **expected: float) -> bool:
            scrapes = [group_figures(m) for m in consumers]
            gens = {generation(m) for m in consumers}
            return (
                len(gens) == 1
                and all(s.get(k) == v for s in scrapes for k, v in expected.items())
                and all(s == scrapes[0] for s in scrapes)
            )

        await wait_until(
            lambda: settled(*members, unassigned_partitions=0, pending_partitions=0, members=3),
            60,
            "three members sharing six partitions",
        )
        full = group_figures(a)
        assert full["capacity_partitions"] == 6
        assert full["demand_partitions"] == 6
        assert full["headroom_members"] == 0
        assert full["replicas_wanted"] == 3 == full["members"]
        before = generation(a)

        # One member leaves: capacity 4 on 6 partitions. The first plan without it shows two
        # unassigned partitions on every remaining member, and one member wanted.
        c.stop()
        await wait_until(
            lambda: generation(a) > before and generation(b) > before,
            60,
            "a rebalance without c",
        )
        await wait_until(
            lambda: settled(a, b, members=2, pending_partitions=0), 30, "a and b agree"
        )
        short = group_figures(b)
        assert short["unassigned_partitions"] == 2
        assert short["capacity_partitions"] == 4
        assert short["headroom_members"] == 0
        # Wanted is a target, not a deficit: it stays at 3, and the gap an autoscaler closes
        # (wanted - members) rose from 0 to 1.
        assert short["replicas_wanted"] == 3
        assert short["replicas_wanted"] - short["members"] == 1
        # The leader alone knows which two (for their lag); the other member lists none.
        listed = sorted(len(m.engine.unassigned_partitions) for m in (a, b) if m.engine)
        assert listed == [0, 2]

        # A member joins, as an autoscaler would start it: the gap falls back to 0.
        d = member("d")
        await start(d)
        await wait_until(
            lambda: settled(a, b, d, unassigned_partitions=0, pending_partitions=0, members=3),
            60,
            "d takes the unassigned partitions",
        )
        healed = group_figures(d)
        assert healed["replicas_wanted"] == 3 == healed["members"]
        assert healed["capacity_partitions"] == 6
