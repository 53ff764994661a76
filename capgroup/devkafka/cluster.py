"""A real Apache Kafka (KRaft) on 127.0.0.1, run from Maven Central jars, for tests and the demo.

:class:`LocalKafkaCluster` formats KRaft storage and starts one combined broker+controller node,
or three such nodes with a static controller quorum, on ports chosen at run time so that
several checkouts can run their suites at once. Nodes can be stopped, killed and restarted one
at a time for failure tests, and every JVM is reaped when the cluster is closed,
garbage-collected, or the interpreter exits (and killed by the kernel if the interpreter dies).

Typical use::

    with LocalKafkaCluster(nodes=1) as cluster:
        print(cluster.bootstrap_servers)
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio

from capgroup.devkafka.admin import admin_client, broker_ids
from capgroup.devkafka.jars import KAFKA_VERSION, KafkaLocalError, ensure_jars, require_tool
from capgroup.devkafka.secure import (
    CLIENT_USERS,
    SECURITY_MODES,
    SecurityMode,
    SecurityStore,
    create_acls,
)
from capgroup.log import get_logger
from capgroup.settings import CapgroupSettings, load_settings

__all__ = [
    "HOST",
    "JVM_OPTS",
    "LocalKafkaCluster",
    "NodeSpec",
    "free_ports",
    "local_kafka",
    "new_cluster_id",
    "render_log4j2",
    "render_node_config",
    "render_properties",
    "sweep_stale_workdirs",
]

#: Host every node binds to and advertises.
HOST = "127.0.0.1"
#: JVM options of a broker: small heap, few GC threads, quick start (C1 only) on 2-core machines.
JVM_OPTS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)


_log = get_logger("devkafka")

_LOG4J2_TEMPLATE = """\
# Broker logs stay quiet: warnings and worse go to a file in the node directory.
status = error
name = capgroup-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
"""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Where one combined broker+controller node listens and keeps its data."""

    node_id: int
    broker_port: int
    controller_port: int
    directory: Path

    @property
    def bootstrap(self) -> str:
        """``host:port`` of this node's client listener."""
        return f"{HOST}:{self.broker_port}"

    @property
    def data_dir(self) -> Path:
        """KRaft metadata and partition logs of this node."""
        return self.directory / "data"

    @property
    def properties_file(self) -> Path:
        """The node's ``server.properties``."""
        return self.directory / "server.properties"

    @property
    def log4j_file(self) -> Path:
        """The node's log4j2 configuration."""
        return self.directory / "log4j2.properties"

    @property
    def server_log(self) -> Path:
        """Broker log (WARN and above)."""
        return self.directory / "server.log"

    @property
    def console_log(self) -> Path:
        """The JVM's stdout and stderr."""
        return self.directory / "console.log"


# --- pure helpers -------------------------------------------------------------------------


def new_cluster_id() -> str:
    """Return a fresh KRaft cluster id: a random UUID as 22 characters of unpadded base64url.

    This is what ``kafka-storage random-uuid`` prints, without paying for a JVM start.
    """
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")


