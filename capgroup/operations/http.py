"""The operations HTTP server: ``/metrics``, ``/healthz`` and ``/readyz``.

A deliberately small HTTP/1.1 server on anyio streams (one request per connection, GET and
HEAD only). :func:`capgroup.operations.serve.run_with_operations` (what ``capgroup run`` uses)
starts it beside the consumer when ``CAPGROUP_HTTP_PORT`` is set: before the member joins
(probes answer during a long first join), stopped when the consumer returns; no task outlives
it. The runtime itself never imports this module.

- ``/metrics``: Prometheus text (or OpenMetrics, when the scraper asks for it) from
  :mod:`capgroup.operations.metrics`.
- ``/healthz`` (liveness): 200 while the event loop answers and the member has not failed
  fatally (e.g. fenced by a twin with the same static id); 503 otherwise. A partition stopped
  by a flush failure does **not** fail liveness: a restart would replay the same poison batch
  and turn one bad batch into a crash loop and a rebalance per restart. It fails readiness and
  sets ``capgroup_healthy`` to 0, for an operator to act on.
- ``/readyz`` (readiness): 200 once the member is in a generation with its assignment applied
  (state ``stable``) and owns no stopped partition; 503 otherwise. Both health bodies are JSON
  saying why. Stopped partitions are those the member owns now, with why and at which offset
  they stopped; one that moved to another member is no longer listed.

Nothing that goes wrong in here may take the consumer down: a failed request is logged and
closed, and if the listener itself fails the server logs it and returns, so the liveness
probe fails and Kubernetes restarts the pod through SIGTERM and a graceful shutdown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from capgroup.log import get_logger
from capgroup.membership.model import MemberState
from capgroup.operations.metrics import ObservableConsumer, metrics_registry, render_metrics
from capgroup.settings import ENV_PREFIX, SettingsError
from capgroup.types import TopicPartition

__all__ = [
    "HealthCheck",
    "OperationsServer",
    "OperationsServerError",
    "liveness",
    "readiness",
    "serve_operations",
]

_log = get_logger("operations.http")

#: Longest request head we read; probes and scrapers send a few hundred bytes.
MAX_REQUEST_HEAD_BYTES = 8192
#: A client gets this long to send its request and read the answer.
REQUEST_TIMEOUT_SECONDS = 10.0
#: Connections served at once; more are closed at once (a scraper retries, a probe counts a
#: failure), so a flood cannot grow the consumer's memory.
MAX_CONNECTIONS = 32


class OperationsServerError(SettingsError):
    """The operations HTTP server cannot listen where the settings say (``capgroup run``
    reports it like any invalid setting and exits 2)."""


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """The outcome of a liveness or readiness check."""

    ok: bool
    #: Why it failed (empty when ``ok``).
    reasons: tuple[str, ...] = ()
    #: What the check looked at, for the JSON body.
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The JSON body: ``status`` (``ok``/``fail``), ``reasons`` and the details."""
        body = {"status": "ok" if self.ok else "fail", "reasons": list(self.reasons)}
        return json.dumps({**body, **self.detail}, sort_keys=True).encode() + b"\n"


#: Readiness wording of the runtime's stop reasons (others are shown as they are).
_STOP_REASONS = {
    "flush_failed": "after a flush failure",
    "on_partitions_assigned_failed": "because on_partitions_assigned raised",
    "undecodable_record": "at a record deserialize failed on",
}


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)


def liveness(consumer: ObservableConsumer) -> HealthCheck:
    """Liveness: the member has not failed fatally and its engine has not stopped."""
    snapshot = consumer.membership
    stopped = consumer.stats.stopped_partitions
    reasons = []
    # healthy is False for stopped partitions too; only the rest is fatal.
    if not consumer.healthy and not stopped:
        reasons.append("the member failed fatally (see the consumer_fatal log event)")
    if snapshot is not None and snapshot.state is MemberState.STOPPED:
        reasons.append("the membership engine stopped (fenced, failed or shut down)")
    detail = {"state": None if snapshot is None else snapshot.state.value}
    return HealthCheck(not reasons, tuple(reasons), detail)


