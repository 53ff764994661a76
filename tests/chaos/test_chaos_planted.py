"""Each invariant catches a planted fault end to end: a real broker, real member processes
running the chaos service with one ``CHAOS_PLANT`` switched on, and the verdict that must fail.

The plants live in :mod:`tests.chaos.service` only. Each run is short (one fault to give the
plant something to break) and must also show the named evidence, not just any failure. The
member-level plants run side by side (:data:`CONCURRENT` at a time), each on its own topic
and group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.brokers import KafkaEndpoint
from tests.chaos.driver import (
    RANGE_JOBS_FAULTS,
    ChaosConfig,
    range_jobs_config,
    relay_config,
    run_chaos,
)
from tests.chaos.report import summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Plant -> its run's report.
Reports = dict[str, dict[str, Any]]

#: plant -> (faults to inject, invariant numbers that must fail)
PLANTED = {
    "overcommit": (["join"], {1}),
    "ignore_revoke": (["join"], {2}),
    "commit_before_flush": (["sigkill"], {3, 4}),
    "drop_revoke_commits": (["sigterm"], {5}),
    "slow_takeover": (["sigkill"], {6}),
    "no_fencing": (["zombie"], {7}),
}
#: Relay plants (issue 13), on the relay schedule: plant -> (faults, invariants that must fail).
RELAY_PLANTED = {
    "relay_to_self": (["zombie"], {9}),
    "commit_before_ack": (["sigkill"], {4}),
}
#: Range-jobs plants (issue 14), on the range-jobs schedule: plant -> (faults, invariants that
#: must fail, the evidence key those carry). ``commit_past_unfinished`` needs no fault (every
#: commit of its scheduler is past jobs just offered); ``ignore_metadata`` needs a takeover from
#: a commit that records finished jobs: the whole schedule, whose frozen worker holds the
#: frontier back while later jobs finish, so the scheduler is killed with finished jobs in its
#: metadata (a scheduler alone rarely has any: its jobs finish almost in order).
RANGE_JOBS_PLANTED = {
    "commit_past_unfinished": (["sigkill_worker"], {4}, "not_flushed_before_commit"),
    "ignore_metadata": (list(RANGE_JOBS_FAULTS), {10}, "recorded"),
}


#: How many planted runs share the broker at a time. A run is mostly waiting (warm-up, the
#: schedule, the drain), so three side by side take about as long as one alone on the
#: 2-core CI machine, and the plants are caught all the same (their evidence is the plant's
#: own commits and relays, not timing): the module takes about half as long.
CONCURRENT = 3


@pytest.fixture(scope="module")
def planted_reports(kafka: KafkaEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Reports:
    """The report of every plant of :data:`PLANTED` and :data:`RELAY_PLANTED`, run
    :data:`CONCURRENT` at a time (each on its own topic and group)."""
    configs = {
        plant: ChaosConfig(
            seed=11,
            duration_s=20,
            run_dir=tmp_path_factory.mktemp(plant),
            faults=faults,
            plant=plant,
            warmup_s=8.0,
            drain_s=30.0,
        )
        for plant, (faults, _) in PLANTED.items()
    } | {
        plant: relay_config(
            tmp_path_factory.mktemp(plant),
            seed=11,
            duration_s=20,
            faults=faults,
            plant=plant,
            drain_s=30.0,
        )
        for plant, (faults, _) in RELAY_PLANTED.items()
    }
    reports: Reports = {}

    async def run_all() -> None:
        limit = anyio.Semaphore(CONCURRENT)

        async def one(plant: str, config: ChaosConfig) -> None:
            async with limit:
                reports[plant] = await run_chaos(config, kafka.bootstrap_servers, kafka.cluster)

        async with anyio.create_task_group() as tg:
            for plant, config in configs.items():
                tg.start_soon(one, plant, config)

    anyio.run(run_all)
    return reports


@pytest.mark.timeout(900)  # the first test waits for every planted run
@pytest.mark.parametrize("plant", sorted(PLANTED))
def test_invariant_catches_planted_fault(plant: str, planted_reports: Reports) -> None:
    _, expected = PLANTED[plant]
    report = planted_reports[plant]
    text = summary(report)
    print(text)
    failed = {v["number"] for v in report["verdicts"] if not v["passed"]}
    assert expected <= failed, text
    for v in report["verdicts"]:
        if v["number"] in expected:
            assert v["evidence"], text


@pytest.mark.timeout(900)
@pytest.mark.parametrize("plant", sorted(RELAY_PLANTED))
def test_relay_invariant_catches_planted_fault(plant: str, planted_reports: Reports) -> None:
    _, expected = RELAY_PLANTED[plant]
    report = planted_reports[plant]
    text = summary(report)
    print(text)
    failed = {v["number"] for v in report["verdicts"] if not v["passed"]}
    assert expected <= failed, text
    # The planted evidence itself: a relay to the member's own partition (not one to a
    # partition nobody owns), a commit ahead of its relay's acknowledgement.
    key = "owned" if plant == "relay_to_self" else "not_flushed_before_commit"
    for v in report["verdicts"]:
        if v["number"] in expected:
            assert any(key in e for e in v["evidence"]), text


#: Runs a range-jobs plant gets. ``ignore_metadata`` only shows when a scheduler dies while its
#: last commit records finished jobs beyond its frontier and the next owner starts from that
#: commit: the schedule aims its kill at such a scheduler but cannot force the timing (one run
#: in three of the first CI runs had its takeovers start from commits with none), so the plant
#: must be caught within a few runs, each judged on its own.
RANGE_JOBS_ATTEMPTS = 4


@pytest.mark.anyio
@pytest.mark.timeout(600)
@pytest.mark.parametrize("plant", sorted(RANGE_JOBS_PLANTED))
async def test_range_jobs_invariant_catches_planted_fault(
    plant: str, kafka: KafkaEndpoint, tmp_path: Path
) -> None:
    faults, expected, key = RANGE_JOBS_PLANTED[plant]
    texts = []
    for attempt in range(RANGE_JOBS_ATTEMPTS):
        run_dir = tmp_path / f"run{attempt}"
        run_dir.mkdir()
        config = range_jobs_config(run_dir, faults=faults, plant=plant, drain_s=30.0)
        report = await run_chaos(config, kafka.bootstrap_servers, kafka.cluster)
        text = summary(report)
        print(text)
        texts.append(text)
        failed = {v["number"] for v in report["verdicts"] if not v["passed"]}
        if expected <= failed:
            break
    assert expected <= failed, "\n\n".join(texts)
    for v in report["verdicts"]:
        if v["number"] in expected:
            assert any(key in e for e in v["evidence"]), text
