"""``capgroup demo``: placeholder demo that brings up the local Kafka and a demo topic."""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from capgroup.log import configure_logging
from capgroup.operations.kafka_local import KafkaLocalError, LocalKafkaCluster, create_topic

#: Topic the demo creates.
DEMO_TOPIC = "capgroup-demo"
#: Partitions of the demo topic.
DEMO_PARTITIONS = 12


def register(sub: Any) -> None:
    """Add the ``demo`` sub-command."""
    parser = sub.add_parser(
        "demo", help="start a local Kafka, create a 12-partition demo topic and exit"
    )
    parser.set_defaults(handler=run)


def run(_: argparse.Namespace) -> int:
    """Start the local Kafka, create the demo topic, print the bootstrap address, stop."""
    configure_logging()
    try:
        with LocalKafkaCluster(nodes=1) as cluster:
            anyio.run(create_topic, cluster.bootstrap_servers, DEMO_TOPIC, DEMO_PARTITIONS)
            print(f"bootstrap servers: {cluster.bootstrap_servers}", flush=True)
            print(f"created topic {DEMO_TOPIC} with {DEMO_PARTITIONS} partitions", flush=True)
    except KafkaLocalError as exc:
        print(f"capgroup: {exc}")
        return 3
    print("demo finished; the local Kafka was stopped", flush=True)
    return 0