def readiness(consumer: ObservableConsumer) -> HealthCheck:
    """Readiness: in a generation with the assignment applied, and no partition stopped."""
    snapshot = consumer.membership
    stats = consumer.stats
    reasons = []
    if snapshot is None:
        reasons.append("the consumer is not running yet")
    else:
        if snapshot.state is not MemberState.STABLE:
            reasons.append(f"member state is {snapshot.state.value}, not stable")
        if snapshot.generation_id < 0:
            reasons.append("not in a generation")
    by_reason: dict[str, list[TopicPartition]] = {}
    for tp in stats.stopped_partitions:
        stop = stats.stopped.get(tp)
        by_reason.setdefault("flush_failed" if stop is None else stop.reason, []).append(tp)
    for why, partitions in sorted(by_reason.items()):
        reasons.append(
            f"partitions stopped {_STOP_REASONS.get(why, why)}: {', '.join(_names(partitions))}"
        )
    if not consumer.healthy and not stats.stopped_partitions:
        reasons.append("the member failed fatally")
    detail = {
        "state": None if snapshot is None else snapshot.state.value,
        "generation": None if snapshot is None else snapshot.generation_id,
        "assigned_partitions": stats.owned_partitions,
        "stopped_partitions": _names(stats.stopped_partitions),
        # Where each stopped partition resumes (its next owner, or this member after a restart).
        "stopped": {
            f"{tp.topic}-{tp.partition}": {"reason": stop.reason, "offset": stop.offset}
            for tp, stop in sorted(stats.stopped.items())
        },
    }
    return HealthCheck(not reasons, tuple(reasons), detail)


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    content_type: str
    body: bytes


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class OperationsServer:
    """Answers ``/metrics``, ``/healthz`` and ``/readyz`` for one consumer."""

    def __init__(self, consumer: ObservableConsumer) -> None:
        """Serve ``consumer``; :meth:`serve` listens."""
        self._consumer = consumer
        self._registry = metrics_registry(consumer)
        self._open = 0

    def _respond(self, method: str, target: str, headers: Mapping[str, str]) -> _Response:
        """The response to one request (``headers`` with lower-case names)."""
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            return _Response(404, _TEXT, b"not found: try /metrics, /healthz or /readyz\n")
        if method not in ("GET", "HEAD"):
            return _Response(405, _TEXT, b"only GET and HEAD\n")
        if path == "/metrics":
            body, content_type = render_metrics(self._registry, headers.get("accept", ""))
            return _Response(200, content_type, body)
        check = liveness(self._consumer) if path == "/healthz" else readiness(self._consumer)
        return _Response(200 if check.ok else 503, _JSON, check.to_json())

    async def serve(
        self, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` (port 0: any free port) and serve until cancelled.

        Signals ``task_status`` with the bound port once listening; raises
        :class:`OperationsServerError` if it cannot listen.
        """
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as exc:
            raise OperationsServerError(
                [
                    f"{ENV_PREFIX}HTTP_HOST, {ENV_PREFIX}HTTP_PORT: cannot listen on "
                    f"{host}:{port}: {exc.strerror or exc}"
                ]
            ) from exc
        async with listener, anyio.create_task_group() as connections:
            bound = int(listener.extra(SocketAttribute.local_port))
            _log.info("operations_http_listening", host=host, port=bound)
            task_status.started(bound)
            try:
                await listener.serve(self._handle, task_group=connections)
            except Exception as exc:
                # E.g. accept() out of file descriptors. Serving nothing makes the liveness
                # probe fail, which restarts the pod gracefully; raising would instead tear
                # down the consumer's task group without flushing.
                _log.error("operations_http_failed", error=str(exc), error_type=type(exc).__name__)

    async def _handle(self, stream: ByteStream) -> None:
        async with stream:
            if self._open >= MAX_CONNECTIONS:
                return
            self._open += 1
            try:
                with anyio.move_on_after(REQUEST_TIMEOUT_SECONDS):
                    await self._exchange(stream)
            except Exception as exc:
                # A client that hangs up or sends garbage must not reach the task group.
                _log.debug("operations_http_request_failed", error_type=type(exc).__name__)
            finally:
                self._open -= 1

    async def _exchange(self, stream: ByteStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        try:
            head = await reader.receive_until(b"\r\n\r\n", MAX_REQUEST_HEAD_BYTES)
        except anyio.DelimiterNotFound:
            head = b""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if not head:
            response = _Response(431, _TEXT, b"request head too large\n")
            method = "GET"
        elif len(parts) != 3 or not parts[2].startswith("HTTP/"):
            response = _Response(400, _TEXT, b"bad request line\n")
            method = "GET"
        else:
            method, target = parts[0], parts[1]
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            try:
                response = self._respond(method, target, headers)
            except Exception as exc:
                _log.warning(
                    "operations_http_handler_failed",
                    path=target,
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
                response = _Response(500, _TEXT, b"internal error\n")
        status_line = f"HTTP/1.1 {response.status} {_REASONS[response.status]}\r\n"
        header_lines = (
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        payload = (status_line + header_lines).encode("latin-1")
        if method != "HEAD":
            payload += response.body
        await stream.send(payload)


async def serve_operations(
    consumer: ObservableConsumer,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``consumer``'s operations endpoints on ``host:port`` until cancelled; for
    ``await tg.start(serve_operations, consumer, host, port)``, which returns the bound port.

    A port that cannot be bound raises :class:`OperationsServerError`, a
    :class:`~capgroup.SettingsError` naming ``CAPGROUP_HTTP_PORT``.
    """
    await OperationsServer(consumer).serve(host, port, task_status=task_status)
