"""Against a local broker whose client listener is mutual TLS (SSL, ``ssl.client.auth=
required``; the certificate's CN is the principal) with StandardAuthorizer ACLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capgroup.devkafka.cluster import LocalKafkaCluster
from capgroup.devkafka.secure import SecurityStore
from capgroup.security import check_access
from tests.security.scenarios import (
    admin_helpers_work_with_the_secured_settings,
    assert_one_line_without,
    failed_batches_go_to_the_dead_letter_topic,
    group_of_two_consumes_commits_and_rebalances,
    secured_cluster,
)

pytestmark = [pytest.mark.kafka, pytest.mark.anyio, pytest.mark.timeout(180)]

GROUP = {"group_id": "mtls-group", "topics": ["mtls-topic"]}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalKafkaCluster]:
    yield from secured_cluster("ssl")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> SecurityStore:
    """Certificates of another CA."""
    store = SecurityStore("ssl", tmp_path_factory.mktemp("foreign") / "pki")
    store.generate()
    return store


async def test_group_of_two_consumes_commits_and_rebalances(cluster: LocalKafkaCluster) -> None:
    await group_of_two_consumes_commits_and_rebalances(cluster)


async def test_failed_batches_go_to_the_dead_letter_topic(cluster: LocalKafkaCluster) -> None:
    await failed_batches_go_to_the_dead_letter_topic(cluster)


async def test_admin_helpers_work_with_the_secured_settings(cluster: LocalKafkaCluster) -> None:
    await admin_helpers_work_with_the_secured_settings(cluster)


def test_unknown_ca(cluster: LocalKafkaCluster, foreign: SecurityStore) -> None:
    settings = cluster.client_settings("alice", ssl_cafile=str(foreign.ca_file), **GROUP)
    assert_one_line_without(
        check_access(settings),
        [],
        f"TLS: the certificate of broker {cluster.bootstrap_servers} is not trusted by "
        f"{foreign.ca_file}",
    )


def test_missing_client_certificate(cluster: LocalKafkaCluster) -> None:
    settings = cluster.client_settings("alice", ssl_certfile=None, ssl_keyfile=None, **GROUP)
    assert_one_line_without(
        check_access(settings),
        [],
        f"TLS: the broker at {cluster.bootstrap_servers} rejected the client certificate",
        "(client certificate: none)",
    )


def test_client_certificate_of_another_ca(
    cluster: LocalKafkaCluster, foreign: SecurityStore
) -> None:
    settings = cluster.client_settings(
        "alice",
        ssl_certfile=str(foreign.cert_file("alice")),
        ssl_keyfile=str(foreign.key_file("alice")),
        **GROUP,
    )
    assert_one_line_without(
        check_access(settings),
        [],
        "rejected the client certificate",
        f"(client certificate: {foreign.cert_file('alice')})",
    )


def test_sasl_client_against_the_mtls_listener(cluster: LocalKafkaCluster) -> None:
    settings = cluster.client_settings(
        "alice",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password="irrelevant-pw",
        **GROUP,
    )
    line = assert_one_line_without(check_access(settings), ["irrelevant-pw"], "ILLEGAL_SASL_STATE")
    assert line.endswith("set CAPGROUP_SECURITY_PROTOCOL to SSL")


def test_missing_group_acl_names_the_certificate_principal(cluster: LocalKafkaCluster) -> None:
    certificate = cluster.security_store.cert_file("bob")
    assert check_access(cluster.client_settings("bob", **GROUP)) == (
        f"not authorized (GROUP_AUTHORIZATION_FAILED): User:CN=bob (the certificate in "
        f"{certificate}) needs an ACL allowing Read on group 'mtls-group'"
    )


def test_the_access_check_passes_for_alice(cluster: LocalKafkaCluster) -> None:
    assert check_access(cluster.client_settings("alice", **GROUP)) is None


def test_client_files_are_private(cluster: LocalKafkaCluster) -> None:
    store = cluster.security_store
    assert Path(store.key_file("alice")).stat().st_mode & 0o077 == 0
    assert store.directory.stat().st_mode & 0o077 == 0
