"""TLS certificates, SASL users and ACLs for a secured local Kafka (development and tests only).

``LocalKafkaCluster(security="ssl" | "sasl_ssl")`` uses this module:

- a CA and a broker certificate (for ``127.0.0.1`` and ``localhost``) generated on the fly
  with the ``cryptography`` library, handed to the broker as PEM (``ssl.keystore.type=PEM``);
- for ``ssl``: mutual TLS (``ssl.client.auth=required``), one client certificate per user,
  signed by the same CA; the certificate's CN is the principal (``User:alice``);
- for ``sasl_ssl``: SCRAM-SHA-512 users created when the storage is formatted
  (``--add-scram``) and PLAIN users in the listener's JAAS configuration;
- ``StandardAuthorizer``: ``admin`` (and the broker itself) are super users; the client users
  get ACLs through the admin client once the broker is up.

The users: ``admin`` (super user), ``alice`` (every topic and group), ``bob`` (every topic, no
group: GROUP_AUTHORIZATION_FAILED), ``carol`` (every group, no topic:
TOPIC_AUTHORIZATION_FAILED). Passwords are random per cluster.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from capgroup.devkafka.jars import KafkaLocalError

__all__ = [
    "ADMIN_USER",
    "BROKER_PRINCIPAL",
    "CLIENT_USERS",
    "SECURITY_MODES",
    "SecurityMode",
    "SecurityStore",
    "create_acls",
    "render_env_file",
]

SecurityMode = Literal["plaintext", "ssl", "sasl_ssl"]
SECURITY_MODES: tuple[SecurityMode, ...] = ("plaintext", "ssl", "sasl_ssl")

#: The super user the harness itself connects as.
ADMIN_USER = "admin"
#: CN of the broker's certificate; a super user, so that brokers may talk to each other.
BROKER_PRINCIPAL = "capgroup-broker"
#: Client users and their ACLs: (resource type, operation) pairs on every resource (``*``).
CLIENT_USERS: dict[str, tuple[tuple[str, str], ...]] = {
    "alice": (("topic", "all"), ("group", "all")),
    "bob": (("topic", "all"),),
    "carol": (("group", "all"),),
}
#: SASL mechanisms the sasl_ssl listener offers (SCRAM for members, PLAIN as Confluent Cloud).
SASL_MECHANISMS = ("SCRAM-SHA-512", "PLAIN")

# Kafka's wire codes (org.apache.kafka.common.resource / acl).
_RESOURCE_TYPES = {"topic": 2, "group": 3, "cluster": 4}
_OPERATIONS = {"all": 2, "read": 3, "write": 4, "describe": 8}
_PATTERN_LITERAL = 3
_PERMISSION_ALLOW = 3
#: CN=alice,... becomes principal User:alice.
_PRINCIPAL_RULES = "RULE:^CN=([a-zA-Z0-9._-]+).*$/$1/,DEFAULT"


def _crypto() -> Any:
    try:
        from cryptography import x509
    except ImportError:
        raise KafkaLocalError(
            "a secured local Kafka generates its certificates with the cryptography library: "
            "pip install 'capgroup[devkafka]' (or 'capgroup[test]')"
        ) from None
    return x509


@dataclass
class SecurityStore:
    """Certificates, keys and passwords of one secured local cluster, kept in ``directory``."""

    mode: SecurityMode
    directory: Path
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        """PEM certificate of the CA that signed every certificate here."""
        return self.directory / "ca.pem"

    def cert_file(self, user: str) -> Path:
        """PEM certificate of ``user`` (``BROKER_PRINCIPAL`` for the broker)."""
        return self.directory / f"{user}.pem"

    def key_file(self, user: str) -> Path:
        """Unencrypted PKCS#8 PEM private key of ``user``."""
        return self.directory / f"{user}.key"

    @property
    def users(self) -> tuple[str, ...]:
        """Every user a client may connect as: the admin and the client users."""
        return (ADMIN_USER, *CLIENT_USERS)

    def generate(self) -> None:
        """Create the CA, the broker certificate, a client certificate per user and passwords."""
        if self.mode == "plaintext":
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        self.passwords = {user: secrets.token_urlsafe(18) for user in self.users}
        _generate_certificates(self)

    # -- the broker side -------------------------------------------------------------------

    @property
    def listener(self) -> str:
        """Name (and security protocol) of the client listener."""
        return {"plaintext": "PLAINTEXT", "ssl": "SSL", "sasl_ssl": "SASL_SSL"}[self.mode]

    def broker_config(self) -> dict[str, str]:
        """``server.properties`` entries for TLS, SASL and the authorizer (not the listeners)."""
        if self.mode == "plaintext":
            return {}
        chain = self.cert_file(BROKER_PRINCIPAL).read_text() + self.ca_file.read_text()
        config = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": chain,
            "ssl.keystore.key": self.key_file(BROKER_PRINCIPAL).read_text(),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "ssl.endpoint.identification.algorithm": "https",
            "ssl.principal.mapping.rules": _PRINCIPAL_RULES,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # The controller listener stays PLAINTEXT on 127.0.0.1, where brokers reach the
            # controller as ANONYMOUS; clients never see it (it is not advertised).
            "super.users": f"User:{ADMIN_USER};User:{BROKER_PRINCIPAL};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }
        if self.mode == "ssl":
            config["ssl.client.auth"] = "required"
        else:
            admin = self.passwords[ADMIN_USER]
            plain_users = " ".join(f'user_{u}="{p}"' for u, p in self.passwords.items())
            prefix = "listener.name.sasl_ssl"
            config |= {
                "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
                "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
                f"{prefix}.scram-sha-512.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{ADMIN_USER}" password="{admin}";'
                ),
                f"{prefix}.plain.sasl.jaas.config": (
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f'username="{ADMIN_USER}" password="{admin}" {plain_users};'
                ),
            }
        return config

    def format_arguments(self) -> list[str]:
        """Extra ``kafka-storage format`` arguments: the SCRAM users (sasl_ssl only)."""
        if self.mode != "sasl_ssl":
            return []
        arguments = []
        for user, password in self.passwords.items():
            arguments += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        return arguments

    # -- the client side -------------------------------------------------------------------

    def client_env(
        self, bootstrap_servers: str, user: str = "alice", mechanism: str = "SCRAM-SHA-512"
    ) -> dict[str, str]:
        """The ``CAPGROUP_*`` variables a client needs to connect as ``user``."""
        env = {"CAPGROUP_BOOTSTRAP_SERVERS": bootstrap_servers}
        if self.mode == "plaintext":
            return env | {"CAPGROUP_SECURITY_PROTOCOL": "PLAINTEXT"}
        if user not in self.passwords:
            raise KeyError(f"no user {user!r}; users are {list(self.passwords)}")
        env |= {
            "CAPGROUP_SECURITY_PROTOCOL": self.listener,
            "CAPGROUP_SSL_CAFILE": str(self.ca_file),
        }
        if self.mode == "ssl":
            return env | {
                "CAPGROUP_SSL_CERTFILE": str(self.cert_file(user)),
                "CAPGROUP_SSL_KEYFILE": str(self.key_file(user)),
            }
        return env | {
            "CAPGROUP_SASL_MECHANISM": mechanism,
            "CAPGROUP_SASL_USERNAME": user,
            "CAPGROUP_SASL_PASSWORD": self.passwords[user],
        }

    def client_fields(
        self, bootstrap_servers: str, user: str = "alice", mechanism: str = "SCRAM-SHA-512"
    ) -> dict[str, Any]:
        """:func:`client_env` as ``load_settings`` keyword arguments, every security field
        given (so ``CAPGROUP_*`` variables of the calling process do not leak in)."""
        fields: dict[str, Any] = {
            "security_protocol": "PLAINTEXT",
            "ssl_cafile": None,
            "ssl_certfile": None,
            "ssl_keyfile": None,
            "ssl_key_password": None,
            "ssl_key_password_file": None,
            "sasl_mechanism": None,
            "sasl_username": None,
            "sasl_password": None,
            "sasl_password_file": None,
            "sasl_oauth_token_provider": None,
            "msk_region": None,
            "msk_role_arn": None,
            "msk_profile": None,
        }
        for name, value in self.client_env(bootstrap_servers, user, mechanism).items():
            fields[name.removeprefix("CAPGROUP_").lower()] = value
        fields["bootstrap_servers"] = bootstrap_servers.split(",")
        return fields


