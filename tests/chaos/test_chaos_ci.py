"""The chaos suite's CI schedule against real brokers and real member processes.

One seeded single-node run covers every member fault and a broker restart; a shorter
three-node run loses the group coordinator's node; a short relay run (issue 13) has a hot
partition three times faster than its owner and a partition left to relay-only, with kills and
a zombie; a short range-jobs run (issue 14) has a hot partition cut into range jobs, with a
worker frozen and a worker killed mid-job and schedulers killed and frozen while their commits
record finished jobs. Every invariant must pass, and none may be skipped (each needs something
to check: a zombie, a kill, commits, ...).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from capgroup.devkafka.cluster import LocalKafkaCluster
from tests.brokers import KafkaEndpoint
from tests.chaos.driver import (
    RANGE_JOBS_FAULTS,
    RELAY_FAULTS,
    ChaosConfig,
    range_jobs_config,
    relay_config,
    run_chaos,
)
from tests.chaos.report import summary
from tests.kafka_fixtures import unavailable

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: The single-node schedule: every fault kind a single broker allows, in this order.
CI_FAULTS = ["sigkill", "zombie", "join", "sigterm", "lower_budget", "broker_restart", "sigkill"]
#: The three-node schedule: the coordinator's node dies, plus a zombie and a kill around it.
CLUSTER3_FAULTS = ["node_loss", "zombie", "sigkill"]


def keep_on_failure(run_dir: Path, report: dict[str, Any]) -> str:
    """Copy a failed run's logs out of pytest's rotating temp dirs; returns where to."""
    kept = Path(tempfile.gettempdir()) / "chaos-failed" / str(report["topic"])
    shutil.copytree(run_dir, kept, dirs_exist_ok=True)
    return f"\nrun logs kept in {kept}"


def assert_all_invariants_hold(report: dict[str, Any], kinds: list[str], run_dir: Path) -> None:
    """Every verdict passed and none was skipped; every scheduled fault was injected."""
    text = summary(report)
    injected = {f["kind"] for f in report["faults"]}
    assert set(kinds) <= injected | {"raise_budget", "leave"}, text
    bad = [
        (v["number"], v["name"], v["evidence"])
        for v in report["verdicts"]
        if v["skipped"] or not v["passed"]
    ]
    if bad:
        text += keep_on_failure(run_dir, report)
    assert not bad, text
    assert report["records"]["produced_acked"] > 1000, text


@pytest.mark.timeout(600)
async def test_chaos_ci_single_node(kafka: KafkaEndpoint, tmp_path: Path) -> None:
    if kafka.cluster is None:
        unavailable("the chaos schedule restarts the broker, which needs the local cluster")
    config = ChaosConfig(seed=20261122, duration_s=140, run_dir=tmp_path, faults=CI_FAULTS)
    report = await run_chaos(config, kafka.bootstrap_servers, kafka.cluster)
    print(summary(report))
    assert_all_invariants_hold(report, CI_FAULTS, tmp_path)


@pytest.mark.cluster3
@pytest.mark.timeout(600)
async def test_chaos_ci_coordinator_node_loss(
    kafka_cluster3: KafkaEndpoint, local_cluster3: LocalKafkaCluster, tmp_path: Path
) -> None:
    config = ChaosConfig(
        seed=3, duration_s=66, run_dir=tmp_path, nodes=3, faults=CLUSTER3_FAULTS, rate=100.0
    )
    report = await run_chaos(config, kafka_cluster3.bootstrap_servers, local_cluster3)
    print(summary(report))
    assert_all_invariants_hold(report, CLUSTER3_FAULTS, tmp_path)
    assert any(f["kind"] == "node_loss" and f["coordinator"] for f in report["faults"])


@pytest.mark.timeout(600)
async def test_chaos_ci_relay(kafka: KafkaEndpoint, tmp_path: Path) -> None:
    config = relay_config(tmp_path)
    report = await run_chaos(config, kafka.bootstrap_servers, kafka.cluster)
    text = summary(report)
    print(text)
    assert_all_invariants_hold(report, RELAY_FAULTS, tmp_path)
    assert [v["number"] for v in report["verdicts"]] == list(range(1, 10)), text
    relay = report["relay"]
    # Both ways of relaying happened: the hot partition's owner could not keep up, and the
    # partition nobody could batch was relayed by the member holding it relay-only.
    assert relay["relayed_by_source_partition"].get(relay["hot_partition"], 0) > 0, text
    assert relay["relay_only_partitions"], text
    assert relay["relayed_from_relay_only"] > 0, text


@pytest.mark.timeout(600)
async def test_chaos_ci_range_jobs(kafka: KafkaEndpoint, tmp_path: Path) -> None:
    config = range_jobs_config(tmp_path)
    report = await run_chaos(config, kafka.bootstrap_servers, kafka.cluster)
    text = summary(report)
    print(text)
    # The aimed faults are logged as sigkill / zombie, with what they hit.
    assert_all_invariants_hold(report, ["sigkill", "zombie"], tmp_path)
    assert [v["number"] for v in report["verdicts"]] == [1, 2, 3, 4, 5, 6, 7, 10], text
    aimed = sorted((f["kind"], f["target"]) for f in report["faults"] if "target" in f)
    assert aimed == sorted(
        (kind.split("_")[0], kind.split("_")[1]) for kind in RANGE_JOBS_FAULTS
    ), text
    jobs = report["range_jobs"]
    # Range jobs really ran, and a scheduler took a partition over from finished jobs.
    assert jobs["jobs_flushed"] > 0, text
    assert jobs["takeovers_from_metadata"] > 0, text
