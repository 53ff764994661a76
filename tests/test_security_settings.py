"""Security settings (issue 11): validation, secrets that are never shown, the client options
they become, and the OAUTHBEARER token providers. No broker needed."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import types
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest

from capgroup.cli import config_cmd
from capgroup.connection import ClientRole, client_options
from capgroup.security import (
    MSK_EXTRA_HINT,
    make_token_provider,
    msk_token_callable,
    ssl_context,
    token_provider,
)
from capgroup.settings import SettingsError, load_settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SECRET = "s3cr3t-never-shown"


def _problems(**overrides: Any) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    text = str(caught.value)
    assert SECRET not in text
    return text


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Path]:
    """A CA, a client certificate and its key (generated; the CA signs the certificate)."""
    from capgroup.devkafka.secure import SecurityStore

    store = SecurityStore("ssl", tmp_path / "pki")
    store.generate()
    return {
        "ca": store.ca_file,
        "cert": store.cert_file("alice"),
        "key": store.key_file("alice"),
    }


def test_defaults_are_plaintext_and_add_no_options() -> None:
    settings = load_settings()
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.ssl_check_hostname is True
    options = client_options(settings, ClientRole.FETCHER)
    assert not {"security_protocol", "ssl_context", "sasl_mechanism"} & set(options)


def test_names_are_case_insensitive_and_blank_means_unset() -> None:
    settings = load_settings(
        security_protocol="sasl_ssl",
        sasl_mechanism="scram-sha-512",
        sasl_username="alice",
        sasl_password=SECRET,
        ssl_cafile="",
        msk_region=" ",
    )
    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.ssl_cafile is None
    assert settings.msk_region is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"security_protocol": "SASL_SSL"}, "CAPGROUP_SASL_MECHANISM) is required with"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_password": SECRET},
            "CAPGROUP_SASL_USERNAME) is required with PLAIN",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"},
            "CAPGROUP_SASL_PASSWORD) or sasl_password_file (CAPGROUP_SASL_PASSWORD_FILE) is "
            "required with SCRAM-SHA-256",
        ),
        ({"sasl_mechanism": "PLAIN"}, "CAPGROUP_SASL_MECHANISM) is set but security_protocol"),
        ({"ssl_cafile": "/no/such/ca.pem"}, "CAPGROUP_SSL_CAFILE): no such file"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"},
            "OAUTHBEARER needs exactly one of sasl_oauth_token_provider",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_provider": "not a callable",
            },
            "is not module:callable",
        ),
        ({"msk_region": "eu-west-1"}, "need CAPGROUP_SASL_MECHANISM=OAUTHBEARER"),
        (
            {"security_protocol": "SSL", "msk_role_arn": "arn:aws:iam::1:role/r"},
            "CAPGROUP_MSK_ROLE_ARN) and msk_profile (CAPGROUP_MSK_PROFILE) need",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
                "sasl_password": SECRET,
                "sasl_password_file": __file__,
            },
            "not both",
        ),
        (
            {"security_protocol": "BOGUS", "sasl_password": SECRET},
            "CAPGROUP_SECURITY_PROTOCOL (security_protocol)",
        ),
    ],
)
def test_inconsistent_settings_name_the_variable_and_never_the_secret(
    overrides: dict[str, Any], expected: str
) -> None:
    assert expected in _problems(**overrides)


def test_tls_settings_need_a_tls_protocol(pem_files: dict[str, Path]) -> None:
    text = _problems(ssl_cafile=str(pem_files["ca"]), ssl_key_password=SECRET)
    assert "TLS settings need CAPGROUP_SECURITY_PROTOCOL=SSL or SASL_SSL" in text
    assert "CAPGROUP_SSL_KEY_PASSWORD" in text


def test_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET)
    secret_file.chmod(0)
    if os.geteuid() == 0:
        # Root reads every file (CI runs as root, an unprivileged user cannot start this
        # interpreter), so there the permission check itself answers "no" for this file.
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda path, mode: Path(path) != secret_file and real_access(path, mode)
        )
    text = _problems(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password_file=str(secret_file),
    )
    assert "sasl_password_file (CAPGROUP_SASL_PASSWORD_FILE): file is not readable" in text


def test_a_secret_that_fails_validation_is_not_echoed() -> None:
    text = _problems(sasl_password=["not", "a", SECRET])
    assert "CAPGROUP_SASL_PASSWORD (sasl_password)" in text


def test_config_command_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPGROUP_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("CAPGROUP_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("CAPGROUP_SASL_USERNAME", "alice")
    monkeypatch.setenv("CAPGROUP_SASL_PASSWORD", SECRET)
    # Logging bound to the captured stream would outlive it.
    monkeypatch.setattr(config_cmd, "configure_logging", lambda *args, **kwargs: None)
    assert config_cmd.run(Namespace(markdown=False)) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    shown = json.loads(out)
    assert shown["sasl_password"] == "**********"
    assert shown["sasl_username"] == "alice"
    assert SECRET not in repr(load_settings())


def test_password_file_is_read_at_connect_time(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text("first\n")
    settings = load_settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password_file=str(secret_file),
    )
    assert client_options(settings, ClientRole.ADMIN)["sasl_plain_password"] == "first"
    secret_file.write_text("rotated")  # a Kubernetes Secret was updated
    assert client_options(settings, ClientRole.ADMIN)["sasl_plain_password"] == "rotated"


def test_sasl_ssl_options_for_every_role(pem_files: dict[str, Path]) -> None:
    import ssl

    settings = load_settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password=SECRET,
        ssl_cafile=str(pem_files["ca"]),
    )
    for role in ClientRole:
        options = client_options(settings, role)
        assert options["security_protocol"] == "SASL_SSL"
        assert options["sasl_mechanism"] == "SCRAM-SHA-512"
        assert options["sasl_plain_username"] == "alice"
        assert options["sasl_plain_password"] == SECRET
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert options["ssl_context"].check_hostname is True
        assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_mtls_context_loads_the_client_certificate(pem_files: dict[str, Path]) -> None:
    settings = load_settings(
        security_protocol="SSL",
        ssl_cafile=str(pem_files["ca"]),
        ssl_certfile=str(pem_files["cert"]),
        ssl_keyfile=str(pem_files["key"]),
        ssl_check_hostname=False,
    )
    options = client_options(settings, ClientRole.COORDINATOR)
    assert options["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in options
    assert options["ssl_context"].check_hostname is False


def test_a_key_that_does_not_match_is_a_settings_error(
    pem_files: dict[str, Path], tmp_path: Path
) -> None:
    from capgroup.devkafka.secure import SecurityStore

    other = SecurityStore("ssl", tmp_path / "other")
    other.generate()
    settings = load_settings(
        security_protocol="SSL",
        ssl_certfile=str(pem_files["cert"]),
        ssl_keyfile=str(other.key_file("alice")),
        ssl_key_password=SECRET,
    )
    with pytest.raises(SettingsError) as caught:
        ssl_context(settings)
    assert "CAPGROUP_SSL_KEYFILE" in str(caught.value)
    assert SECRET not in str(caught.value)


# --- token providers ----------------------------------------------------------------------

_calls: list[dict[str, Any]] = []


def counting_provider() -> tuple[str, float]:
    """A sync provider whose tokens live 1 s; records where it ran."""
    try:
        asyncio.get_running_loop()
        on_loop = True
    except RuntimeError:
        on_loop = False
    _calls.append({"thread": threading.current_thread().name, "on_loop": on_loop})
    return f"token-{len(_calls)}", (time.time() + 1.0) * 1000


async def async_provider() -> str:
    """An async provider without expiry."""
    return "async-token"


def _oauth(provider: str) -> Any:
    return load_settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_provider=provider,
    )


async def test_sync_token_provider_runs_off_the_loop_and_is_refreshed_before_expiry() -> None:
    from aiokafka.abc import AbstractTokenProvider

    _calls.clear()
    settings = _oauth(f"{__name__}:counting_provider")
    options = client_options(settings, ClientRole.COORDINATOR)
    provider = options["sasl_oauth_token_provider"]
    assert isinstance(provider, AbstractTokenProvider)
    assert options["sasl_mechanism"] == "OAUTHBEARER"
    # Concurrent connections share one call; the cached token is reused.
    tokens = await asyncio.gather(*(provider.token() for _ in range(5)))
    assert tokens == ["token-1"] * 5
    assert await provider.token() == "token-1"
    assert len(_calls) == 1
    assert _calls[0]["on_loop"] is False
    assert _calls[0]["thread"] != threading.main_thread().name
    # Refreshed shortly before its expiry (1 s lifetime: within the last 20 %).
    await asyncio.sleep(0.85)
    assert await provider.token() == "token-2"
    assert len(_calls) == 2
    assert provider.calls == 2


async def test_async_token_provider_without_expiry_is_called_each_time() -> None:
    provider = token_provider(_oauth(f"{__name__}:async_provider"))
    assert await provider.token() == "async-token"
    assert await provider.token() == "async-token"
    assert provider.calls == 2


async def test_a_failing_provider_does_not_leak_its_message() -> None:
    def failing() -> str:
        raise PermissionError(f"bad client secret {SECRET}")

    provider = make_token_provider(failing, "tests:failing")
    with pytest.raises(RuntimeError) as caught:
        await provider.token()
    assert "tests:failing failed: PermissionError" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_an_unimportable_provider_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="CAPGROUP_SASL_OAUTH_TOKEN_PROVIDER: cannot import"):
        token_provider(_oauth("no_such_module_xyz:token"))


def test_msk_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aws_msk_iam_sasl_signer", None)  # import fails
    settings = load_settings(
        security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", msk_region="eu-west-1"
    )
    with pytest.raises(SettingsError) as caught:
        client_options(settings, ClientRole.FETCHER)
    assert MSK_EXTRA_HINT in str(caught.value)
    assert "capgroup[msk]" in str(caught.value)


async def test_msk_provider_calls_the_signer_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, ...]] = []

    class FakeSigner:
        @staticmethod
        def generate_auth_token(region: str) -> tuple[str, float]:
            seen.append(("default", region, threading.current_thread().name))
            return "msk-token", (time.time() + 900) * 1000

        @staticmethod
        def generate_auth_token_from_role_arn(region: str, role_arn: str) -> tuple[str, float]:
            seen.append(("role", region, role_arn))
            return "msk-role-token", (time.time() + 900) * 1000

    module = types.ModuleType("aws_msk_iam_sasl_signer")
    module.MSKAuthTokenProvider = FakeSigner  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aws_msk_iam_sasl_signer", module)
    settings = load_settings(
        security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", msk_region="eu-west-1"
    )
    provider = client_options(settings, ClientRole.COORDINATOR)["sasl_oauth_token_provider"]
    assert await provider.token() == "msk-token"
    assert await provider.token() == "msk-token"
    assert len(seen) == 1
    assert seen[0][:2] == ("default", "eu-west-1")
    assert seen[0][2] != threading.main_thread().name
    role = msk_token_callable("eu-west-1", role_arn="arn:aws:iam::1:role/kafka")
    assert role()[0] == "msk-role-token"


def test_access_check_leaves_an_unreachable_broker_to_the_member() -> None:
    from capgroup.security import check_access

    started = time.monotonic()
    assert check_access(load_settings(bootstrap_servers="127.0.0.1:1", group_id="g")) is None
    assert time.monotonic() - started < 3
