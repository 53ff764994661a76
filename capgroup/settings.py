"""Configuration for capgroup members, read from ``CAPGROUP_*`` environment variables or ``.env``.

Every field has a sane default except the ones a deployment must choose (group id and topics,
which are checked where they are needed). Invalid values fail at start-up with a
:class:`SettingsError` that names the environment variable and the accepted range.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "ENV_PREFIX",
    "MAX_SESSION_TIMEOUT_MS",
    "MIN_SESSION_TIMEOUT_MS",
    "RECORD_OVERHEAD_BYTES",
    "CapgroupSettings",
    "SettingsError",
    "batch_footprint_bytes",
    "check_topic_name",
    "fetch_max_records",
    "fetch_reserve_bytes",
    "load_settings",
    "partition_cost_bytes",
    "security_problems",
    "unknown_variables",
]

ENV_PREFIX = "CAPGROUP_"

#: Lowest session timeout we accept. Brokers default group.min.session.timeout.ms to 6000 and
#: answer INVALID_SESSION_TIMEOUT below their own minimum; test brokers are configured lower.
MIN_SESSION_TIMEOUT_MS = 1_000
MAX_SESSION_TIMEOUT_MS = 1_800_000

#: A DNS host name: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


#: Memory one buffered record costs beyond its payload: aiokafka's ConsumerRecord object, its
#: offset/timestamp ints and the buffer's list slots. Measured with tracemalloc on CPython 3.11
#: at about 300 bytes for a 200-byte record; a test keeps this bound honest.
RECORD_OVERHEAD_BYTES = 384


def batch_footprint_bytes(batch_max_bytes: int, batch_max_records: int) -> int:
    """Worst-case memory of one full batch: ``batch_max_bytes`` of payload, plus the overhead
    of ``batch_max_records`` record objects (whichever limit cuts the batch first)."""
    return batch_max_bytes + batch_max_records * RECORD_OVERHEAD_BYTES


def fetch_max_records(max_partition_fetch_bytes: int) -> int:
    """Records one fetch hands over at most: as many as ``max_partition_fetch_bytes`` pays the
    per-record overhead of, so that small records cannot make a fetch cost more than its
    reserve (:func:`fetch_reserve_bytes`). The rest wait in the client's fetch buffer."""
    return max(1, max_partition_fetch_bytes // RECORD_OVERHEAD_BYTES)


def fetch_reserve_bytes(max_partition_fetch_bytes: int) -> int:
    """What one fetch can add to a partition's buffer: its payload (up to
    ``max_partition_fetch_bytes``) plus the overhead of at most :func:`fetch_max_records`
    records (at most as much again). A relay-only partition costs this much."""
    return max_partition_fetch_bytes + fetch_max_records(max_partition_fetch_bytes) * (
        RECORD_OVERHEAD_BYTES
    )


def partition_cost_bytes(
    batch_max_bytes: int, batch_max_records: int, max_partition_fetch_bytes: int
) -> int:
    """Worst-case memory one partition costs a member: a full batch (the partition stops
    fetching once it holds one) plus one more fetch on top (:func:`fetch_reserve_bytes`)."""
    return batch_footprint_bytes(batch_max_bytes, batch_max_records) + fetch_reserve_bytes(
        max_partition_fetch_bytes
    )


class SettingsError(ValueError):
    """Raised when settings are invalid; the message names each offending setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid capgroup settings:\n" + "\n".join(f"  - {p}" for p in problems))


#: Kafka's rule for topic names (``org.apache.kafka.common.internals.Topic``).
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def check_topic_name(name: str) -> str:
    """``name`` if Kafka accepts it as a topic name, else ``ValueError`` saying why."""
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"{name!r} is not a valid Kafka topic name: 1 to 249 characters of a-z, A-Z, 0-9, "
            "'.', '_' and '-', and not '.' or '..'"
        )
    return name


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class CapgroupSettings(BaseSettings):
    """Settings of one capgroup member.

    Environment variables use the ``CAPGROUP_`` prefix, e.g. ``CAPGROUP_GROUP_ID``;
    list values (``CAPGROUP_TOPICS``) are comma-separated. Use :func:`load_settings` to get
    a :class:`SettingsError` with readable messages instead of pydantic's ``ValidationError``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- connection and group basics -----------------------------------------------------
    bootstrap_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:9092"],
        description="Kafka bootstrap servers, comma-separated host:port.",
    )
    group_id: str = Field(default="", description="Consumer group id.")
    group_instance_id: str | None = Field(
        default=None,
        description="Static membership id (KIP-345); in Kubernetes, the StatefulSet pod name.",
    )
    topics: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Topics to consume, comma-separated."
    )
    client_id: str = Field(default="capgroup", description="Kafka client id.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a partition with no committed offset starts. earliest loses nothing.",
    )

    session_timeout_ms: int = Field(
        default=10_000,
        ge=MIN_SESSION_TIMEOUT_MS,
        le=MAX_SESSION_TIMEOUT_MS,
        description="Group session timeout: a member silent this long is removed.",
    )
    rebalance_timeout_ms: int = Field(
        default=30_000,
        ge=1_000,
        le=MAX_SESSION_TIMEOUT_MS,
        description="How long the coordinator waits for members to rejoin during a rebalance.",
    )
    heartbeat_interval_ms: int = Field(
        default=3_000, ge=100, le=600_000, description="Heartbeat period."
    )
    request_timeout_ms: int | None = Field(
        default=None,
        ge=1_000,
        le=3_600_000,
        description="Client request timeout; defaults to rebalance timeout + 10 s (JoinGroup is "
        "held by the broker for up to the rebalance timeout).",
    )
    bootstrap_timeout_ms: int = Field(
        default=60_000,
        ge=1_000,
        le=3_600_000,
        description="At start-up, how long to keep retrying bootstrap servers that cannot be "
        "reached (one log line per attempt) before giving up; capgroup run then exits 4.",
    )
    leave_group_on_shutdown: bool | None = Field(
        default=None,
        description="Leave the group on shutdown. Defaults to true for dynamic members and false "
        "for static members (a restart within the session keeps the assignment).",
    )

    # --- security: TLS and SASL (issue 11) -----------------------------------------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How clients reach the brokers: PLAINTEXT, SSL (TLS, mTLS with a client "
        "certificate), SASL_PLAINTEXT or SASL_SSL (SASL over TLS).",
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA certificates that sign the broker certificates; the "
        "system CAs when unset. With SSL or SASL_SSL only.",
    )
    ssl_certfile: Path | None = Field(
        default=None,
        description="PEM file of this client's certificate chain, for mutual TLS (mTLS).",
    )
    ssl_keyfile: Path | None = Field(
        default=None,
        description="PEM file of the private key of ssl_certfile (unless ssl_certfile holds it).",
    )
    ssl_key_password: SecretStr | None = Field(
        default=None,
        description="Password of an encrypted ssl_keyfile; never printed.",
    )
    ssl_key_password_file: Path | None = Field(
        default=None,
        description="File holding ssl_key_password (a mounted Kubernetes Secret); read at "
        "connect time.",
    )
    ssl_check_hostname: bool = Field(
        default=True,
        description="Check that the broker certificate names the host connected to.",
    )
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None
    ) = Field(
        default=None,
        description="SASL mechanism, required with SASL_PLAINTEXT and SASL_SSL: PLAIN, "
        "SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, or GSSAPI (needs aiokafka[gssapi]).",
    )
    sasl_username: str | None = Field(
        default=None, description="SASL user name, for PLAIN and SCRAM."
    )
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password, for PLAIN and SCRAM; never printed."
    )
    sasl_password_file: Path | None = Field(
        default=None,
        description="File holding sasl_password (a mounted Kubernetes Secret); read at connect "
        "time.",
    )
    sasl_oauth_token_provider: str | None = Field(
        default=None,
        description="OAUTHBEARER token provider as module:callable; the callable (sync or async, "
        "no arguments) returns a token or (token, expiry in ms since the epoch).",
    )
    msk_region: str | None = Field(
        default=None,
        description="AWS region of an Amazon MSK cluster: OAUTHBEARER tokens from MSK IAM "
        "(pip install 'capgroup[msk]'); credentials from the default AWS chain.",
    )
    msk_role_arn: str | None = Field(
        default=None, description="IAM role to assume for MSK IAM tokens (optional)."
    )
    msk_profile: str | None = Field(
        default=None, description="AWS profile for MSK IAM tokens (optional)."
    )

    # --- capacity budget ----------------------------------------------------------------
    max_partitions: int = Field(
        default=64, ge=0, le=1_000_000, description="Hard cap on partitions this member owns."
    )
    memory_budget_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Hard cap on bytes partition buffers may hold; derived from the container "
        "memory limit times memory_budget_fraction when unset.",
    )
    memory_budget_fraction: float = Field(
        default=0.6,
        gt=0.0,
        le=1.0,
        description="Share of the container memory limit given to partition buffers.",
    )
    weight: float = Field(
        default=1.0, gt=0.0, le=1_000_000.0, description="Relative processing capacity."
    )
    rack: str | None = Field(default=None, description="Rack (availability zone) of the member.")
    draining: bool = Field(
        default=False, description="Take nothing new and give everything back (scale-down)."
    )
    autoscale_headroom_members: int = Field(
        default=1,
        ge=0,
        le=10_000,
        description="Spare members capgroup_group_replicas_wanted asks for: the group should "
        "place every partition even after losing this many of its largest members (read by "
        "the leader).",
    )

    # --- batching -----------------------------------------------------------------------
    batch_max_records: int = Field(
        default=10_000,
        ge=1,
        le=100_000_000,
        description="Flush a partition's buffer at this many records.",
    )
    batch_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        le=1 << 40,
        description="Flush a partition's buffer at this many bytes (key + value + headers).",
    )
    batch_max_age_ms: int = Field(
        default=30_000, ge=1, le=86_400_000, description="Flush a partition's buffer at this age."
    )
    max_partition_fetch_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=1 << 31,
        description="Fetch buffer per partition; part of the advertised per-partition cost.",
    )

    # --- runtime: flush retries and failures (issue 5) ----------------------------------
    flush_retry_initial_ms: int = Field(
        default=100, ge=1, le=600_000, description="Wait before the first retry of a failed flush."
    )
    flush_retry_max_ms: int = Field(
        default=30_000,
        ge=1,
        le=3_600_000,
        description="Longest wait between flush retries (the exponential backoff's ceiling).",
    )
    flush_retry_multiplier: float = Field(
        default=2.0, ge=1.0, le=100.0, description="Backoff growth factor between retries."
    )
    flush_retry_jitter: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Fraction by which each retry wait is shortened at random.",
    )
    flush_retry_max_attempts: int | None = Field(
        default=5,
        ge=1,
        le=1_000_000,
        description="Flush calls per batch including the first; unset for no limit.",
    )
    flush_retry_max_elapsed_ms: int | None = Field(
        default=None,
        ge=0,
        le=86_400_000,
        description="No retry starts later than this after the first call; unset for no limit.",
    )
    flush_failure_policy: Literal["dead_letter", "stop_partition"] = Field(
        default="stop_partition",
        description="After the last retry: produce the batch to dead_letter_topic and commit "
        "past it, or stop the partition and report the member unhealthy.",
    )
    dead_letter_topic: str | None = Field(
        default=None,
        min_length=1,
        description="Topic failed batches and undecodable records go to; required when "
        "flush_failure_policy or deserialize_failure_policy is dead_letter.",
    )
    deserialize_failure_policy: Literal["stop_partition", "dead_letter", "skip"] = Field(
        default="stop_partition",
        description="When deserialize raises on a record: stop its partition at that record "
        "(nothing committed past it), produce the raw record to dead_letter_topic and commit "
        "past it, or skip it (counted and logged).",
    )

    # --- runtime: revoke and shutdown (issue 5) ------------------------------------------
    revoke_safety_margin_ms: int = Field(
        default=5_000,
        ge=0,
        le=MAX_SESSION_TIMEOUT_MS,
        description="Subtracted from rebalance_timeout_ms to get the revoke-flush deadline; "
        "leaves room for the commit and the rejoin after the flush.",
    )
    revoke_flush_safety_factor: float = Field(
        default=2.0,
        ge=1.0,
        le=100.0,
        description="Default revoke policy flushes when estimated flush time times this fits "
        "before the deadline.",
    )
    flush_throughput_seed_bytes_per_s: float = Field(
        default=1024.0 * 1024.0,
        gt=0.0,
        le=1e12,
        description="Flush throughput assumed before any flush was measured (keep it low).",
    )
    shutdown_timeout_ms: int = Field(
        default=25_000,
        ge=0,
        le=3_600_000,
        description="On SIGTERM, time to flush and commit every buffer; keep it below the "
        "Kubernetes termination grace period (30 s by default).",
    )

    # --- runtime: memory limit and RSS watchdog (issue 5) --------------------------------
    container_memory_limit_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Container memory limit, e.g. set from the Kubernetes downward API "
        "(resourceFieldRef limits.memory); the tighter of it and the cgroup limit is used.",
    )
    rss_soft_limit_fraction: float = Field(
        default=0.85,
        gt=0.0,
        le=1.0,
        description="RSS above this share of the memory limit advertises reduced capacity.",
    )
    rss_hard_limit_fraction: float = Field(
        default=0.95,
        gt=0.0,
        le=1.0,
        description="RSS above this share of the memory limit flushes and stops taking records.",
    )
    rss_hysteresis_fraction: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="RSS must fall this far below a limit before its pressure level clears.",
    )
    rss_sample_interval_ms: int = Field(
        default=1_000, ge=10, le=600_000, description="How often the RSS watchdog samples."
    )

    # --- runtime: flushing and ingress rates (issue 5) -----------------------------------
    flush_concurrency: int = Field(
        default=4,
        ge=1,
        le=10_000,
        description="Partitions flushing at once (each partition flushes one batch at a time).",
    )
    ingress_rate_interval_ms: int = Field(
        default=5_000,
        ge=100,
        le=3_600_000,
        description="How often partition high watermarks are sampled for the ingress rates "
        "advertised to the assignor.",
    )
    lag_sample_interval_ms: int = Field(
        default=10_000,
        ge=100,
        le=3_600_000,
        description="How often the lag and retention margin of owned partitions (and, on the "
        "leader, of unassigned ones) are sampled for the metrics.",
    )

    # --- runtime: relaying records (issue 13; opt-in) -----------------------------------
    relay_enabled: bool = Field(
        default=False,
        description="Relay records of lagging and relay-only partitions, unprocessed, to "
        "healthy partitions of other members. Breaks per-key order and exactly-once: "
        "opt in only where neither matters.",
    )
    relay_lag_records: int | None = Field(
        default=10_000,
        ge=1,
        description="With relay_enabled: an owned partition whose lag passes this many records "
        "while still growing relays its oldest records; also the most lag a target partition "
        "may have to receive relayed records. None: no record threshold.",
    )
    relay_lag_seconds: float | None = Field(
        default=None,
        gt=0,
        description="With relay_enabled: an owned partition whose oldest unconsumed record is "
        "older than this while its lag grows relays its oldest records. None: off.",
    )
    relay_max_hops: int = Field(
        default=3,
        ge=1,
        le=100,
        description="A record relayed this many times (capgroup.relay.hops header) is "
        "processed where it is, never relayed again.",
    )
    relay_topic: str | None = Field(
        default=None,
        min_length=1,
        description="Topic relayed records go to (it must be one the group consumes); None: "
        "the record's own topic.",
    )

    # --- runtime: range jobs (issue 14; opt-in per topic) -------------------------------
    range_jobs_enabled: bool = Field(
        default=False,
        description="Share the backlog of lagging partitions of range_jobs_topics across the "
        "group as offset-range jobs that any member with spare capacity processes. Gives up "
        "per-partition order for those topics (jobs of one partition are flushed in parallel, "
        "failed ones again elsewhere): opt in only where no order is needed.",
    )
    range_jobs_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="With range_jobs_enabled: the topics (among topics) whose partitions may "
        "be cut into range jobs, comma-separated; empty: every topic of topics.",
    )
    range_jobs_lag_records: int = Field(
        default=100_000,
        ge=1,
        le=1 << 62,
        description="With range_jobs_enabled: a partition whose lag passes this many records is "
        "cut into range jobs by its owner.",
    )
    range_jobs_max_records: int = Field(
        default=1_000,
        ge=1,
        le=100_000_000,
        description="Most records in one range job.",
    )
    range_jobs_max_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        le=1 << 40,
        description="Most bytes (key + value + headers) in one range job; a job in progress "
        "costs this much (plus per-record overhead) in its worker's memory budget.",
    )
    range_jobs_max_in_flight: int = Field(
        default=8,
        ge=1,
        le=10_000,
        description="Range jobs of one partition offered to the group at once.",
    )
    range_jobs_worker_slots: int = Field(
        default=1,
        ge=0,
        le=10_000,
        description="Range jobs this member takes at once (0: it schedules its own partitions' "
        "jobs but processes none); each slot is reserved in the memory budget.",
    )
    range_jobs_timeout_ms: int = Field(
        default=60_000,
        ge=100,
        le=86_400_000,
        description="A range job not reported done this long after it was offered (worker "
        "killed or frozen) is offered again.",
    )
    range_jobs_metadata_max_bytes: int = Field(
        default=4096,
        ge=64,
        le=1 << 20,
        description="The brokers' offset.metadata.max.bytes: finished jobs beyond the committed "
        "offset are recorded in the commit metadata, kept under 75 % of this.",
    )
    range_jobs_topic: str | None = Field(
        default=None,
        min_length=1,
        description="Compacted topic range jobs are offered on, created on demand; None: "
        "<group_id>.capgroup-jobs.",
    )
    range_jobs_completions_topic: str | None = Field(
        default=None,
        min_length=1,
        description="Topic workers report finished range jobs on, created on demand; None: "
        "<group_id>.capgroup-completions.",
    )

    # --- operations ---------------------------------------------------------------------
    http_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the operations HTTP server (/metrics, /healthz, /readyz); 0 "
        "disables it.",
    )
    http_host: str = Field(
        default="127.0.0.1",
        description="Address the operations HTTP server listens on. The default keeps it off "
        "the network; in a container set 0.0.0.0 so probes and Prometheus reach it (the Helm "
        "chart does).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="json when not on a TTY, console on a TTY, unless forced."
    )

    @field_validator("bootstrap_servers", "topics", "range_jobs_topics", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("topics", "range_jobs_topics")
    @classmethod
    def _topic_names(cls, value: list[str]) -> list[str]:
        for topic in value:
            check_topic_name(topic)
        return value

    @field_validator(
        "dead_letter_topic", "relay_topic", "range_jobs_topic", "range_jobs_completions_topic"
    )
    @classmethod
    def _dead_letter_topic_name(cls, value: str | None) -> str | None:
        if value is not None:
            check_topic_name(value)
        return value

    @field_validator("group_id")
    @classmethod
    def _group_id_not_blank(cls, value: str) -> str:
        # Empty means "not set" (checked where a group is needed); only blanks is a mistake.
        if value and not value.strip():
            raise ValueError("a group id must not be only whitespace")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one host:port is required")
        for server in value:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port with a port in 1..65535")
        return value

    @field_validator("http_host")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        value = value.strip()
        try:
            ipaddress.ip_address(value)
        except ValueError:
            # Not an IP literal: accept a host name (e.g. localhost), resolved when binding.
            if not _HOST_NAME.fullmatch(value):
                raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
        return value

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> Self:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "heartbeat_interval_ms must be at most a third of session_timeout_ms "
                f"(got {self.heartbeat_interval_ms} and {self.session_timeout_ms})"
            )
        if (
            self.request_timeout_ms is not None
            and self.request_timeout_ms <= self.rebalance_timeout_ms
        ):
            raise ValueError(
                "request_timeout_ms must exceed rebalance_timeout_ms, because the broker holds "
                f"JoinGroup for up to the rebalance timeout (got {self.request_timeout_ms} and "
                f"{self.rebalance_timeout_ms})"
            )
        return self

    @model_validator(mode="after")
    def _runtime_consistent(self) -> Self:
        problems = []
        if self.flush_failure_policy == "dead_letter" and not self.dead_letter_topic:
            problems.append(
                f"dead_letter_topic ({ENV_PREFIX}DEAD_LETTER_TOPIC) is required when "
                "flush_failure_policy is dead_letter"
            )
        if self.deserialize_failure_policy == "dead_letter" and not self.dead_letter_topic:
            problems.append(
                f"dead_letter_topic ({ENV_PREFIX}DEAD_LETTER_TOPIC) is required when "
                f"deserialize_failure_policy ({ENV_PREFIX}DESERIALIZE_FAILURE_POLICY) is "
                "dead_letter"
            )
        if self.flush_retry_initial_ms > self.flush_retry_max_ms:
            problems.append(
                "flush_retry_initial_ms must be at most flush_retry_max_ms "
                f"(got {self.flush_retry_initial_ms} and {self.flush_retry_max_ms})"
            )
        if self.revoke_safety_margin_ms >= self.rebalance_timeout_ms:
            problems.append(
                "revoke_safety_margin_ms must be below rebalance_timeout_ms, or no revoke flush "
                f"could ever run (got {self.revoke_safety_margin_ms} and "
                f"{self.rebalance_timeout_ms})"
            )
        problems += _range_jobs_problems(self)
        if self.rss_soft_limit_fraction >= self.rss_hard_limit_fraction:
            problems.append(
                "rss_soft_limit_fraction must be below rss_hard_limit_fraction "
                f"(got {self.rss_soft_limit_fraction} and {self.rss_hard_limit_fraction})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator(
        "security_protocol",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_key_password",
        "ssl_key_password_file",
        "sasl_mechanism",
        "sasl_username",
        "sasl_password",
        "sasl_password_file",
        "sasl_oauth_token_provider",
        "msk_region",
        "msk_role_arn",
        "msk_profile",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        # An empty variable (a Helm value left blank) means unset; names are case-insensitive.
        if isinstance(value, str):
            if not value.strip():
                return "PLAINTEXT" if info.field_name == "security_protocol" else None
            if info.field_name in {"security_protocol", "sasl_mechanism"}:
                return value.strip().upper().replace("_", "-").replace("SASL-", "SASL_")
        return value

    @model_validator(mode="after")
    def _security_consistent(self) -> Self:
        problems = security_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def sasl_password_value(self) -> str | None:
        """The SASL password: from sasl_password_file (read now, so a rotated Secret is picked
        up by the next connection) or sasl_password. Never log the result."""
        return _secret_value(self.sasl_password, self.sasl_password_file)

    def ssl_key_password_value(self) -> str | None:
        """The private key's password, from ssl_key_password_file or ssl_key_password."""
        return _secret_value(self.ssl_key_password, self.ssl_key_password_file)

    @property
    def effective_request_timeout_ms(self) -> int:
        """Request timeout actually used: explicit, or rebalance timeout + 10 s."""
        if self.request_timeout_ms is not None:
            return self.request_timeout_ms
        return self.rebalance_timeout_ms + 10_000

    @property
    def effective_leave_group_on_shutdown(self) -> bool:
        """Whether shutdown sends LeaveGroup: explicit, else only for dynamic members."""
        if self.leave_group_on_shutdown is not None:
            return self.leave_group_on_shutdown
        return self.group_instance_id is None

    @property
    def effective_range_jobs_topics(self) -> frozenset[str]:
        """Topics whose partitions may be cut into range jobs (empty when disabled)."""
        if not self.range_jobs_enabled:
            return frozenset()
        return frozenset(self.range_jobs_topics or self.topics)

    @property
    def effective_range_jobs_topic(self) -> str:
        """The jobs topic: ``range_jobs_topic``, else ``<group_id>.capgroup-jobs``."""
        return self.range_jobs_topic or f"{self.group_id}.capgroup-jobs"

    @property
    def effective_range_jobs_completions_topic(self) -> str:
        """The completions topic: explicit, else ``<group_id>.capgroup-completions``."""
        return self.range_jobs_completions_topic or f"{self.group_id}.capgroup-completions"

    @property
    def batch_footprint_bytes(self) -> int:
        """Worst-case memory of one full batch: payload cap plus per-record overhead."""
        return batch_footprint_bytes(self.batch_max_bytes, self.batch_max_records)

    @property
    def partition_cost_bytes(self) -> int:
        """Worst-case bytes one partition costs this member: a full batch in memory (payload and
        per-record overhead) plus one fetch on top (:attr:`fetch_reserve_bytes`). This is what
        the member advertises."""
        return partition_cost_bytes(
            self.batch_max_bytes, self.batch_max_records, self.max_partition_fetch_bytes
        )

    @property
    def fetch_reserve_bytes(self) -> int:
        """Bytes one fetch can add to a partition's buffer, payload and per-record overhead;
        what a relay-only partition costs."""
        return fetch_reserve_bytes(self.max_partition_fetch_bytes)

    @property
    def fetch_max_records(self) -> int:
        """Records one fetch hands over at most (the rest wait in the client's fetch buffer)."""
        return fetch_max_records(self.max_partition_fetch_bytes)


def _range_jobs_problems(s: CapgroupSettings) -> list[str]:
    """What is inconsistent in the range-job settings, each naming its variables."""
    problems: list[str] = []
    if s.range_jobs_topics and not s.range_jobs_enabled:
        problems.append(
            f"{_var('range_jobs_topics')} is set but {_var('range_jobs_enabled')} is false; "
            "range jobs give up per-partition order, so they are enabled explicitly"
        )
    stray = sorted(set(s.range_jobs_topics) - set(s.topics)) if s.topics else []
    if stray:
        problems.append(
            f"{_var('range_jobs_topics')}: {', '.join(stray)} not among {ENV_PREFIX}TOPICS (topics)"
        )
    if s.range_jobs_enabled:
        jobs, done = s.effective_range_jobs_topic, s.effective_range_jobs_completions_topic
        if jobs == done:
            problems.append(
                f"{_var('range_jobs_topic')} and {_var('range_jobs_completions_topic')} must "
                f"differ (both are {jobs!r})"
            )
        for name, topic in (
            ("range_jobs_topic", jobs),
            ("range_jobs_completions_topic", done),
        ):
            if topic in s.topics:
                problems.append(f"{_var(name)}: {topic!r} is one of the consumed topics")
            elif s.group_id:
                try:
                    check_topic_name(topic)
                except ValueError as exc:
                    problems.append(f"{_var(name)}: {exc} (derived from the group id)")
    return problems


#: module:callable, e.g. ``myservice.auth:fetch_token``.
_MODULE_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _var(name: str) -> str:
    return f"{name} ({ENV_PREFIX}{name.upper()})"


def _secret_value(secret: SecretStr | None, file: Path | None) -> str | None:
    if file is not None:
        return file.read_text(encoding="utf-8").rstrip("\r\n")
    return None if secret is None else secret.get_secret_value()


def _gssapi_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gssapi") is not None


def security_problems(settings: CapgroupSettings) -> list[str]:
    """What is inconsistent in the security settings, each naming its variables (never a
    secret's value); empty when they are usable."""
    s = settings
    problems: list[str] = []
    uses_tls = s.security_protocol in ("SSL", "SASL_SSL")
    uses_sasl = s.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    tls_files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password_file")
    for name in (*tls_files, "sasl_password_file"):
        path = getattr(s, name)
        if path is None:
            continue
        if not path.is_file():
            problems.append(f"{_var(name)}: no such file: {path}")
        elif not os.access(path, os.R_OK):
            problems.append(f"{_var(name)}: file is not readable: {path}")
    if not uses_tls:
        for name in (*tls_files, "ssl_key_password"):
            if getattr(s, name) is not None:
                problems.append(
                    f"{_var(name)} is set but security_protocol is {s.security_protocol}; "
                    f"TLS settings need {ENV_PREFIX}SECURITY_PROTOCOL=SSL or SASL_SSL"
                )
    if s.ssl_keyfile is not None and s.ssl_certfile is None:
        problems.append(f"{_var('ssl_keyfile')} needs {_var('ssl_certfile')}")
    if s.ssl_key_password is not None and s.ssl_key_password_file is not None:
        problems.append(
            f"set one of {_var('ssl_key_password')} and {_var('ssl_key_password_file')}, not both"
        )
    if (s.ssl_key_password or s.ssl_key_password_file) and s.ssl_certfile is None:
        problems.append(f"{_var('ssl_key_password')} needs {_var('ssl_certfile')}")
    if s.sasl_password is not None and s.sasl_password_file is not None:
        problems.append(
            f"set one of {_var('sasl_password')} and {_var('sasl_password_file')}, not both"
        )
    if uses_sasl and s.sasl_mechanism is None:
        problems.append(
            f"{_var('sasl_mechanism')} is required with security_protocol "
            f"{s.security_protocol} (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)"
        )
    if not uses_sasl and s.sasl_mechanism is not None:
        problems.append(
            f"{_var('sasl_mechanism')} is set but security_protocol is {s.security_protocol}; "
            f"SASL needs {ENV_PREFIX}SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT"
        )
    mechanism = s.sasl_mechanism if uses_sasl else None
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        if not s.sasl_username:
            problems.append(f"{_var('sasl_username')} is required with {mechanism}")
        if s.sasl_password is None and s.sasl_password_file is None:
            problems.append(
                f"{_var('sasl_password')} or {_var('sasl_password_file')} is required with "
                f"{mechanism}"
            )
    if mechanism == "OAUTHBEARER":
        if (s.sasl_oauth_token_provider is None) == (s.msk_region is None):
            problems.append(
                f"OAUTHBEARER needs exactly one of {_var('sasl_oauth_token_provider')} and "
                f"{_var('msk_region')} (AWS MSK IAM)"
            )
    elif s.sasl_oauth_token_provider is not None or s.msk_region is not None:
        problems.append(
            f"{_var('sasl_oauth_token_provider')} and {_var('msk_region')} need "
            f"{ENV_PREFIX}SASL_MECHANISM=OAUTHBEARER"
        )
    if mechanism == "GSSAPI" and not _gssapi_available():
        problems.append(
            f"{_var('sasl_mechanism')}: GSSAPI needs aiokafka's optional dependency gssapi "
            "(pip install 'aiokafka[gssapi]')"
        )
    if s.sasl_oauth_token_provider is not None and not _MODULE_CALLABLE.fullmatch(
        s.sasl_oauth_token_provider
    ):
        problems.append(
            f"{_var('sasl_oauth_token_provider')}: {s.sasl_oauth_token_provider!r} is not "
            "module:callable (e.g. myservice.auth:fetch_token)"
        )
    if (s.msk_role_arn is not None or s.msk_profile is not None) and s.msk_region is None:
        problems.append(
            f"{_var('msk_role_arn')} and {_var('msk_profile')} need {_var('msk_region')}"
        )
    if s.msk_role_arn is not None and s.msk_profile is not None:
        problems.append(f"set one of {_var('msk_role_arn')} and {_var('msk_profile')}, not both")
    return problems


def _describe(error: dict[str, Any]) -> str:
    location = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
    message = str(error.get("msg", "invalid value"))
    if not location:
        return message.removeprefix("Value error, ")
    name = location[0]
    variable = ENV_PREFIX + name.upper()
    field = CapgroupSettings.model_fields.get(name)
    bounds = _bounds(field.metadata) if field is not None else ""
    given = error.get("input")
    secret = field is not None and "SecretStr" in str(field.annotation)
    shown = "" if given is None or isinstance(given, dict) or secret else f" (got {given!r})"
    return f"{variable} ({name}): {message.removeprefix('Value error, ')}{bounds}{shown}"


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return f"; accepted range: {' and '.join(parts)}" if parts else ""


#: ``CAPGROUP_*`` variables that are not member settings but are read elsewhere.
OTHER_VARIABLES = frozenset(
    {
        "CAPGROUP_KAFKA_CACHE",
        "CAPGROUP_TOOLS_CACHE",
        # The assignor's compiled core: off with 0; a timing of each step on stderr.
        "CAPGROUP_ASSIGNOR_NATIVE",
        "CAPGROUP_ASSIGNOR_NATIVE_TRACE",
    }
)

_warned_unknown: set[tuple[str, str]] = set()


def unknown_variables(
    environ: Mapping[str, str] | None = None, env_file: str | os.PathLike[str] | None = ".env"
) -> list[tuple[str, str, str | None]]:
    """``(where, variable, closest setting or None)`` for every ``CAPGROUP_*`` name in the
    environment and in ``env_file`` that is no setting (a typo such as ``CAPGROUP_GROUPID``
    would otherwise be ignored in silence). ``where`` is ``"environment"`` or the file name."""
    import difflib

    known = {ENV_PREFIX + name.upper() for name in CapgroupSettings.model_fields}
    sources: list[tuple[str, Iterable[str]]] = [
        ("environment", (os.environ if environ is None else environ).keys())
    ]
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        sources.append((str(env_file), dotenv_values(env_file).keys()))
    found = []
    for where, names in sources:
        for name in names:
            upper = name.upper()
            if not upper.startswith(ENV_PREFIX) or upper in known or upper in OTHER_VARIABLES:
                continue
            close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
            found.append((where, name, close[0] if close else None))
    return found


def _warn_unknown_variables() -> None:
    """Log each unknown ``CAPGROUP_*`` variable once per process (a warning, not an error)."""
    from capgroup.log import get_logger

    for where, name, closest in unknown_variables():
        if (where, name) in _warned_unknown:
            continue
        _warned_unknown.add((where, name))
        hint = f"; did you mean {closest}?" if closest else ""
        get_logger("settings").warning(
            "unknown_setting",
            variable=name,
            source=where,
            did_you_mean=closest,
            message=f"{name} ({where}) is not a capgroup setting and is ignored{hint}",
        )


def load_settings(**overrides: Any) -> CapgroupSettings:
    """Build settings from the environment, ``.env`` and ``overrides``.

    Raises :class:`SettingsError` naming every invalid setting and its accepted range.
    """
    _warn_unknown_variables()
    try:
        return CapgroupSettings(**overrides)
    except ValidationError as exc:
        raise SettingsError([_describe(dict(e)) for e in exc.errors()]) from None
