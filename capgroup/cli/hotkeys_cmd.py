"""``capgroup hotkeys TOPIC [--duration S | --records N] [--json]``: hot keys measured out of
band.

Reads the recent end of TOPIC without a group (nothing joined, nothing committed), measures
each partition's rate and the heaviest keys with a frequent-items sketch (bounded memory
whatever the number of keys), and reports the partition skew (max/mean rate), the hot keys with
their share of their partition and of the topic, and the shard factor k that brings each
key's shards under a target per-partition rate. Connection settings are the members'
``CAPGROUP_*`` settings.

Exit codes: 2 for bad arguments, bad settings or a topic that does not exist, 4 when Kafka
cannot be reached, 5 when authentication, authorization or TLS fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from capgroup.cli.startup_errors import add_timeout_argument, report_failure
from capgroup.log import configure_logging
from capgroup.operations.hotkeys import (
    DEFAULT_LG_MAX_MAP_SIZE,
    HotKey,
    HotkeysReport,
    KeySketch,
    TopicNotFoundError,
    analyse,
    read_topic,
)
from capgroup.settings import load_settings
from capgroup.sharding import ShardMap

__all__ = [
    "DEFAULT_DURATION_S",
    "ORDER_WARNING",
    "display_key",
    "hotkeys_json",
    "register",
    "render",
    "run",
]

#: The window read when neither ``--duration`` nor ``--records`` is given.
DEFAULT_DURATION_S = 60.0
#: Printed with every shard-factor recommendation.
ORDER_WARNING = (
    "splitting a key into key.0 … key.k-1 gives up that key's total order: "
    "shard only keys whose records need no order"
)


def register(sub: Any) -> None:
    """Add the ``hotkeys`` sub-command."""
    parser = sub.add_parser(
        "hotkeys",
        help="a topic's partition skew and hot keys, measured out of band, with shard factors",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("topic", metavar="TOPIC")
    window = parser.add_mutually_exclusive_group()
    window.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help=f"read the records of the last S seconds (default {DEFAULT_DURATION_S:g})",
    )
    window.add_argument(
        "--records", type=int, metavar="N", help="read the last N records (N / partitions each)"
    )
    parser.add_argument("--top", type=int, default=10, metavar="N", help="hot keys shown (10)")
    parser.add_argument(
        "--target-rate",
        type=float,
        metavar="R",
        help="records/s each shard should stay under (default: the mean partition rate)",
    )
    parser.add_argument(
        "--lg-max-map-size",
        type=int,
        default=DEFAULT_LG_MAX_MAP_SIZE,
        metavar="L",
        help=f"sketch size: 2^L map entries, error 3.5/2^L (default {DEFAULT_LG_MAX_MAP_SIZE})",
    )
    parser.add_argument(
        "--write-shard-map",
        metavar="FILE",
        help="write the keys that need k > 1 as a shard map (capgroup.sharding.ShardMap.load)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_timeout_argument(parser)
    parser.set_defaults(handler=run)


def _usage(message: str) -> int:
    print(f"capgroup hotkeys: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Measure and print; returns the exit code."""
    configure_logging("error")
    if args.records is not None and args.records <= 0:
        return _usage("--records needs a positive number of records")
    if args.duration is not None and args.duration <= 0:
        return _usage("--duration needs a positive number of seconds")
    if args.top <= 0:
        return _usage("--top needs a positive number")
    if args.target_rate is not None and args.target_rate <= 0:
        return _usage("--target-rate needs a positive rate (records/s)")
    if not 3 <= args.lg_max_map_size <= 26:
        return _usage("--lg-max-map-size must be in [3, 26]")
    seconds = None
    if args.records is None:
        seconds = args.duration if args.duration is not None else DEFAULT_DURATION_S
    timeout_ms = max(1000, int(args.timeout * 1000))
    settings = load_settings(bootstrap_timeout_ms=timeout_ms)
    sketch = KeySketch(args.lg_max_map_size)

    async def measure() -> HotkeysReport:
        windows, complete = await read_topic(
            settings, args.topic, sketch, records=args.records, seconds=seconds
        )
        return analyse(
            args.topic,
            windows,
            sketch,
            top=args.top,
            target_rate=args.target_rate,
            complete=complete,
        )

    try:
        report = anyio.run(measure)
    except TopicNotFoundError as exc:
        return _usage(str(exc))
    except Exception as exc:
        return report_failure("hotkeys", exc, settings)
    if args.write_shard_map:
        shard_map = ShardMap({h.key: h.shard_factor for h in report.hot_keys if h.shard_factor > 1})
        with open(args.write_shard_map, "w") as out:
            json.dump(shard_map.to_json(), out, indent=2)
            out.write("\n")
    print(json.dumps(hotkeys_json(report), indent=2) if args.json else render(report))
    return 0