def _major(version: str) -> int:
    """The major number of a Kafka version such as ``3.9.1`` (0 if it does not parse)."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def render_node_config(
    node: NodeSpec,
    voters: Sequence[NodeSpec],
    *,
    offsets_partitions: int = 3,
    extra: Mapping[str, str] | None = None,
    version: str = KAFKA_VERSION,
) -> dict[str, str]:
    """Return the ``server.properties`` of ``node`` in a cluster whose controllers are ``voters``.

    Tuned for fast tests: no initial rebalance delay, 1 s minimum session timeout, no topic
    auto-creation, quick fencing of dead brokers. A single-node cluster gets replication-factor 1
    for internal topics; a larger one keeps Kafka's defaults so internal topics are replicated.
    ``version`` is the Kafka version the node runs: the static ``controller.quorum.voters``
    form works from 3.x on, and the share-group coordinator (KIP-932) exists only from 4.0.
    """
    quorum = ",".join(f"{v.node_id}@{HOST}:{v.controller_port}" for v in voters)
    config = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": quorum,
        "listeners": f"PLAINTEXT://{HOST}:{node.broker_port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.data_dir),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        # More than one partition so that, on three nodes, group coordinators spread out and a
        # test can kill the coordinator of its group wherever it lives.
        "offsets.topic.num.partitions": str(offsets_partitions),
        # A killed node is fenced within seconds instead of the default 9 s.
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "500",
        # Few threads: these brokers share two cores with the tests and each other.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        # Retention runs every second instead of every 5 minutes (and starts 1 s after start-up,
        # not 30 s), so a topic with a short retention.ms loses its old segments within a test
        # (the lag tests rely on it).
        "log.retention.check.interval.ms": "1000",
        "log.initial.task.delay.ms": "1000",
    }
    if len(voters) == 1:
        config |= {
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
        }
        if _major(version) >= 4:
            config |= {
                "share.coordinator.state.topic.replication.factor": "1",
                "share.coordinator.state.topic.min.isr": "1",
            }
    if extra:
        config |= dict(extra)
    return config


def render_properties(config: Mapping[str, str]) -> str:
    """Render a Java properties file, one ``key=value`` per line in key order."""
    return "".join(f"{key}={config[key]}\n" for key in sorted(config))


def render_log4j2(log_file: Path) -> str:
    """Return a log4j2 properties configuration sending WARN and above to ``log_file``."""
    return _LOG4J2_TEMPLATE.format(log_file=log_file)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports free on 127.0.0.1 right now.

    All sockets stay bound until every port is chosen, so the ports are distinct; another
    process may still take one before Kafka binds it, which :meth:`LocalKafkaCluster.start`
    retries.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# --- processes ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL the JVM when the
    # parent goes away, so even a SIGKILLed test session leaves no broker behind.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _preexec() -> Callable[[], None] | None:
    # PDEATHSIG fires when the forking *thread* exits; only the main thread lives long enough.
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return _die_with_parent
    return None


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM ``proc``, SIGKILL it after ``timeout`` seconds; return its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode


def _reap(procs: dict[int, subprocess.Popen[bytes]], workdir: Path | None) -> None:
    # Finalizer: must not reference the cluster object, only its process table and directory.
    running = [p for p in procs.values() if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    procs.clear()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


_WORKDIR_PREFIX = "capgroup-kafka-"
_OWNER_FILE = "owner.pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_workdirs() -> list[Path]:
    """Remove temporary cluster directories whose owning process is gone; return them.

    A SIGKILLed session has its JVMs killed by the kernel but cannot delete its data.
    """
    removed = []
    for directory in Path(tempfile.gettempdir()).glob(_WORKDIR_PREFIX + "*"):
        try:
            owner = int((directory / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _pid_alive(owner):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LocalKafkaCluster:
    """One or three combined broker+controller Kafka nodes on 127.0.0.1.

    ``start()`` fetches jars if needed, formats storage and waits until every node answers an
    admin client. Node ids run from 1 to ``nodes``; methods taking ``node_id`` use those ids
    (the ones :func:`find_group_coordinator` returns). Use as a context manager, or call
    :meth:`close`; JVMs are also reaped at garbage collection and interpreter exit.
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        version: str = KAFKA_VERSION,
        workdir: Path | None = None,
        jar_dir: Path | None = None,
        offsets_partitions: int = 3,
        extra_config: Mapping[str, str] | None = None,
        start_timeout: float = 90.0,
        security: SecurityMode = "plaintext",
    ) -> None:
        """``security`` secures the client listener: ``ssl`` (mutual TLS) or ``sasl_ssl``
        (SCRAM-SHA-512 and PLAIN over TLS), with ACLs (:mod:`capgroup.devkafka.secure`)."""
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        if security not in SECURITY_MODES:
            raise ValueError(f"security must be one of {', '.join(SECURITY_MODES)}")
        self.node_count = nodes
        self.version = version
        self.start_timeout = start_timeout
        self._jar_dir = jar_dir
        self._offsets_partitions = offsets_partitions
        self._extra = dict(extra_config or {})
        self._own_workdir = workdir is None
        if workdir is None:
            sweep_stale_workdirs()
            workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
            (workdir / _OWNER_FILE).write_text(str(os.getpid()))
        self.workdir = workdir
        self.security: SecurityMode = security
        #: Certificates, keys and passwords of a secured cluster.
        self.security_store = SecurityStore(security, workdir / "security")
        self.cluster_id = new_cluster_id()
        self.nodes: list[NodeSpec] = []
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._finalizer = weakref.finalize(
            self, _reap, self._procs, self.workdir if self._own_workdir else None
        )

    # -- addresses ----------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated ``host:port`` of every node's client listener."""
        return ",".join(n.bootstrap for n in self.nodes)

    # -- security -------------------------------------------------------------------------

    def client_env(self, user: str = "alice", mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """The ``CAPGROUP_*`` variables a client needs to connect as ``user`` (``admin``,
        ``alice``, ``bob`` or ``carol`` on a secured cluster; see
        :mod:`capgroup.devkafka.secure`)."""
        return self.security_store.client_env(self.bootstrap_servers, user, mechanism)

    def client_settings(
        self, user: str = "alice", mechanism: str = "SCRAM-SHA-512", **overrides: Any
    ) -> CapgroupSettings:
        """Settings connecting as ``user``; ``overrides`` set other fields (group id, ...).

        Every security field is given explicitly, so the caller's ``CAPGROUP_*`` security
        variables do not leak in.
        """
        fields = self.security_store.client_fields(self.bootstrap_servers, user, mechanism)
        return load_settings(**{**fields, **overrides})

    def admin_settings(self) -> CapgroupSettings:
        """Settings of the super user (plaintext: no security at all)."""
        return self.client_settings("admin")

    async def _grant_acls(self) -> None:
        async with admin_client(self.bootstrap_servers, self.admin_settings()) as admin:
            await create_acls(admin, CLIENT_USERS)

    def _security_config(self, spec: NodeSpec) -> dict[str, str]:
        if self.security == "plaintext":
            return {}
        name = self.security_store.listener
        config = {
            "listeners": f"{name}://{HOST}:{spec.broker_port},"
            f"CONTROLLER://{HOST}:{spec.controller_port}",
            "advertised.listeners": f"{name}://{HOST}:{spec.broker_port}",
            "inter.broker.listener.name": name,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{name}:{name}",
            **self.security_store.broker_config(),
        }
        # PEM blocks span lines: a properties file takes them as \n escapes.
        return {key: value.replace("\n", "\\n") for key, value in config.items()}

    def node(self, node_id: int) -> NodeSpec:
        """The spec of node ``node_id`` (1-based Kafka node id)."""
        for spec in self.nodes:
            if spec.node_id == node_id:
                return spec
        raise KeyError(f"no node {node_id}; nodes are {[n.node_id for n in self.nodes]}")

    def is_running(self, node_id: int) -> bool:
        """Whether node ``node_id``'s JVM is alive."""
        proc = self._procs.get(node_id)
        return proc is not None and proc.poll() is None

    def log_tail(self, node_id: int, lines: int = 30) -> str:
        """Last lines of a node's broker log and console output, for error messages."""
        spec = self.node(node_id)
        return (
            f"--- node {node_id} {spec.server_log} ---\n{_tail(spec.server_log, lines)}\n"
            f"--- node {node_id} {spec.console_log} ---\n{_tail(spec.console_log, lines)}"
        )

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Fetch jars, format storage, start every node and wait until all answer.

        A port taken by another process between choosing and binding it is retried with new
        ports, up to three times.
        """
        java = require_tool("java")
        if self._jar_dir is None:
            self._jar_dir = ensure_jars(self.version)
        started = time.monotonic()
        self.security_store.generate()
        for attempt in range(1, 4):
            self._layout()
            try:
                self._format(java)
            except KafkaLocalError as exc:
                # Seen once while several test sessions started brokers at the same time; the
                # cause was not kept, so log the output and try again with a fresh layout.
                if attempt == 3:
                    raise
                _log.warning(
                    "kafka_format_failed_retrying", attempt=attempt, error=str(exc)[-2000:]
                )
                time.sleep(1)
                continue
            for spec in self.nodes:
                self.start_node(spec.node_id)
            try:
                anyio.run(self.wait_ready, self.start_timeout)
            except KafkaLocalError as exc:
                clash = any(
                    "Address already in use" in self.log_tail(s.node_id, 200) for s in self.nodes
                )
                self._stop_all(timeout=5)
                if not clash or attempt == 3:
                    raise
                _log.warning("kafka_port_clash_retrying", attempt=attempt, error=str(exc)[:200])
                continue
            break
        if self.security != "plaintext":
            anyio.run(self._grant_acls)
        _log.info(
            "kafka_cluster_started",
            nodes=self.node_count,
            bootstrap_servers=self.bootstrap_servers,
            seconds=round(time.monotonic() - started, 1),
        )
        return self

    def _layout(self) -> None:
        ports = free_ports(2 * self.node_count)
        for spec in self.nodes:
            shutil.rmtree(spec.directory, ignore_errors=True)
        self.cluster_id = new_cluster_id()
        self.nodes = [
            NodeSpec(
                node_id=i + 1,
                broker_port=ports[2 * i],
                controller_port=ports[2 * i + 1],
                directory=self.workdir / f"node-{i + 1}",
            )
            for i in range(self.node_count)
        ]
        for spec in self.nodes:
            spec.data_dir.mkdir(parents=True, exist_ok=True)
            config = render_node_config(
                spec,
                self.nodes,
                offsets_partitions=self._offsets_partitions,
                extra={**self._security_config(spec), **self._extra},
                version=self.version,
            )
            spec.properties_file.write_text(render_properties(config))
            spec.log4j_file.write_text(render_log4j2(spec.server_log))

    def _java_command(self, java: str, spec: NodeSpec, *main: str) -> list[str]:
        assert self._jar_dir is not None
        return [
            java,
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={spec.log4j_file}",
            f"-Dkafka.logs.dir={spec.directory}",
            "-cp",
            f"{self._jar_dir}/*",
            *main,
        ]

    def _format(self, java: str) -> None:
        # One formatter JVM per node, all at once: each takes a couple of seconds to start.
        running = []
        for spec in self.nodes:
            command = self._java_command(
                java,
                spec,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(spec.properties_file),
                *self.security_store.format_arguments(),
            )
            running.append(
                (spec, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            )
        for spec, proc in running:
            output, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise KafkaLocalError(
                    f"formatting node {spec.node_id} failed (exit {proc.returncode}):\n"
                    + output.decode(errors="replace")[-3000:]
                )

    def start_node(self, node_id: int) -> None:
        """Launch node ``node_id``'s JVM (it must not be running); does not wait for it.

        Follow with :meth:`wait_ready` (async) or :meth:`wait_ready_sync`.
        """
        if self.is_running(node_id):
            raise KafkaLocalError(f"node {node_id} is already running")
        java = require_tool("java")
        spec = self.node(node_id)
        command = self._java_command(java, spec, "kafka.Kafka", str(spec.properties_file))
        with open(spec.console_log, "ab") as console:
            self._procs[node_id] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop nodes
                preexec_fn=_preexec(),
            )
        _log.info(
            "kafka_node_started",
            node_id=node_id,
            port=spec.broker_port,
            controller_port=spec.controller_port,
            pid=self._procs[node_id].pid,
        )

    def stop_node(self, node_id: int, timeout: float = 30.0) -> int | None:
        """Stop node ``node_id``: SIGTERM, SIGKILL after ``timeout`` s; return its exit code."""
        proc = self._procs.pop(node_id, None)
        if proc is None:
            return None
        code = _terminate(proc, timeout)
        _log.info("kafka_node_stopped", node_id=node_id, exit_code=code)
        return code

    def kill_node(self, node_id: int) -> int | None:
        """SIGKILL node ``node_id``, as a crash would; return its exit code."""
        proc = self._procs.pop(node_id, None)
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        code = proc.wait()
        _log.info("kafka_node_killed", node_id=node_id, exit_code=code)
        return code

    def _stop_all(self, timeout: float) -> None:
        for node_id in list(self._procs):
            proc = self._procs[node_id]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for node_id in list(self._procs):
            self.stop_node(node_id, timeout)

    def close(self, timeout: float = 20.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout`` s) and remove the work dir."""
        self._stop_all(timeout)
        self._finalizer()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.close)

    # -- readiness ----------------------------------------------------------------------

    async def wait_ready(self, within: float | None = None) -> None:
        """Wait until every running node answers an admin client and sees all running brokers.

        Raises :class:`KafkaLocalError` with the nodes' log tails if a node exits or the
        deadline (``within`` s, default :attr:`start_timeout`) passes first.
        """
        limit = self.start_timeout if within is None else within
        deadline = time.monotonic() + limit
        last_error = "no attempt yet"
        while True:
            running = [s for s in self.nodes if s.node_id in self._procs]
            for spec in running:
                if not self.is_running(spec.node_id):
                    raise KafkaLocalError(
                        f"Kafka node {spec.node_id} exited with code "
                        f"{self._procs[spec.node_id].returncode} before it was ready\n"
                        + self.log_tail(spec.node_id)
                    )
            expected = {s.node_id for s in running}
            try:
                unseen = set[int]()
                for spec in running:
                    with anyio.fail_after(max(0.5, min(5.0, deadline - time.monotonic()))):
                        # A bare TCP probe first: aiokafka logs every refused connection.
                        probe = await anyio.connect_tcp(HOST, spec.broker_port)
                        await probe.aclose()
                        seen = await broker_ids(spec.bootstrap, self.admin_settings())
                    unseen |= expected - seen
                if not unseen:
                    return
                last_error = f"brokers {sorted(unseen)} not yet registered"
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                tails = "\n".join(self.log_tail(s.node_id) for s in running)
                raise KafkaLocalError(
                    f"Kafka not ready after {limit:.0f} s ({last_error})\n{tails}"
                )
            await anyio.sleep(0.25)

    def wait_ready_sync(self, within: float | None = None) -> None:
        """Blocking :meth:`wait_ready`, for code outside an event loop."""
        anyio.run(self.wait_ready, within)


@contextlib.contextmanager
def local_kafka(nodes: int = 1, **kwargs: Any) -> Iterator[LocalKafkaCluster]:
    """Start a :class:`LocalKafkaCluster` for the duration of a ``with`` block."""
    cluster = LocalKafkaCluster(nodes, **kwargs)
    with cluster:
        yield cluster
