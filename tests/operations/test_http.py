"""The operations HTTP server: /metrics, /healthz and /readyz for a stub consumer (no broker)
and against a real BatchingConsumer on the test broker, the server started beside it by
``run_with_operations`` (as ``capgroup run`` does), and requests that must not hurt the
consumer."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from capgroup import (
    FencedInstanceError,
    GroupFatalError,
    SettingsError,
    TopicPartition,
    load_settings,
)
from capgroup.membership.model import MembershipSnapshot, MemberState
from capgroup.operations.http import OperationsServerError, serve_operations
from capgroup.operations.serve import run_with_operations
from capgroup.runtime.stats import ConsumerStats
from tests.operations.stubs import idle_stats
from tests.operations.test_metrics import parse_samples, value
from tests.runtime.harness import Recorder, consumer_settings, produce, running, wait_until
from tests.runtime.test_consumer_process import capgroup_run

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@dataclass
class Reply:
    """A parsed HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


async def request(port: int, path: str, method: str = "GET", raw: bytes | None = None) -> Reply:
    """Send one request (or ``raw`` bytes) to 127.0.0.1:``port`` and read the whole answer."""
    with anyio.fail_after(10):
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            await stream.send(raw or f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            data = b""
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, field = line.partition(":")
        headers[name.strip().lower()] = field.strip()
    return Reply(int(lines[0].split(" ")[1]), headers, body)


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def taken_port() -> Iterator[int]:
    """A port something else listens on while the context lasts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def read_url(url: str) -> str:
    """GET ``url`` with the standard library's client (blocking)."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def make_consumer(kafka: Any, topic: str, group: str, **overrides: Any) -> Recorder:
    """A recording consumer with a far-away age limit (batches flush by count only)."""
    limits: dict[str, Any] = {"batch_max_records": 10, "batch_max_age_ms": 600_000}
    return Recorder(
        "a", **consumer_settings(kafka.bootstrap_servers, group, topic, **{**limits, **overrides})
    )


async def test_probes_follow_the_member_from_before_join_to_stable(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    consumer = make_consumer(kafka, topic, unique_id("g"))
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_operations, consumer, "127.0.0.1", 0)
        assert port > 0
        # Not running yet: alive, not ready, and the body says why.
        live = await request(port, "/healthz")
        assert (live.status, live.json()["status"]) == (200, "ok")
        ready = await request(port, "/readyz")
        assert ready.status == 503
        assert ready.headers["content-type"] == "application/json"
        assert ready.json()["reasons"] == ["the consumer is not running yet"]
        async with running(consumer):
            ready = await request(port, "/readyz")
            assert ready.status == 200, ready.body
            body = ready.json()
            assert body["state"] == "stable"
            assert body["generation"] == consumer.generation.generation_id >= 0
            assert body["assigned_partitions"] == 1
            assert (await request(port, "/healthz")).status == 200
        # Stopped gracefully: the engine is gone, so neither probe passes any more.
        ready = await request(port, "/readyz")
        assert ready.status == 503
        assert "member state is stopped, not stable" in ready.json()["reasons"]
        assert (await request(port, "/healthz")).status == 503
        tg.cancel_scope.cancel()


async def test_run_serves_metrics_that_move_with_consumed_records(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    group = unique_id("g")
    port = free_port()
    consumer = make_consumer(
        kafka, topic, group, http_port=port, http_host="127.0.0.1", group_instance_id="http-a"
    )
    async with running(consumer, operations=True):
        # run_with_operations started the server before the consumer joined.
        first = await request(port, "/metrics")
        assert first.status == 200
        assert first.headers["content-type"].startswith("text/plain")
        before = parse_samples(first.body.decode(), group, "http-a")
        assert value(before, "capgroup_records_in_total") == 0
        assert value(before, "capgroup_member_state", state="stable") == 1
        assert (await request(port, "/readyz")).status == 200

        await produce(kafka.bootstrap_servers, topic, 0, 23)
        await wait_until(lambda: len(consumer.batches) == 2, 20, "two flushed batches")
        await wait_until(lambda: consumer.stats.counters.records_in == 23, 20, "23 records in")
        after = parse_samples((await request(port, "/metrics")).body.decode(), group, "http-a")
        assert value(after, "capgroup_records_in_total") == 23
        assert value(after, "capgroup_batches_flushed_total") == 2
        assert value(after, "capgroup_records_flushed_total") == 20
        held = value(after, "capgroup_partition_buffered_bytes", topic=topic, partition="0")
        tp = TopicPartition(topic, 0)
        assert held == consumer.stats.buffered_bytes_by_partition[tp] > 0
        # A standard client (in a thread: it blocks) gets the same.
        text = await anyio.to_thread.run_sync(read_url, f"http://127.0.0.1:{port}/metrics")
        assert "capgroup_records_in_total" in text
        head = await request(port, "/metrics", method="HEAD")
        assert (head.status, head.body) == (200, b"")
        assert int(head.headers["content-length"]) > 0
    # The server stopped when the consumer returned: nothing listens any more.
    with pytest.raises(OSError, match="connection attempts failed"):
        await request(port, "/healthz")


async def test_a_stopped_partition_fails_readiness_but_not_liveness(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    port = free_port()
    consumer = make_consumer(
        kafka,
        topic,
        unique_id("g"),
        http_port=port,
        batch_max_records=5,
        flush_retry_max_attempts=2,
        flush_failure_policy="stop_partition",
    )
    consumer.fail = lambda _batch: True
    async with running(consumer, operations=True):
        await produce(kafka.bootstrap_servers, topic, 0, 5)
        await wait_until(lambda: not consumer.healthy, 20, "the partition to stop")
        ready = await request(port, "/readyz")
        assert ready.status == 503
        body = ready.json()
        assert body["stopped_partitions"] == [f"{topic}-0"]
        assert body["reasons"] == [f"partitions stopped after a flush failure: {topic}-0"]
        live = await request(port, "/healthz")
        assert live.status == 200, live.body
        assert consumer.stats.stopped_partitions == {TopicPartition(topic, 0)}


async def test_bad_requests_are_answered_and_do_not_hurt_the_consumer(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    port = free_port()
    consumer = make_consumer(kafka, topic, unique_id("g"), http_port=port)
    async with running(consumer, operations=True):
        assert (await request(port, "/nope")).status == 404
        assert (await request(port, "/metrics", method="POST")).status == 405
        assert (await request(port, "", raw=b"garbage\r\n\r\n")).status == 400
        assert (await request(port, "/readyz?verbose=1")).status == 200
        # A head larger than the server reads, and a client that hangs up mid-request.
        oversized = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000  # no end of head
        assert (await request(port, "", raw=oversized)).status == 431
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.send(b"GET /metr")
        await stream.aclose()
        # The consumer still runs and still serves.
        await produce(kafka.bootstrap_servers, topic, 0, 10)
        await wait_until(lambda: len(consumer.batches) == 1, 20, "a flushed batch")
        assert consumer.healthy
        assert (await request(port, "/healthz")).status == 200


async def test_a_port_in_use_stops_run_with_a_settings_error(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    with taken_port() as port:
        consumer = make_consumer(kafka, topic, unique_id("g"), http_port=port)
        with anyio.fail_after(30), pytest.raises(OperationsServerError) as caught:
            await run_with_operations(consumer, handle_signals=False)
    assert isinstance(caught.value, SettingsError)
    assert "CAPGROUP_HTTP_PORT" in str(caught.value)
    assert consumer.membership is None, "it must fail before the consumer starts to join"


def test_urllib_sees_503_for_an_unready_member_without_kafka() -> None:
    """No broker needed: a consumer that was never run is alive but not ready."""
    consumer = Recorder("a", group_id="g", topics=["t"])

    async def scenario() -> tuple[int, int]:
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_operations, consumer, "127.0.0.1", 0)

            def fetch(path: str) -> int:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                        return int(r.status)
                except urllib.error.HTTPError as error:
                    return error.code

            live = await anyio.to_thread.run_sync(fetch, "/healthz")
            ready = await anyio.to_thread.run_sync(fetch, "/readyz")
            tg.cancel_scope.cancel()
        return live, ready

    assert anyio.run(scenario) == (200, 503)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "pod-0.svc"])
def test_http_host_accepts_addresses_and_host_names(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPGROUP_HTTP_HOST", host)
    assert load_settings().http_host == host


@pytest.mark.parametrize("host", ["", "bad host", "-leading", "a..b", "http://x"])
def test_http_host_rejects_what_cannot_be_listened_on(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPGROUP_HTTP_HOST", host)
    with pytest.raises(SettingsError, match="CAPGROUP_HTTP_HOST"):
        load_settings()


@pytest.mark.parametrize(
    ("port", "ok"),
    [
        ("0", True),
        ("9095", True),
        ("65535", True),
        ("65536", False),
        ("-1", False),
        ("http", False),
    ],
)
def test_http_port_range(port: str, ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPGROUP_HTTP_PORT", port)
    if ok:
        assert load_settings().http_port == int(port)
    else:
        with pytest.raises(SettingsError, match=r"CAPGROUP_HTTP_PORT.*accepted range: >= 0"):
            load_settings()


def test_http_defaults_keep_the_server_off_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGROUP_HTTP_PORT", raising=False)
    monkeypatch.delenv("CAPGROUP_HTTP_HOST", raising=False)
    settings = load_settings()
    assert (settings.http_port, settings.http_host) == (0, "127.0.0.1")


async def test_capgroup_run_exits_2_naming_the_port_when_it_is_taken(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    with taken_port() as port:
        env = {
            "CAPGROUP_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "CAPGROUP_GROUP_ID": unique_id("g"),
            "CAPGROUP_TOPICS": topic,
            "CAPGROUP_HTTP_PORT": str(port),
        }
        target = "tests.runtime.sink_consumer:SinkConsumer"
        result = await anyio.to_thread.run_sync(capgroup_run, target, env)
    assert result.returncode == 2, result.stderr
    assert f"CAPGROUP_HTTP_PORT: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_fenced_member_fails_liveness(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    group, instance = unique_id("g"), unique_id("twin")
    a = make_consumer(kafka, topic, group, group_instance_id=instance)
    twin = make_consumer(kafka, topic, group, group_instance_id=instance)
    fatal: list[BaseException] = []

    async def run_a(*, task_status: Any) -> None:
        try:
            await a.run(handle_signals=False, task_status=task_status)
        except GroupFatalError as error:
            fatal.append(error)

    async with anyio.create_task_group() as tg:
        # Served from outside a's task group, so the server outlives a's run.
        port = await tg.start(serve_operations, a, "127.0.0.1", 0)
        await tg.start(run_a)
        assert (await request(port, "/healthz")).status == 200
        async with running(twin):
            await wait_until(lambda: bool(fatal), 30, "the first member to be fenced")
            assert isinstance(fatal[0], FencedInstanceError)
            live = await request(port, "/healthz")
            assert live.status == 503, live.body
            assert live.json()["reasons"] == [
                "the member failed fatally (see the consumer_fatal log event)",
                "the membership engine stopped (fenced, failed or shut down)",
            ]
            assert (await request(port, "/readyz")).status == 503
        tg.cancel_scope.cancel()


class StubConsumer:
    """An :class:`~capgroup.operations.metrics.ObservableConsumer` without a broker: a test
    sets its membership state and stopped partitions; ``run`` waits for :meth:`stop` (or
    raises ``error``) and reports started once ``joined`` is set."""

    def __init__(self, **overrides: Any) -> None:
        self.settings = load_settings(group_id="g", topics=["t"], **overrides)
        self.state: MemberState | None = None
        self.stopped: frozenset[TopicPartition] = frozenset()
        self.fatal = False
        self.error: BaseException | None = None
        self.ran = False
        self.joined = anyio.Event()
        self.done = anyio.Event()

    @property
    def membership(self) -> MembershipSnapshot | None:
        if self.state is None:
            return None
        return MembershipSnapshot(
            group_id="g",
            member_id="m-1",
            instance_id=None,
            state=self.state,
            generation_id=3 if self.state is MemberState.STABLE else -1,
            is_leader=True,
            assigned=frozenset({TopicPartition("t", 0)}),
            advertised=None,
            rebalances=1,
            last_rebalance_seconds=0.1,
        )

    @property
    def healthy(self) -> bool:
        return not self.stopped and not self.fatal

    @property
    def stats(self) -> ConsumerStats:
        return idle_stats(owned_partitions=1, stopped_partitions=self.stopped)

    def stop(self) -> None:
        self.done.set()

    async def run(
        self, *, handle_signals: bool = True, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.ran = True
        self.state = MemberState.JOINING
        await self.joined.wait()
        if self.error is not None:
            self.state, self.fatal = MemberState.STOPPED, True
            raise self.error
        self.state = MemberState.STABLE
        task_status.started()
        await self.done.wait()
        self.state = MemberState.STOPPED


async def test_probes_of_a_stub_consumer_follow_its_state_without_kafka() -> None:
    consumer = StubConsumer()
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_operations, consumer, "127.0.0.1", 0)
        assert (await request(port, "/healthz")).status == 200
        ready = await request(port, "/readyz")
        assert (ready.status, ready.json()["reasons"]) == (
            503,
            ["the consumer is not running yet"],
        )
        consumer.state = MemberState.STABLE
        ready = await request(port, "/readyz")
        assert ready.status == 200, ready.body
        assert ready.json() == {
            "status": "ok",
            "reasons": [],
            "state": "stable",
            "generation": 3,
            "assigned_partitions": 1,
            "stopped_partitions": [],
            "stopped": {},
        }
        consumer.stopped = frozenset({TopicPartition("t", 0)})
        assert (await request(port, "/readyz")).status == 503
        assert (await request(port, "/healthz")).status == 200, "a stopped partition stays alive"
        consumer.fatal, consumer.stopped = True, frozenset()
        consumer.state = MemberState.STOPPED
        live = await request(port, "/healthz")
        assert live.status == 503
        assert live.json()["state"] == "stopped"
        assert (await request(port, "/metrics")).status == 200
        tg.cancel_scope.cancel()


async def test_run_with_operations_serves_before_the_join_and_stops_with_the_consumer() -> None:
    port = free_port()
    consumer = StubConsumer(http_port=port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_with_operations(consumer, handle_signals=False))
        # Probes answer while the first join is in flight.
        await wait_until(lambda: consumer.ran, 5, "the consumer to start joining")
        ready = await request(port, "/readyz")
        assert ready.status == 503
        assert ready.json()["state"] == "joining"
        assert (await request(port, "/healthz")).status == 200
        consumer.joined.set()
        await wait_until(lambda: consumer.state is MemberState.STABLE, 5, "stable")
        assert (await request(port, "/readyz")).status == 200
        consumer.stop()
    with pytest.raises(OSError, match="connection attempts failed"):
        await request(port, "/healthz")


async def test_run_with_operations_reports_started_once_the_consumer_has() -> None:
    consumer = StubConsumer(http_port=free_port())
    consumer.joined.set()
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: run_with_operations(consumer, task_status=task_status))
        assert consumer.state is MemberState.STABLE
        consumer.stop()


async def test_run_with_operations_raises_the_consumers_error_unwrapped() -> None:
    consumer = StubConsumer(http_port=free_port())
    consumer.error = FencedInstanceError("twin joined with the same instance id")
    consumer.joined.set()
    with anyio.fail_after(5), pytest.raises(FencedInstanceError):
        await run_with_operations(consumer, handle_signals=False)


async def test_run_with_operations_fails_on_a_taken_port_before_the_consumer_runs() -> None:
    with taken_port() as port:
        consumer = StubConsumer(http_port=port)
        with anyio.fail_after(5), pytest.raises(OperationsServerError, match="CAPGROUP_HTTP_PORT"):
            await run_with_operations(consumer, handle_signals=False)
    assert not consumer.ran


async def test_run_with_operations_without_a_port_only_runs_the_consumer() -> None:
    consumer = StubConsumer()
    consumer.joined.set()
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: run_with_operations(consumer, task_status=task_status))
        assert consumer.state is MemberState.STABLE
        consumer.stop()
    assert consumer.state is MemberState.STOPPED
