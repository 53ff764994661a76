"""TLS and SASL for every Kafka client: the SSL context, OAUTHBEARER token providers, and
one-line descriptions of authentication, authorization and TLS failures.

:func:`capgroup.connection.client_options` calls :func:`ssl_context` and
:func:`token_provider`; nothing else builds them. ``capgroup run`` turns a start-up failure
into one line with :func:`describe_connection_error`. Secrets (passwords, tokens) never appear
in a message or a log event of this module.

aiokafka is imported only when a provider or an SSL context is actually built.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import ssl
import threading
import time
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from capgroup.errors import GroupFatalError, leaf_exceptions
from capgroup.log import get_logger
from capgroup.settings import ENV_PREFIX, CapgroupSettings, SettingsError

__all__ = [
    "EXIT_SECURITY",
    "MSK_EXTRA_HINT",
    "CachingTokenProvider",
    "check_access",
    "check_access_async",
    "describe_connection_error",
    "load_callable",
    "make_token_provider",
    "msk_token_callable",
    "probe_connection",
    "ssl_context",
    "token_provider",
]

#: Exit code of ``capgroup run`` when authentication, authorization or TLS fails at start-up.
EXIT_SECURITY = 5

MSK_EXTRA_HINT = "pip install 'capgroup[msk]'"

#: Refresh a cached token this share of its lifetime before it expires (at most 5 minutes).
REFRESH_FRACTION = 0.2
MAX_REFRESH_MARGIN_S = 300.0

_log = get_logger("security")

TokenCallable = Callable[[], Any]


# --- TLS ------------------------------------------------------------------------------------


def ssl_context(settings: CapgroupSettings) -> ssl.SSLContext:
    """The client SSL context: the CA file (or the system CAs), the client certificate and
    key for mTLS, and hostname checking as configured.

    Raises :class:`SettingsError` naming the variables when a file cannot be loaded (a wrong
    key password included), never showing the password.
    """
    from aiokafka.helpers import create_ssl_context

    password = settings.ssl_key_password_value()
    try:
        context = create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
            password=password,
        )
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise SettingsError(
            [
                f"cannot load the TLS files ({ENV_PREFIX}SSL_CAFILE={settings.ssl_cafile}, "
                f"{ENV_PREFIX}SSL_CERTFILE={settings.ssl_certfile}, "
                f"{ENV_PREFIX}SSL_KEYFILE={settings.ssl_keyfile}): {reason}"
                + (f"; check {ENV_PREFIX}SSL_KEY_PASSWORD" if password is not None else "")
            ]
        ) from None
    context = typing.cast(ssl.SSLContext, context)
    context.check_hostname = settings.ssl_check_hostname
    if not settings.ssl_check_hostname:
        _log.warning("ssl_hostname_check_disabled", variable=f"{ENV_PREFIX}SSL_CHECK_HOSTNAME")
    return context


# --- OAUTHBEARER --------------------------------------------------------------------------


def load_callable(spec: str, variable: str = f"{ENV_PREFIX}SASL_OAUTH_TOKEN_PROVIDER") -> Any:
    """Import ``module:callable`` (the callable may be an attribute path)."""
    module_name, _, attribute = spec.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SettingsError([f"{variable}: cannot import module {module_name!r}: {exc}"]) from None
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise SettingsError([f"{variable}: module {module_name!r} has no {attribute!r}"])
    if not callable(found):
        raise SettingsError([f"{variable}: {spec!r} is not callable"])
    return found


def msk_token_callable(
    region: str, role_arn: str | None = None, profile: str | None = None
) -> TokenCallable:
    """A synchronous callable returning ``(token, expiry_ms)`` from AWS MSK IAM.

    Needs the ``msk`` extra (aws-msk-iam-sasl-signer-python); without it, raises
    :class:`SettingsError` naming the extra.
    """
    try:
        signer = importlib.import_module("aws_msk_iam_sasl_signer")
    except ImportError:
        raise SettingsError(
            [
                f"{ENV_PREFIX}MSK_REGION is set, but AWS MSK IAM needs the optional dependency "
                f"aws-msk-iam-sasl-signer-python: {MSK_EXTRA_HINT}"
            ]
        ) from None
    provider = signer.MSKAuthTokenProvider
    if role_arn is not None:
        return lambda: provider.generate_auth_token_from_role_arn(region, role_arn)
    if profile is not None:
        return lambda: provider.generate_auth_token_from_profile(region, profile)
    return lambda: provider.generate_auth_token(region)


def _token_provider_base() -> type[Any]:
    from aiokafka.abc import AbstractTokenProvider

    return typing.cast(type[Any], AbstractTokenProvider)


class CachingTokenProvider:
    """Calls a token callable and caches the token until shortly before it expires.

    The callable takes no arguments and returns a token or ``(token, expiry_ms)`` (expiry in
    milliseconds since the epoch, as the MSK signer returns it); it may be async. A
    synchronous callable runs in a worker thread (``anyio.to_thread.run_sync``), never on the
    event loop: token endpoints and AWS credential chains do blocking I/O. A token without an
    expiry is not cached. Concurrent connections share one call.

    Use :func:`token_provider`, which returns an instance that is also an
    ``aiokafka.abc.AbstractTokenProvider`` (aiokafka checks that).
    """

    def __init__(self, source: TokenCallable, name: str = "token provider") -> None:
        self._source = source
        self._name = name
        self._token: str | None = None
        self._expires_at = 0.0  # epoch seconds
        self._refresh_at = 0.0  # epoch seconds
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        #: How many times the callable was called (for tests and metrics).
        self.calls = 0

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def token(self) -> str:
        """A valid token: the cached one, or a fresh one from the callable."""
        if self._token is not None and time.time() < self._refresh_at:
            return self._token
        async with self._get_lock():
            if self._token is not None and time.time() < self._refresh_at:
                return self._token
            return await self._fetch()

    async def _fetch(self) -> str:
        self.calls += 1
        try:
            if inspect.iscoroutinefunction(self._source):
                result = await self._source()
            else:
                result = await anyio.to_thread.run_sync(self._source)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            # The message names the provider and the error type only: the exception text of a
            # token endpoint may carry credentials.
            _log.warning("oauth_token_failed", provider=self._name, error_type=type(exc).__name__)
            raise RuntimeError(
                f"the OAUTHBEARER token provider {self._name} failed: {type(exc).__name__}"
            ) from None
        token, expiry_ms = _split_token(result, self._name)
        now = time.time()
        if expiry_ms is None:
            self._token, self._refresh_at = None, 0.0
            return token
        self._expires_at = expiry_ms / 1000.0
        lifetime = max(0.0, self._expires_at - now)
        margin = min(MAX_REFRESH_MARGIN_S, lifetime * REFRESH_FRACTION)
        self._token, self._refresh_at = token, self._expires_at - margin
        _log.debug("oauth_token_refreshed", provider=self._name, expires_in_s=round(lifetime, 1))
        return token

    def extensions(self) -> dict[str, str]:
        """No SASL extensions."""
        return {}


def _split_token(result: Any, name: str) -> tuple[str, float | None]:
    if isinstance(result, tuple) and len(result) == 2:
        token, expiry = result
        if isinstance(token, str) and isinstance(expiry, int | float):
            return token, float(expiry)
    elif isinstance(result, str):
        return result, None
    raise TypeError(
        f"the OAUTHBEARER token provider {name} must return a token (str) or "
        f"(token, expiry_ms), not {type(result).__name__}"
    )


def make_token_provider(source: TokenCallable, name: str = "token provider") -> Any:
    """A :class:`CachingTokenProvider` that is an ``aiokafka.abc.AbstractTokenProvider``."""
    base = _token_provider_base()
    cls = type("CapgroupTokenProvider", (CachingTokenProvider, base), {})
    return cls(source, name)


def token_provider(settings: CapgroupSettings) -> Any | None:
    """The OAUTHBEARER token provider the settings name (a ``module:callable`` or AWS MSK
    IAM), or ``None`` when the mechanism is not OAUTHBEARER."""
    if settings.sasl_mechanism != "OAUTHBEARER":
        return None
    if settings.sasl_oauth_token_provider is not None:
        spec = settings.sasl_oauth_token_provider
        return make_token_provider(load_callable(spec), spec)
    assert settings.msk_region is not None  # settings validation guarantees one of the two
    source = msk_token_callable(settings.msk_region, settings.msk_role_arn, settings.msk_profile)
    return make_token_provider(source, f"AWS MSK IAM ({settings.msk_region})")


# --- describing failures ----------------------------------------------------------------------


def _chain(error: BaseException) -> list[BaseException]:
    """``error``'s leaves and their causes/contexts, outermost first."""
    found: list[BaseException] = []
    for leaf in leaf_exceptions(error):
        current: BaseException | None = leaf
        while current is not None and current not in found:
            found.append(current)
            current = current.__cause__ or current.__context__
    return found