def display_key(key: bytes) -> str:
    """A key as text: UTF-8 where it is, ``\\xNN`` escapes elsewhere."""
    return key.decode("utf-8", "backslashreplace")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return [line.rstrip() for line in lines]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(report: HotkeysReport) -> str:
    """The report as text: a header, the partitions, the hot keys and the sketch's error."""
    lines = [
        f"topic {report.topic}: {report.records:,} records read from "
        f"{len(report.partitions)} partitions, {report.total_rate:,.1f} records/s; "
        f"skew {report.skew:.2f} (max {report.max_rate:,.1f} / mean {report.mean_rate:,.1f})"
        + ("" if report.complete else "; INCOMPLETE: reading stalled before the end offsets")
    ]
    rows: list[tuple[str, ...]] = [("partition", "records", "null keys", "window s", "rate/s")]
    for w in report.partitions:
        rows.append(
            (
                str(w.partition),
                f"{w.records:,}",
                f"{w.null_key_records:,}",
                "-" if w.seconds is None else f"{w.seconds:,.1f}",
                f"{w.rate:,.1f}",
            )
        )
    lines.extend(_table(rows))
    lines.append(f"hot keys (target {report.target_rate:,.1f} records/s per partition):")
    if report.hot_keys:
        krows: list[tuple[str, ...]] = [
            ("key", "partition", "records", "of partition", "of topic", "rate/s", "shards k")
        ]
        krows.extend(_key_row(h) for h in report.hot_keys)
        lines.extend(_table(krows))
    else:
        lines.append("(no key is heavier than the sketch's error)")
    lines.append(
        f"sketch: 2^{report.lg_max_map_size} map, {report.tracked_keys:,} keys tracked; every "
        f"count within ±{report.error_records:,} records (ε {report.epsilon:.5f} × records)"
    )
    if any(h.shard_factor > 1 for h in report.hot_keys):
        lines.append(f"warning: {ORDER_WARNING}")
    return "\n".join(lines)


def _key_row(h: HotKey) -> tuple[str, ...]:
    return (
        display_key(h.key),
        str(h.partition),
        f"{h.records:,}",
        _pct(h.share_of_partition),
        _pct(h.share_of_topic),
        f"{h.rate:,.1f}",
        str(h.shard_factor),
    )


def hotkeys_json(report: HotkeysReport) -> dict[str, Any]:
    """The report as a JSON-ready document (stable shape; see the README)."""
    return {
        "topic": report.topic,
        "complete": report.complete,
        "records": report.records,
        "rate": report.total_rate,
        "mean_partition_rate": report.mean_rate,
        "max_partition_rate": report.max_rate,
        "skew": report.skew,
        "target_rate": report.target_rate,
        "partitions": [
            {
                "partition": w.partition,
                "records": w.records,
                "null_key_records": w.null_key_records,
                "window_seconds": w.seconds,
                "rate": w.rate,
            }
            for w in report.partitions
        ],
        "hot_keys": [
            {
                "key": display_key(h.key),
                "key_hex": h.key.hex(),
                "partition": h.partition,
                "records": h.records,
                "records_lower_bound": h.lower_bound,
                "records_upper_bound": h.upper_bound,
                "share_of_partition": h.share_of_partition,
                "share_of_topic": h.share_of_topic,
                "rate": h.rate,
                "shard_factor": h.shard_factor,
            }
            for h in report.hot_keys
        ],
        "sketch": {
            "kind": "datasketches.frequent_items_sketch",
            "lg_max_map_size": report.lg_max_map_size,
            "epsilon": report.epsilon,
            "error_records": report.error_records,
            "tracked_keys": report.tracked_keys,
        },
        "order_warning": ORDER_WARNING,
    }