def render_env_file(env: Mapping[str, str]) -> str:
    """``NAME=value`` lines, quoted for a POSIX shell (``set -a; . FILE``) and ``.env``."""
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in env.items())


def _generate_certificates(store: SecurityStore) -> None:
    x509 = _crypto()
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7))

    def new_key() -> Any:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(common_name: str) -> Any:
        # The CN alone: the broker's principal mapping turns CN=alice into User:alice.
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write_key(path: Path, key: Any) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    ca_key = new_key()
    ca_name = name(f"capgroup local CA {secrets.token_hex(4)}")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    store.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(common_name: str, server: bool) -> None:
        key = new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        store.cert_file(common_name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(store.key_file(common_name), key)

    issue(BROKER_PRINCIPAL, server=True)
    for user in store.users:
        issue(user, server=False)


async def create_acls(admin: Any, grants: Mapping[str, tuple[tuple[str, str], ...]]) -> None:
    """Allow each principal's (resource type, operation) pairs on every resource (``*``),
    through a started ``AIOKafkaAdminClient`` of a super user."""
    from aiokafka.errors import for_code
    from aiokafka.protocol.admin import CreateAclsRequest

    for user, pairs in grants.items():
        for resource, operation in pairs:
            request = CreateAclsRequest(
                resource_type=_RESOURCE_TYPES[resource],
                resource_name="*",
                resource_pattern_type_filter=_PATTERN_LITERAL,
                principal=f"User:{user}",
                host="*",
                operation=_OPERATIONS[operation],
                permission_type=_PERMISSION_ALLOW,
            )
            response = await admin._send_request(request)
            for code, message in response.creation_responses:
                if code != 0:
                    raise KafkaLocalError(
                        f"creating the ACL {operation} on {resource} * for User:{user} failed: "
                        f"{for_code(code).__name__} {message or ''}"
                    )