def _principal(settings: CapgroupSettings) -> str:
    if settings.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        return f"User:{settings.sasl_username}"
    if settings.sasl_mechanism == "OAUTHBEARER":
        return "the OAUTHBEARER principal"
    if settings.ssl_certfile is not None:
        subject = _certificate_subject(settings.ssl_certfile)
        where = f"the certificate in {settings.ssl_certfile}"
        return f"User:{subject} ({where})" if subject else f"the principal of {where}"
    return "User:ANONYMOUS"


def _certificate_subject(path: Path) -> str | None:
    """The subject of the PEM certificate at ``path`` as Kafka prints it (``CN=alice``); the
    broker's ssl.principal.mapping.rules may shorten it."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    except Exception:
        return None
    parts = [f"{key}={value}" for rdn in decoded.get("subject", ()) for key, value in rdn]
    names = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU"}
    shown = []
    for part in reversed(parts):
        key, _, value = part.partition("=")
        shown.append(f"{names.get(key, key)}={value}")
    return ",".join(shown) or None


def _servers(settings: CapgroupSettings) -> str:
    return ",".join(settings.bootstrap_servers)


def _protocol_hint(settings: CapgroupSettings) -> str:
    return f"{ENV_PREFIX}SECURITY_PROTOCOL={settings.security_protocol}"


def describe_connection_error(exc: BaseException, settings: CapgroupSettings) -> str | None:
    """One line explaining an authentication, authorization or TLS failure, or ``None`` when
    ``exc`` is none of those.

    The line names the mechanism, the user, the CA file, the broker or the missing ACL, and
    never a secret. When ``exc`` is aiokafka's bare "Unable to bootstrap" (it drops the
    cause), the bootstrap servers are probed once more to find it (a few seconds at most).
    """
    from aiokafka import errors as kafka_errors

    chain = _chain(exc)
    for error in chain:
        line = _describe_one(error, settings, None)
        if line is not None:
            return line
    if any(
        isinstance(e, kafka_errors.KafkaConnectionError) and "bootstrap" in str(e) for e in chain
    ):
        found = _run_probe(settings)
        if found is not None:
            server, cause = found
            return _describe_one(cause, settings, server)
    return None


def _topic_line(settings: CapgroupSettings, topics: list[str]) -> str:
    dead_letter = (
        f", and Write on the dead-letter topic {settings.dead_letter_topic!r}"
        if settings.dead_letter_topic
        else ""
    )
    return (
        f"not authorized (TOPIC_AUTHORIZATION_FAILED): {_principal(settings)} needs ACLs "
        f"allowing Describe and Read on topic {','.join(topics) or '(none)'}{dead_letter}"
    )


def _describe_one(
    error: BaseException, settings: CapgroupSettings, server: str | None
) -> str | None:
    from aiokafka import errors as kafka_errors

    where = server or _servers(settings)
    if isinstance(error, _ProtocolMismatchError):
        return str(error)
    if isinstance(
        error, kafka_errors.SaslAuthenticationFailed | kafka_errors.AuthenticationFailedError
    ):
        if settings.sasl_mechanism == "OAUTHBEARER":
            return (
                f"authentication failed at {where}: the broker rejected the OAUTHBEARER token "
                f"(SASL_AUTHENTICATION_FAILED); check {ENV_PREFIX}SASL_OAUTH_TOKEN_PROVIDER or "
                f"{ENV_PREFIX}MSK_REGION"
            )
        return (
            f"authentication failed at {where}: the broker rejected {settings.sasl_mechanism} "
            f"user {settings.sasl_username!r} (wrong password or unknown user; check "
            f"{ENV_PREFIX}SASL_USERNAME and {ENV_PREFIX}SASL_PASSWORD)"
        )
    if isinstance(error, kafka_errors.UnsupportedSaslMechanismError):
        return (
            f"the broker at {where} does not offer SASL mechanism {settings.sasl_mechanism}; "
            f"check {ENV_PREFIX}SASL_MECHANISM"
        )
    if isinstance(error, ssl.SSLCertVerificationError):
        ca = settings.ssl_cafile or "the system CA store"
        return (
            f"TLS: the certificate of broker {where} is not trusted by {ca} "
            f"({error.verify_message}); check {ENV_PREFIX}SSL_CAFILE"
        )
    if isinstance(error, kafka_errors.GroupAuthorizationFailedError) or (
        isinstance(error, GroupFatalError) and "not authorized" in str(error)
    ):
        return (
            f"not authorized (GROUP_AUTHORIZATION_FAILED): {_principal(settings)} needs an ACL "
            f"allowing Read on group {settings.group_id!r}"
        )
    if isinstance(error, kafka_errors.TopicAuthorizationFailedError):
        return _topic_line(settings, settings.topics)
    if isinstance(error, ssl.SSLError) and server is not None:
        text = str(error).lower()
        if "certificate required" in text:
            return (
                f"TLS: the broker at {where} requires a client certificate (mTLS); set "
                f"{ENV_PREFIX}SSL_CERTFILE and {ENV_PREFIX}SSL_KEYFILE"
            )
        return (
            f"TLS handshake with {where} failed ({error.reason or error}): the listener may not "
            f"use TLS; check {_protocol_hint(settings)}"
        )
    return None


# --- probing ------------------------------------------------------------------------------


def _in_thread(function: Callable[[], Awaitable[Any]], within: float = 60.0) -> Any:
    """Run async ``function`` on a fresh event loop in a thread (callers may be inside one);
    ``None`` if it fails or takes longer than ``within`` seconds."""
    box: dict[str, Any] = {}

    async def main() -> None:
        box["value"] = await function()

    def target() -> None:
        with contextlib.suppress(Exception):
            asyncio.run(main())

    thread = threading.Thread(target=target, name="capgroup-connection-probe", daemon=True)
    thread.start()
    thread.join(within)
    return box.get("value")


def _run_probe(settings: CapgroupSettings) -> tuple[str, BaseException] | None:
    found: tuple[str, BaseException] | None = _in_thread(lambda: probe_connection(settings))
    return found


def check_access(settings: CapgroupSettings, within: float = 5.0) -> str | None:
    """Blocking :func:`check_access_async` for start-up code outside an event loop (it also
    works inside one: the check runs on its own loop in a thread)."""
    line: str | None = _in_thread(lambda: check_access_async(settings, within), 12 * within)
    return line


async def check_access_async(settings: CapgroupSettings, within: float = 5.0) -> str | None:
    """Check, before a member starts, that it can authenticate and may use its group and
    topics; return the one-line description of the first security failure, else ``None``.

    Authentication and TLS failures are not worth retrying, and aiokafka reports them only as
    "Unable to bootstrap"; GROUP_AUTHORIZATION_FAILED comes back from FindCoordinator and
    TOPIC_AUTHORIZATION_FAILED from Metadata, both of which a member would otherwise retry.
    Anything else (a broker that is down, a timeout) returns ``None``: the member's own retries
    deal with it.
    """
    from aiokafka import errors as kafka_errors
    from aiokafka.client import AIOKafkaClient, CoordinationType
    from aiokafka.protocol.metadata import MetadataRequest

    from capgroup.connection import ClientRole, client_options

    found = await probe_connection(settings, within)
    if found is not None:
        server, error = found
        return _describe_one(error, settings, server)
    options = client_options(settings, ClientRole.ADMIN)
    client = AIOKafkaClient(**{**options, "request_timeout_ms": int(within * 1000)})
    try:
        with anyio.fail_after(within * 4):
            await client.bootstrap()
            if settings.topics:
                node = client.get_random_node()
                response = await client.send(node, MetadataRequest(list(settings.topics), False))
                denied = [
                    entry[1]
                    for entry in response.topics
                    if entry[0] == kafka_errors.TopicAuthorizationFailedError.errno
                ]
                if denied:
                    return _topic_line(settings, denied)
            if settings.group_id:
                for _ in range(10):
                    try:
                        await client.coordinator_lookup(CoordinationType.GROUP, settings.group_id)
                        break
                    except kafka_errors.GroupAuthorizationFailedError as exc:
                        return _describe_one(exc, settings, None)
                    except kafka_errors.KafkaError:
                        await anyio.sleep(0.3)
    except kafka_errors.KafkaConnectionError:
        if settings.security_protocol == "SSL":
            # TLS and ApiVersions worked (the probe), the first real request was cut off.
            return (
                f"the broker at {_servers(settings)} closed the connection after the TLS "
                f"handshake: its listener may require SASL; set {ENV_PREFIX}SECURITY_PROTOCOL="
                f"SASL_SSL and {ENV_PREFIX}SASL_MECHANISM"
            )
    except Exception as exc:
        _log.debug("access_check_inconclusive", error_type=type(exc).__name__)
    finally:
        await client.close()
    return None


async def probe_connection(
    settings: CapgroupSettings, within: float = 5.0
) -> tuple[str, BaseException] | None:
    """Connect to each bootstrap server as a client would (TLS, SASL) and return the first
    ``(host:port, error)``, or ``None`` if one connects.

    A plaintext client whose connection the broker closes is checked once more with a TLS
    handshake, so that a TLS listener is told apart from one that is down.
    """
    from aiokafka import errors as kafka_errors
    from aiokafka.conn import create_conn

    from capgroup.connection import ClientRole, client_options

    options = client_options(settings, ClientRole.ADMIN)
    first: tuple[str, BaseException] | None = None
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            with anyio.fail_after(within):
                conn = await create_conn(
                    host,
                    int(port),
                    client_id=options["client_id"],
                    request_timeout_ms=int(within * 1000),
                    ssl_context=options.get("ssl_context"),
                    security_protocol=options.get("security_protocol", "PLAINTEXT"),
                    sasl_mechanism=options.get("sasl_mechanism", "PLAIN"),
                    sasl_plain_username=options.get("sasl_plain_username"),
                    sasl_plain_password=options.get("sasl_plain_password"),
                    sasl_oauth_token_provider=options.get("sasl_oauth_token_provider"),
                )
            conn.close()
            return None
        except Exception as exc:
            error: BaseException = exc
            if _unreachable(exc):
                # Down, refused or silent: not a security failure, and worth no second try.
                pass
            elif settings.security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
                if await _speaks_tls(host, int(port), within):
                    error = _ProtocolMismatchError(
                        f"the broker at {server} speaks TLS but {_protocol_hint(settings)}; "
                        f"set {ENV_PREFIX}SECURITY_PROTOCOL to SSL or SASL_SSL"
                    )
            elif _is_tls_failure(exc) and not await _speaks_tls(host, int(port), within):
                error = _ProtocolMismatchError(
                    f"the broker at {server} does not speak TLS but {_protocol_hint(settings)}; "
                    f"set {ENV_PREFIX}SECURITY_PROTOCOL to PLAINTEXT or SASL_PLAINTEXT"
                )
            elif isinstance(exc, kafka_errors.IllegalSaslStateError):
                error = _ProtocolMismatchError(
                    f"the listener at {server} does not use SASL (ILLEGAL_SASL_STATE) but "
                    f"{_protocol_hint(settings)}; set {ENV_PREFIX}SECURITY_PROTOCOL to SSL"
                )
            elif isinstance(exc, kafka_errors.KafkaConnectionError):
                # A TLS 1.3 server's alert arrives after the handshake and asyncio reports
                # only a closed connection: read it on a connection of our own.
                alert = await _tls_alert(host, int(port), options["ssl_context"], within)
                if alert is not None:
                    certificate = settings.ssl_certfile or "none"
                    error = _ProtocolMismatchError(
                        f"TLS: the broker at {server} rejected the client certificate "
                        f"({alert}); mutual TLS needs {ENV_PREFIX}SSL_CERTFILE and "
                        f"{ENV_PREFIX}SSL_KEYFILE signed by a CA the broker trusts (client "
                        f"certificate: {certificate})"
                    )
            if first is None:
                first = (server, error)
    return first


async def _tls_alert(host: str, port: int, context: ssl.SSLContext, within: float) -> str | None:
    """The TLS alert ``host:port`` answers a client with ``context`` with, if any."""
    try:
        with anyio.fail_after(within):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                writer.write(b"\x00\x00\x00\x00")
                await writer.drain()
                await reader.read(64)
            finally:
                writer.close()
    except ssl.SSLError as exc:
        if "alert" in str(exc).lower():
            return str(exc.reason or exc).lower().replace("_", " ")
    except Exception:
        return None
    return None


class _ProtocolMismatchError(Exception):
    """The client and the listener disagree on TLS; the message is the whole explanation."""


def _unreachable(exc: BaseException) -> bool:
    """A timeout, or a connection refused or reset before any byte: the broker is not there."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionRefusedError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError | ConnectionError)


def _is_tls_failure(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLError | ConnectionError | asyncio.IncompleteReadError) and not (
        isinstance(exc, ssl.SSLCertVerificationError)
    )


async def _speaks_tls(host: str, port: int, within: float) -> bool:
    """Whether ``host:port`` completes a TLS handshake (certificates not checked)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with anyio.fail_after(within):
            _, writer = await asyncio.open_connection(host, port, ssl=context)
    except Exception:
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True
