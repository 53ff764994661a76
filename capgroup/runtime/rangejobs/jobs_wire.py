"""Range-job messages on Kafka: offers and assignments on the jobs topic, claims and outcomes on
the completions topic. Pure: bytes in, values out; decoding never raises.

The exchange for one job (``key`` = ``topic/partition/start-end``, the same on both topics)::

    scheduler --offer(attempt)-------------> jobs topic         (compacted: the latest per key)
    worker    --claim(attempt, worker)-----> completions topic  (a worker with a free slot)
    scheduler --assign(attempt, worker)----> jobs topic         (the first claim of the attempt)
    worker    --done | failed(attempt)-----> completions topic  (done: after flush returned)
    scheduler --tombstone------------------> jobs topic         (done and committed or covered)

Only the partition's scheduler decides who works a job (the first claim of an attempt wins), so
two workers never hold one attempt. A reoffered job (timed out, failed) gets the next attempt;
a late ``done`` of an earlier attempt still counts (every record of the range was flushed), a
late ``claim`` of one is ignored. Values are JSON objects with ``"v": 1``; a record that does
not decode (another version, garbage) is ignored by its reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from capgroup.types import TopicPartition

__all__ = [
    "WIRE_VERSION",
    "JobMessage",
    "JobState",
    "Outcome",
    "OutcomeMessage",
    "decode_job",
    "decode_outcome",
    "encode_job",
    "encode_outcome",
    "job_key",
]

WIRE_VERSION = 1


class JobState(StrEnum):
    """A jobs-topic record: offered to any worker, or assigned to one."""

    OFFER = "offer"
    ASSIGN = "assign"


class Outcome(StrEnum):
    """A completions-topic record: a worker claims a job, or reports it done or failed."""

    CLAIM = "claim"
    DONE = "done"
    FAILED = "failed"


def job_key(tp: TopicPartition, start: int, end: int) -> bytes:
    """The record key of job ``[start, end)`` of ``tp`` on both topics."""
    return f"{tp.topic}/{tp.partition}/{start}-{end}".encode()


@dataclass(frozen=True, slots=True)
class JobMessage:
    """An offer (``worker`` empty) or assignment of job ``[start, end)`` of ``tp``, attempt
    ``attempt``, by the scheduler ``scheduler`` under group generation ``generation``;
    ``records`` and ``size_bytes`` as cut; ``deadline_ms`` (wall clock) after which the offer
    is stale."""

    state: JobState
    tp: TopicPartition
    start: int
    end: int
    attempt: int
    scheduler: str
    generation: int
    records: int = 0
    size_bytes: int = 0
    deadline_ms: int = 0
    worker: str = ""


@dataclass(frozen=True, slots=True)
class OutcomeMessage:
    """A worker's claim or report about job ``[start, end)`` of ``tp``, attempt ``attempt``."""

    outcome: Outcome
    tp: TopicPartition
    start: int
    end: int
    attempt: int
    worker: str
    error: str = ""


def encode_job(message: JobMessage) -> bytes:
    """The jobs-topic value of ``message``."""
    return json.dumps(
        {
            "v": WIRE_VERSION,
            "state": message.state.value,
            "topic": message.tp.topic,
            "partition": message.tp.partition,
            "start": message.start,
            "end": message.end,
            "attempt": message.attempt,
            "scheduler": message.scheduler,
            "generation": message.generation,
            "records": message.records,
            "bytes": message.size_bytes,
            "deadline_ms": message.deadline_ms,
            "worker": message.worker,
        },
        separators=(",", ":"),
    ).encode()


def encode_outcome(message: OutcomeMessage) -> bytes:
    """The completions-topic value of ``message``."""
    return json.dumps(
        {
            "v": WIRE_VERSION,
            "outcome": message.outcome.value,
            "topic": message.tp.topic,
            "partition": message.tp.partition,
            "start": message.start,
            "end": message.end,
            "attempt": message.attempt,
            "worker": message.worker,
            "error": message.error[:512],
        },
        separators=(",", ":"),
    ).encode()


def _fields(value: bytes | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        fields = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(fields, dict) or fields.get("v") != WIRE_VERSION:
        return None
    return fields


def _int(fields: dict[str, Any], name: str, default: int | None = None) -> int:
    value = fields.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(name)
    return value


def _str(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name, "")
    if not isinstance(value, str):
        raise ValueError(name)
    return value


def decode_job(value: bytes | None) -> JobMessage | None:
    """The job message in ``value``; None for a tombstone or anything that does not decode."""
    fields = _fields(value)
    if fields is None:
        return None
    try:
        message = JobMessage(
            state=JobState(_str(fields, "state")),
            tp=TopicPartition(_str(fields, "topic"), _int(fields, "partition")),
            start=_int(fields, "start"),
            end=_int(fields, "end"),
            attempt=_int(fields, "attempt"),
            scheduler=_str(fields, "scheduler"),
            generation=_int(fields, "generation", 0),
            records=_int(fields, "records", 0),
            size_bytes=_int(fields, "bytes", 0),
            deadline_ms=_int(fields, "deadline_ms", 0),
            worker=_str(fields, "worker"),
        )
    except ValueError:
        return None
    return message if message.start < message.end and message.tp.topic else None


def decode_outcome(value: bytes | None) -> OutcomeMessage | None:
    """The outcome message in ``value``; None for anything that does not decode."""
    fields = _fields(value)
    if fields is None:
        return None
    try:
        message = OutcomeMessage(
            outcome=Outcome(_str(fields, "outcome")),
            tp=TopicPartition(_str(fields, "topic"), _int(fields, "partition")),
            start=_int(fields, "start"),
            end=_int(fields, "end"),
            attempt=_int(fields, "attempt"),
            worker=_str(fields, "worker"),
            error=_str(fields, "error"),
        )
    except ValueError:
        return None
    return message if message.start < message.end and message.tp.topic else None
