"""Against a local broker whose client listener is SASL_SSL (SCRAM-SHA-512 and PLAIN over
TLS) with StandardAuthorizer ACLs: a capgroup group works end to end, and each kind of
misconfiguration gives its documented one-line error without the password."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from capgroup.devkafka.cluster import LocalKafkaCluster
from capgroup.devkafka.secure import SecurityStore
from capgroup.security import EXIT_SECURITY, check_access
from tests.processes import capgroup_env
from tests.security.scenarios import (
    admin_helpers_work_with_the_secured_settings,
    assert_one_line_without,
    failed_batches_go_to_the_dead_letter_topic,
    group_of_two_consumes_commits_and_rebalances,
    run_member,
    secured_cluster,
)

pytestmark = [pytest.mark.kafka, pytest.mark.anyio, pytest.mark.timeout(180)]

WRONG = "Wr0ng-Passw0rd-xyz"
GROUP = {"group_id": "sec-group", "topics": ["sec-topic"]}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalKafkaCluster]:
    yield from secured_cluster("sasl_ssl")


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = SecurityStore("ssl", tmp_path_factory.mktemp("foreign") / "pki")
    store.generate()
    return store.ca_file


async def test_group_of_two_consumes_commits_and_rebalances(cluster: LocalKafkaCluster) -> None:
    await group_of_two_consumes_commits_and_rebalances(cluster)


async def test_failed_batches_go_to_the_dead_letter_topic(cluster: LocalKafkaCluster) -> None:
    await failed_batches_go_to_the_dead_letter_topic(cluster)


async def test_admin_helpers_work_with_the_secured_settings(cluster: LocalKafkaCluster) -> None:
    await admin_helpers_work_with_the_secured_settings(cluster)


def test_plain_and_scram_users_pass_the_access_check(cluster: LocalKafkaCluster) -> None:
    assert check_access(cluster.client_settings("alice", **GROUP)) is None
    assert check_access(cluster.client_settings("alice", "PLAIN", **GROUP)) is None


@pytest.mark.parametrize(("mechanism", "user"), [("SCRAM-SHA-512", "alice"), ("PLAIN", "nobody")])
def test_wrong_password_or_unknown_user_names_mechanism_and_user(
    cluster: LocalKafkaCluster,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    mechanism: str,
    user: str,
) -> None:
    settings = cluster.client_settings(
        "alice", mechanism, sasl_username=user, sasl_password=WRONG, **GROUP
    )
    line = check_access(settings)
    assert_one_line_without(
        line,
        [WRONG, *cluster.security_store.passwords.values()],
        f"authentication failed at {cluster.bootstrap_servers}",
        f"the broker rejected {mechanism} user '{user}'",
        "CAPGROUP_SASL_PASSWORD",
    )
    captured = capfd.readouterr()
    assert WRONG not in captured.out + captured.err + caplog.text


def test_unknown_ca_names_the_ca_file_and_the_broker(
    cluster: LocalKafkaCluster, foreign_ca: Path
) -> None:
    settings = cluster.client_settings("alice", ssl_cafile=str(foreign_ca), **GROUP)
    assert_one_line_without(
        check_access(settings),
        list(cluster.security_store.passwords.values()),
        f"TLS: the certificate of broker {cluster.bootstrap_servers} is not trusted by "
        f"{foreign_ca}",
        "check CAPGROUP_SSL_CAFILE",
    )


def test_plaintext_client_against_the_tls_listener(cluster: LocalKafkaCluster) -> None:
    settings = cluster.client_settings(
        "alice",
        security_protocol="PLAINTEXT",
        ssl_cafile=None,
        sasl_mechanism=None,
        sasl_username=None,
        sasl_password=None,
        **GROUP,
    )
    assert check_access(settings) == (
        f"the broker at {cluster.bootstrap_servers} speaks TLS but "
        "CAPGROUP_SECURITY_PROTOCOL=PLAINTEXT; set CAPGROUP_SECURITY_PROTOCOL to SSL or SASL_SSL"
    )


def test_tls_client_against_a_plaintext_listener(cluster: LocalKafkaCluster) -> None:
    # The controller listener of the local cluster is PLAINTEXT.
    plaintext = f"127.0.0.1:{cluster.nodes[0].controller_port}"
    settings = cluster.client_settings("alice", bootstrap_servers=plaintext, **GROUP)
    assert check_access(settings) == (
        f"the broker at {plaintext} does not speak TLS but CAPGROUP_SECURITY_PROTOCOL=SASL_SSL; "
        "set CAPGROUP_SECURITY_PROTOCOL to PLAINTEXT or SASL_PLAINTEXT"
    )


def test_missing_group_acl(cluster: LocalKafkaCluster) -> None:
    assert check_access(cluster.client_settings("bob", **GROUP)) == (
        "not authorized (GROUP_AUTHORIZATION_FAILED): User:bob needs an ACL allowing Read on "
        "group 'sec-group'"
    )


def test_missing_topic_acl_names_the_dead_letter_topic_too(cluster: LocalKafkaCluster) -> None:
    settings = cluster.client_settings(
        "carol",
        **GROUP,
        flush_failure_policy="dead_letter",
        dead_letter_topic="sec-dlq",
    )
    assert check_access(settings) == (
        "not authorized (TOPIC_AUTHORIZATION_FAILED): User:carol needs ACLs allowing Describe "
        "and Read on topic sec-topic, and Write on the dead-letter topic 'sec-dlq'"
    )


def test_capgroup_run_exits_with_one_line_and_no_password(cluster: LocalKafkaCluster) -> None:
    env = cluster.client_env("alice")
    env["CAPGROUP_SASL_PASSWORD"] = WRONG
    env |= {"CAPGROUP_GROUP_ID": "sec-group", "CAPGROUP_TOPICS": "sec-topic"}
    env |= {"CAPGROUP_LOG_FORMAT": "json"}
    done = run_member(env)
    output = done.stdout + done.stderr
    assert done.returncode == EXIT_SECURITY, output
    assert "Traceback" not in output
    assert WRONG not in output
    assert "the broker rejected SCRAM-SHA-512 user 'alice'" in output


@pytest.mark.parametrize(
    "command",
    [
        ["describe", "--group", "sec-group", "--timeout", "5"],
        ["doctor", "--topic", "sec-topic", "--timeout", "5", "--sample-seconds", "1"],
        ["hotkeys", "sec-topic", "--records", "10", "--timeout", "5"],
    ],
    ids=["describe", "doctor", "hotkeys"],
)
def test_inspection_commands_name_the_refused_login(
    cluster: LocalKafkaCluster, command: list[str]
) -> None:
    # The CLI's admin and consumer clients come from the same options as a member's: a wrong
    # password is one line naming mechanism and user (exit 5), not "cannot reach Kafka".
    env = cluster.client_env("alice")
    env["CAPGROUP_SASL_PASSWORD"] = WRONG
    done = subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", *command],
        env=capgroup_env({}, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == EXIT_SECURITY, output
    assert "Traceback" not in output
    assert WRONG not in output
    assert "the broker rejected SCRAM-SHA-512 user 'alice'" in output
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
