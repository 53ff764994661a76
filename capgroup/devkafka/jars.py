"""The Kafka broker jars from Maven Central, fetched once into a cache shared by checkouts.

``kafka-pom.xml`` (beside this module) names ``org.apache.kafka:kafka_2.13`` at the wanted
version; Maven's dependency plugin copies it and its runtime dependencies into the cache.
"""

from __future__ import annotations

import fcntl
import importlib.resources
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from capgroup.log import get_logger

__all__ = [
    "CACHE_ENV",
    "KAFKA_VERSION",
    "MARKER_NAME",
    "KafkaLocalError",
    "cache_root",
    "ensure_jars",
    "jars_complete",
    "require_tool",
]

#: Kafka version fetched by default; it must exist as ``org.apache.kafka:kafka_2.13`` on Maven.
KAFKA_VERSION = "4.1.1"
#: Environment variable naming the jar cache's base directory.
CACHE_ENV = "CAPGROUP_KAFKA_CACHE"
#: Written last into a jar directory, listing its jars; a directory without it is incomplete.
MARKER_NAME = ".complete"

_log = get_logger("devkafka")

_MAVEN_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.7.1:copy-dependencies"


class KafkaLocalError(RuntimeError):
    """The local Kafka could not be fetched, formatted, started or reached."""


# --- jars -----------------------------------------------------------------------------------


def cache_root() -> Path:
    """Base directory of the jar cache: ``$CAPGROUP_KAFKA_CACHE`` or ``~/.cache/capgroup``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "capgroup"


def jars_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a complete jar set: the marker and every jar it lists."""
    marker = directory / MARKER_NAME
    if not marker.is_file():
        return False
    names = [line for line in marker.read_text().splitlines() if line]
    return bool(names) and all((directory / name).is_file() for name in names)


def require_tool(name: str) -> str:
    """Return the path of executable ``name`` or raise :class:`KafkaLocalError` saying so."""
    found = shutil.which(name)
    if found is None:
        hint = {
            "java": "install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)",
            "mvn": "install Apache Maven (e.g. apt-get install maven)",
        }.get(name, "install it")
        raise KafkaLocalError(f"{name!r} is not on PATH; the local Kafka needs it: {hint}")
    return found


def ensure_jars(version: str = KAFKA_VERSION, cache: Path | None = None) -> Path:
    """Return a directory with the Kafka broker jars, fetching them with Maven if needed.

    Concurrent callers (several clones, several test sessions) serialise on a lock file; the
    jars are gathered in a scratch directory and renamed into place, marker written last.
    """
    root = cache if cache is not None else cache_root()
    target = root / f"kafka-{version}"
    if jars_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"kafka-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars_complete(target):
            return target
        mvn = require_tool("mvn")
        scratch = Path(tempfile.mkdtemp(prefix=f".kafka-{version}-", dir=root))
        started = time.monotonic()
        try:
            pom = importlib.resources.files("capgroup.devkafka").joinpath("kafka-pom.xml")
            with importlib.resources.as_file(pom) as pom_path:
                command = [
                    mvn,
                    "-q",
                    "-B",
                    _MAVEN_PLUGIN,
                    f"-DoutputDirectory={scratch}",
                    "-DincludeScope=runtime",
                    f"-Dkafka.version={version}",
                    "-f",
                    str(pom_path),
                ]
                _log.info("kafka_jars_fetching", version=version, directory=str(target))
                result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                output = (result.stdout + result.stderr)[-4000:]
                raise KafkaLocalError(
                    f"maven could not fetch Kafka {version} (exit {result.returncode}):\n{output}"
                )
            jars = sorted(p.name for p in scratch.glob("*.jar"))
            if not any(name.startswith("kafka_2.13-") for name in jars):
                raise KafkaLocalError(f"maven fetched no kafka_2.13 jar into {scratch}")
            (scratch / MARKER_NAME).write_text("\n".join(jars) + "\n")
            if target.exists():
                shutil.rmtree(target)
            scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        _log.info(
            "kafka_jars_fetched",
            version=version,
            jars=len(jars),
            seconds=round(time.monotonic() - started, 1),
        )
    return target
