"""What the broker-backed benchmarks share: where the broker is, and running one measurement
in a child process of its own."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from capgroup.devkafka.cluster import LocalKafkaCluster


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """``KAFKA_BOOTSTRAP_SERVERS``, else a local single-node broker for the duration."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with LocalKafkaCluster(nodes=1) as cluster:
        yield cluster.bootstrap_servers


def run_child(cmd: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run ``cmd`` (a benchmark's worker mode, logging at warning) and return the JSON object
    its last line of output prints."""
    env = {**os.environ, "CAPGROUP_LOG_LEVEL": "warning"}
    out = subprocess.run(list(cmd), stdout=subprocess.PIPE, env=env, check=True, timeout=timeout)
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))
