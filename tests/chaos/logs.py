"""Files a chaos run leaves in its run directory, and loading them into a :class:`RunData`.

Layout of a run directory::

    run.json                 topic, partitions, limits, member configs (driver, at start)
    sink-<member>.jsonl      one row per flushed record (service, fsynced per flush)
    audit-<member>.jsonl     assignments, commits, discards, RSS samples (service)
    produced.jsonl           acknowledged records (producer)
    faults.jsonl             injected faults with timestamps (driver)
    incarnations.jsonl       member processes with start and end times (driver)
    committed.json           final committed offsets (driver, OffsetFetch after the run)
    <member>.<inc>.stderr    each member process's log
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import IO, Any

from tests.chaos.invariants import Limits, RunData
from tests.processes import read_jsonl


class JsonLines:
    """Append-only JSON-lines file; ``fsync=True`` makes every :meth:`write` durable, so a
    SIGKILL loses nothing a caller believed written."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._stream: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        # The service's RSS sampler thread writes the audit log too.
        self._lock = threading.Lock()

    def write(self, *rows: dict[str, Any]) -> None:
        """Append ``rows`` and (optionally) fsync once for all of them."""
        if not rows:
            return
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
        with self._lock:
            self._stream.write(text)
            self._stream.flush()
            if self._fsync:
                os.fsync(self._stream.fileno())

    def close(self) -> None:
        """Close the file."""
        self._stream.close()


def load_run(directory: Path) -> RunData:
    """Parse everything in ``directory`` into the invariants' input."""
    meta = json.loads((directory / "run.json").read_text())
    committed_file = directory / "committed.json"
    committed: dict[int, int | None] = {}
    end_t = 0.0
    if committed_file.exists():
        raw = json.loads(committed_file.read_text())
        committed = {int(p): o for p, o in raw["offsets"].items()}
        end_t = float(raw["t"])
    sinks: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    for path in sorted(directory.glob("sink-*.jsonl")):
        sinks.extend(read_jsonl(path))
    for path in sorted(directory.glob("audit-*.jsonl")):
        audits.extend(read_jsonl(path))
    return RunData(
        topic=meta["topic"],
        partitions=int(meta["partitions"]),
        limits=Limits(**meta["limits"]),
        sinks=sinks,
        audits=audits,
        produced=list(read_jsonl(directory / "produced.jsonl")),
        committed=committed,
        faults=list(read_jsonl(directory / "faults.jsonl")),
        incarnations=list(read_jsonl(directory / "incarnations.jsonl")),
        end_t=end_t or max((a["t"] for a in audits), default=0.0),
    )
