"""``capgroup kafka``: run the project's local Apache Kafka (KRaft) from Maven Central jars."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from capgroup.devkafka.cluster import LocalKafkaCluster
from capgroup.devkafka.jars import KafkaLocalError, ensure_jars
from capgroup.devkafka.secure import SECURITY_MODES, SecurityMode, render_env_file
from capgroup.log import configure_logging

__all__ = [
    "EXIT_KAFKA",
    "register",
    "run_fetch",
    "run_start",
    "wait_for_stop_signal",
    "write_env_file",
]

#: Exit code when the local Kafka cannot be fetched or started.
EXIT_KAFKA = 3


def register(sub: Any) -> None:
    """Add the ``kafka`` sub-command with ``start`` and ``fetch``."""
    parser = sub.add_parser("kafka", help="run a local Apache Kafka (KRaft) for development")
    actions = parser.add_subparsers(dest="kafka_action", metavar="ACTION", required=True)
    start = actions.add_parser(
        "start", help="start a local cluster, print its bootstrap address, run until Ctrl-C"
    )
    start.add_argument(
        "--nodes", type=int, choices=(1, 3), default=1, help="number of broker+controller nodes"
    )
    start.add_argument(
        "--security",
        choices=SECURITY_MODES,
        default="plaintext",
        help="secure the client listener: ssl (mutual TLS) or sasl_ssl (SCRAM-SHA-512 and PLAIN "
        "over TLS), with a CA generated on the fly and ACLs (default: plaintext)",
    )
    start.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="write the CAPGROUP_* settings a client needs to connect (as user alice) to PATH, "
        "one NAME=value a line: `set -a; . PATH` points a member at the cluster",
    )
    start.set_defaults(handler=run_start)
    fetch = actions.add_parser("fetch", help="fetch the Kafka jars into the cache and exit")
    fetch.set_defaults(handler=run_fetch)


def run_fetch(_: argparse.Namespace) -> int:
    """Fetch the broker jars with Maven (a no-op when the cache is complete)."""
    configure_logging()
    try:
        print(ensure_jars())
    except KafkaLocalError as exc:
        print(f"capgroup: {exc}")
        return EXIT_KAFKA
    return 0


def wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM arrives."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """Write ``env`` as ``NAME=value`` lines, readable by the owner only (it holds a
    password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(render_env_file(env))


def run_start(args: argparse.Namespace) -> int:
    """Start the cluster, print its bootstrap address, wait for a stop signal, then stop it."""
    configure_logging()
    try:
        security: SecurityMode = getattr(args, "security", "plaintext")
        with LocalKafkaCluster(nodes=args.nodes, security=security) as cluster:
            print(f"bootstrap servers: {cluster.bootstrap_servers}", flush=True)
            env_file: Path | None = getattr(args, "env_file", None)
            if env_file is not None:
                write_env_file(env_file, cluster.client_env())
                print(f"client settings: {env_file}", flush=True)
            if security != "plaintext":
                store = cluster.security_store
                print(f"security: {store.listener}, CA file {store.ca_file}", flush=True)
            print("press Ctrl-C to stop", flush=True)
            wait_for_stop_signal()
    except KafkaLocalError as exc:
        print(f"capgroup: {exc}")
        return EXIT_KAFKA
    return 0
