"""The local Kafka harness: pure helpers, and a real start/stop of one node."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from capgroup.devkafka import admin as kafka_admin
from capgroup.devkafka import cluster as kafka_cluster
from capgroup.devkafka import jars as kafka_jars
from capgroup.devkafka.cluster import (
    LocalKafkaCluster,
    NodeSpec,
    free_ports,
    new_cluster_id,
    render_log4j2,
    render_node_config,
    render_properties,
)
from capgroup.devkafka.jars import MARKER_NAME, KafkaLocalError, jars_complete
from tests.kafka_fixtures import unavailable


def _node(node_id: int, base: int) -> NodeSpec:
    return NodeSpec(node_id, base, base + 1, Path(f"/tmp/n{node_id}"))


def test_cluster_id_is_22_char_base64url_of_a_uuid() -> None:
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid), cid
        raw = base64.urlsafe_b64decode(cid + "==")
        assert len(raw) == 16
        assert uuid.UUID(bytes=raw).version == 4


def test_single_node_config_sets_rf1_and_fast_group_settings() -> None:
    node = _node(1, 20000)
    config = render_node_config(node, [node])
    assert config["process.roles"] == "broker,controller"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:20001"
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:20000,CONTROLLER://127.0.0.1:20001"
    assert config["advertised.listeners"] == "PLAINTEXT://127.0.0.1:20000"
    assert config["log.dirs"] == "/tmp/n1/data"
    assert config["group.initial.rebalance.delay.ms"] == "0"
    assert config["group.min.session.timeout.ms"] == "1000"
    assert config["auto.create.topics.enable"] == "false"
    assert config["offsets.topic.num.partitions"] == "3"
    assert config["offsets.topic.replication.factor"] == "1"
    assert config["transaction.state.log.min.isr"] == "1"


def test_three_node_config_shares_voters_and_keeps_default_replication() -> None:
    nodes = [_node(i, 20000 + 10 * i) for i in (1, 2, 3)]
    configs = [render_node_config(n, nodes, extra={"num.partitions": "2"}) for n in nodes]
    voters = {c["controller.quorum.voters"] for c in configs}
    assert voters == {"1@127.0.0.1:20011,2@127.0.0.1:20021,3@127.0.0.1:20031"}
    assert [c["node.id"] for c in configs] == ["1", "2", "3"]
    assert len({c["log.dirs"] for c in configs}) == 3
    for c in configs:
        assert "offsets.topic.replication.factor" not in c
        assert "transaction.state.log.replication.factor" not in c
        assert c["num.partitions"] == "2"


def test_properties_and_log4j_rendering() -> None:
    text = render_properties({"b": "2", "a": "x=y"})
    assert text == "a=x=y\nb=2\n"
    log4j = render_log4j2(Path("/tmp/n1/server.log"))
    assert "rootLogger.level = WARN" in log4j
    assert "appender.file.fileName = /tmp/n1/server.log" in log4j


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    assert all(1024 <= p < 65536 for p in ports)


def test_jar_cache_needs_marker_and_every_listed_jar(tmp_path: Path) -> None:
    assert not jars_complete(tmp_path)
    (tmp_path / "a.jar").write_text("x")
    assert not jars_complete(tmp_path)
    (tmp_path / MARKER_NAME).write_text("a.jar\nb.jar\n")
    assert not jars_complete(tmp_path)
    (tmp_path / "b.jar").write_text("x")
    assert jars_complete(tmp_path)


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KafkaLocalError, match="'mvn' is not on PATH"):
        kafka_jars.ensure_jars("4.1.1", cache=tmp_path / "cache")


@pytest.mark.kafka
@pytest.mark.slow
def test_start_answers_then_stop_reaps_jvm_and_workdir() -> None:
    cluster = LocalKafkaCluster(nodes=1)
    try:
        cluster.start()
    except KafkaLocalError as exc:
        cluster.close()
        unavailable(str(exc))
    try:
        assert cluster.is_running(1)
        assert anyio.run(kafka_admin.broker_ids, cluster.bootstrap_servers) == {1}
        pid = cluster._procs[1].pid
        assert cluster.node(1).server_log.parent.is_dir()
    finally:
        cluster.close()
    assert not cluster.is_running(1)
    assert not cluster.workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.kafka
@pytest.mark.slow
def test_cli_kafka_start_prints_bootstrap_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "capgroup.cli.main", "kafka", "start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until started, or empty if the process died
        if not line.startswith("bootstrap servers:"):
            proc.kill()
            unavailable(f"capgroup kafka start printed {line!r}: {proc.stderr.read()[-2000:]}")
        bootstrap = line.split(":", 1)[1].strip()
        assert anyio.run(kafka_admin.broker_ids, bootstrap) == {1}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        host, port = bootstrap.rsplit(":", 1)
        with pytest.raises(OSError):  # noqa: PT011 - refused: the broker is gone
            anyio.run(anyio.connect_tcp, host, int(port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sweep_removes_only_dirs_of_dead_owners(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    base = Path(kafka_cluster.tempfile.gettempdir())
    stale = base / f"capgroup-kafka-test-stale-{uuid.uuid4().hex[:6]}"
    live = base / f"capgroup-kafka-test-live-{uuid.uuid4().hex[:6]}"
    for directory, pid in ((stale, dead.stdout.strip()), (live, str(os.getpid()))):
        directory.mkdir()
        (directory / "owner.pid").write_text(pid)
    try:
        removed = kafka_cluster.sweep_stale_workdirs()
        assert stale in removed
        assert not stale.exists()
        assert live.exists()
    finally:
        for directory in (stale, live):
            kafka_cluster.shutil.rmtree(directory, ignore_errors=True)
