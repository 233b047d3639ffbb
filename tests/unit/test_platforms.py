"""docs/platforms.md, block by block: each platform's exact settings load, give the librdkafka (and
Schema Registry client) configuration the platform needs, and start a real librdkafka client; the
OIDC token is fetched from a token endpoint when a client starts, and Amazon MSK IAM's token comes
from AWS's signer (a stand-in module here) through oauth_cb.

The page's files live under /etc/kycstream/ (where deploy/ mounts Secrets); here that prefix is a
temporary directory holding generated files of the same names. Clients connect to a closed local
port: no test reaches a platform."""

from __future__ import annotations

import base64
import datetime
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from confluent_kafka import Producer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from processors.errors import ConfigError
from processors.kafka import config, embedded
from processors.settings import ProcessorSettings
from tests.conftest import serving_app, wait_until

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "platforms.md"
MOUNT = "/etc/kycstream/"
SECRETS = {  # the Secrets' files the page names, and what this test puts in them
    "kafka-user/api-secret": "cc-api-secret",
    "kafka-user/client-secret": "oidc-client-secret",
    "kafka-user/password": "scram-password",
    "kafka-user/key-password": "unlock-the-key",
    "registry/user-info": "SRKEY:sr-secret",
    "registry/client-secret": "registry-client-secret",
}
KEY_PASSWORD = SECRETS["kafka-user/key-password"]


def doc_blocks() -> dict[str, str]:
    """Each ```yaml block of the page, by the heading above it."""
    blocks: dict[str, str] = {}
    heading = ""
    for part in re.split(r"(^#{2,3} [^\n]+$|^```yaml\n.*?^```$)", DOC.read_text(), flags=re.M | re.S):
        if part.startswith("#"):
            heading = part.lstrip("#").strip()
        elif part.startswith("```yaml"):
            assert heading not in blocks, f"one block per heading: {heading}"
            blocks[heading] = part.removeprefix("```yaml\n").removesuffix("```")
    return blocks


BLOCKS = doc_blocks()

# What each platform needs from librdkafka: the page's block must produce at least these.
KAFKA = {
    "Confluent Cloud (API key)": {
        "bootstrap.servers": "pkc-12345.eu-west-1.aws.confluent.cloud:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "ABCDEFGHIJKLMNOP",
        "sasl.password": "cc-api-secret",
    },
    "Confluent Cloud (OAuth)": {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.token.endpoint.url": "https://login.example.com/oauth2/v1/token",
        "sasl.oauthbearer.client.id": "kycstream-processor",
        "sasl.oauthbearer.client.secret": "oidc-client-secret",
        "sasl.oauthbearer.scope": "kafka",
        "sasl.oauthbearer.extensions": "logicalCluster=lkc-abc123,identityPoolId=pool-XyZ1",
    },
    "Amazon MSK (SASL/SCRAM)": {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "kycstream-processor",
        "sasl.password": "scram-password",
    },
    "Amazon MSK (IAM)": {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"},
    "Strimzi (SCRAM)": {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.password": "scram-password",
        "ssl.ca.location": "{mount}kafka-ca/ca.crt",
    },
    "Strimzi (mTLS)": {
        "security.protocol": "SSL",
        "ssl.ca.location": "{mount}kafka-ca/ca.crt",
        "ssl.certificate.location": "{mount}kafka-user/user.crt",
        "ssl.key.location": "{mount}kafka-user/user.key",
    },
    "mTLS with an encrypted key": {
        "security.protocol": "SSL",
        "ssl.key.location": "{mount}kafka-user/user.key",
        "ssl.key.password": KEY_PASSWORD,
    },
}
REGISTRY = {
    "Confluent Cloud Schema Registry": {
        "url": "https://psrc-12345.eu-west-1.aws.confluent.cloud",
        "basic.auth.user.info": "SRKEY:sr-secret",
    },
    "A registry behind your PKI with OAuth": {
        "url": "https://schema-registry.internal:8081",
        "ssl.ca.location": "{mount}registry/ca.crt",
        "ssl.certificate.location": "{mount}registry/client.crt",
        "ssl.key.location": "{mount}registry/client.key",
        "bearer.auth.credentials.source": "OAUTHBEARER",
        "bearer.auth.issuer.endpoint.url": "https://login.example.com/oauth2/v1/token",
        "bearer.auth.client.id": "kycstream",
        "bearer.auth.client.secret": "registry-client-secret",
        "bearer.auth.scope": "schema-registry",
    },
}


def test_every_block_of_the_page_is_checked() -> None:
    assert set(BLOCKS) == set(KAFKA) | set(REGISTRY)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A CA and a client certificate it signed, the key in clear and encrypted with KEY_PASSWORD."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey) -> bytes:
        built = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=name == issuer, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )
        return built.public_bytes(serialization.Encoding.PEM)

    ca_key, user_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def key(encryption: serialization.KeySerializationEncryption) -> bytes:
        return user_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    return {
        "ca": cert("test-ca", ca_key, "test-ca", ca_key),
        "user": cert("kycstream-processor", user_key, "test-ca", ca_key),
        "key": key(serialization.NoEncryption()),
        "encrypted_key": key(serialization.BestAvailableEncryption(KEY_PASSWORD.encode())),
    }


def mounted(tmp_path: Path, block: str, pki: dict[str, bytes]) -> Path:
    """The page's block as a config file whose /etc/kycstream/ files are under `tmp_path`."""
    mount = tmp_path / "mount"
    for name, value in SECRETS.items():
        (mount / name).parent.mkdir(parents=True, exist_ok=True)
        (mount / name).write_text(value + "\n")
    encrypted = "key-password" in block
    for name, data in {
        "kafka-ca/ca.crt": pki["ca"],
        "kafka-user/user.crt": pki["user"],
        "kafka-user/user.key": pki["encrypted_key" if encrypted else "key"],
        "registry/ca.crt": pki["ca"],
        "registry/client.crt": pki["user"],
        "registry/client.key": pki["key"],
    }.items():
        (mount / name).parent.mkdir(parents=True, exist_ok=True)
        (mount / name).write_bytes(data)
    path = tmp_path / "kycstream.yaml"
    path.write_text(block.replace(MOUNT, f"{mount}/"))
    return path


def expected(properties: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {key: value.replace("{mount}", f"{tmp_path / 'mount'}/") for key, value in properties.items()}


@pytest.fixture
def msk_signer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """AWS's signer module as the kycstream[msk] extra installs it, standing in: it records each
    region it signs for and returns a token valid 15 minutes, as the real one does."""
    package = tmp_path / "signer" / "aws_msk_iam_sasl_signer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import time\n"
        "CALLS = []\n"
        "class MSKAuthTokenProvider:\n"
        "    @staticmethod\n"
        "    def generate_auth_token(region):\n"
        "        CALLS.append(region)\n"
        "        return f'signed-for-{region}', int(time.time() * 1000) + 900_000\n"
    )
    monkeypatch.syspath_prepend(str(package.parent))
    import aws_msk_iam_sasl_signer  # type: ignore[import-not-found]

    yield aws_msk_iam_sasl_signer.CALLS
    sys.modules.pop("aws_msk_iam_sasl_signer", None)


@pytest.fixture
def closed_port() -> str:
    return f"127.0.0.1:{embedded.free_port()}"  # nothing listens: clients start, and connect nowhere


@pytest.mark.parametrize("platform", list(KAFKA))
def test_each_platforms_block_gives_librdkafka_what_the_platform_needs(
    platform: str, tmp_path: Path, pki: dict[str, bytes], msk_signer: list[str], closed_port: str
) -> None:
    settings = ProcessorSettings.load(mounted(tmp_path, BLOCKS[platform], pki))
    producer = config.producer(settings.kafka)
    consumer = config.consumer(settings.kafka, "g")
    admin = config.admin(settings.kafka)
    for conf in (producer, consumer, admin):
        assert {key: conf.get(key) for key in KAFKA[platform]} == expected(KAFKA[platform], tmp_path)
    assert not [secret for secret in SECRETS.values() if secret in repr(settings)], "secrets never print"
    # librdkafka takes it: the CA, the certificate and the key (decrypted with its password) load.
    conf = producer | {"bootstrap.servers": closed_port}
    if conf.get("sasl.oauthbearer.method") == "oidc":  # its token fetch is the next test's
        conf["sasl.oauthbearer.token.endpoint.url"] = f"http://{closed_port}/token"
    Producer(conf).flush(0)


def test_a_wrong_key_password_is_refused_by_librdkafka(tmp_path: Path, pki: dict[str, bytes], closed_port: str) -> None:
    path = mounted(tmp_path, BLOCKS["mTLS with an encrypted key"], pki)
    (tmp_path / "mount" / "kafka-user" / "key-password").write_text("not-the-password\n")
    conf = config.producer(ProcessorSettings.load(path).kafka) | {"bootstrap.servers": closed_port}
    with pytest.raises(Exception, match=r"ssl\.key"):
        Producer(conf)


@pytest.mark.parametrize("registry", list(REGISTRY))
def test_each_registry_block_gives_the_registry_client_what_it_needs(
    registry: str, tmp_path: Path, pki: dict[str, bytes]
) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    k = ProcessorSettings.load(mounted(tmp_path, BLOCKS[registry], pki)).kafka
    registry_conf = config.schema_registry(k)
    assert registry_conf is not None
    client = registry_conf.client
    assert {key: client.get(key) for key in REGISTRY[registry]} == expected(REGISTRY[registry], tmp_path)
    assert registry_conf.auto_register is False, "the page's production blocks register in CI"
    SchemaRegistryClient(client)  # confluent-kafka accepts every property


class TokenEndpoint:
    """An OAuth token endpoint (client_secret_basic) answering a JWT, as identity providers do."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []

    async def token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        self.requests.append((request.headers.get("authorization", ""), form))

        def part(data: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        claims = {"sub": "kycstream-processor", "iat": int(time.time()), "exp": int(time.time()) + 3600}
        jwt = f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"
        return JSONResponse({"access_token": jwt, "token_type": "Bearer", "expires_in": 3600})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/oauth2/v1/token", self.token, methods=["POST"])])


def test_oidc_fetches_a_token_with_the_client_credentials_when_a_client_starts(
    tmp_path: Path, pki: dict[str, bytes], closed_port: str
) -> None:
    endpoint = TokenEndpoint()
    with serving_app(endpoint.app()) as url:
        block = BLOCKS["Confluent Cloud (OAuth)"].replace("https://login.example.com", url)
        settings = ProcessorSettings.load(mounted(tmp_path, block, pki))
        conf = config.producer(settings.kafka) | {"bootstrap.servers": closed_port}
        producer = Producer(conf)
        wait_until(lambda: endpoint.requests, 10, "a token request from librdkafka")
        producer.flush(0)
    authorization, form = endpoint.requests[0]
    assert authorization == "Basic " + base64.b64encode(b"kycstream-processor:oidc-client-secret").decode()
    assert form == {"grant_type": "client_credentials", "scope": "kafka"}


def test_msk_iam_hands_the_signers_token_to_librdkafka_when_a_client_starts(
    tmp_path: Path, pki: dict[str, bytes], msk_signer: list[str], closed_port: str
) -> None:
    settings = ProcessorSettings.load(mounted(tmp_path, BLOCKS["Amazon MSK (IAM)"], pki))
    conf = config.producer(settings.kafka) | {"bootstrap.servers": closed_port}
    oauth_cb: Callable[[str | None], tuple[str, float]] = conf["oauth_cb"]
    handed: list[tuple[str | None, tuple[str, float]]] = []

    def recorded(oauthbearer_config: str | None) -> tuple[str, float]:
        handed.append((oauthbearer_config, oauth_cb(oauthbearer_config)))
        return handed[-1][1]

    producer = Producer(conf | {"oauth_cb": recorded})
    wait_until(lambda: handed, 10, "librdkafka asking oauth_cb for a token")
    producer.flush(0)
    assert msk_signer == ["eu-west-1"]
    config_string, (token, expiry) = handed[0]
    assert config_string is None, "sasl.oauthbearer.config, which MSK IAM does not use"
    assert token == "signed-for-eu-west-1"
    assert 850 < expiry - time.time() <= 900, "the signer's expiry in milliseconds, handed over in seconds"


def test_msk_iam_without_the_extra_says_how_to_install_it(tmp_path: Path, pki: dict[str, bytes]) -> None:
    assert "aws_msk_iam_sasl_signer" not in sys.modules
    with pytest.raises(ConfigError, match=r"pip install 'kycstream\[msk\]'"):
        ProcessorSettings.load(mounted(tmp_path, BLOCKS["Amazon MSK (IAM)"], pki))


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "needs sasl_oauthbearer_method: oidc"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauthbearer_method": "oidc"},
            "oidc needs sasl_oauthbearer_token_endpoint_url (the identity provider's token endpoint), "
            "sasl_oauthbearer_client_id",
        ),
        (
            {"sasl_oauthbearer_token_endpoint_url": "http://idp.example/token"},
            "plain http:// to a host off this machine",
        ),
        ({"sasl_password_file": "/nonexistent/password"}, "sasl_password_file /nonexistent/password: No such file"),
        ({"ssl_key_password": "x"}, "ssl_key_password decrypts ssl_key_location"),
        ({"extra": {"sasl.oauthbearer.client.secret": "s"}}, "kafka.sasl_oauthbearer_client_secret_file"),
        ({"sasl_mechanism": "SCRAM-SHA-512"}, "needs security_protocol SASL_SSL"),
        (
            {"schema_registry_basic_auth": "u:p", "schema_registry_bearer_token": "t"},
            "one way to authenticate",
        ),
    ],
)
def test_an_incomplete_auth_is_refused_at_start_saying_what_to_set(
    tmp_path: Path, kafka: dict[str, Any], message: str
) -> None:
    path = tmp_path / "kycstream.yaml"
    path.write_text(json.dumps({"kafka": kafka}))
    with pytest.raises(ConfigError) as raised:
        ProcessorSettings.load(path)
    assert message in str(raised.value)


def test_a_secrets_file_form_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text("from-a-file\n")
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD_FILE", str(tmp_path / "secret"))
    monkeypatch.setenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE", str(tmp_path / "secret"))
    mtls = {"security_protocol": "SSL", "ssl_certificate_location": "c", "ssl_key_location": "k"}
    k = ProcessorSettings.load(None, kafka=mtls).kafka
    assert k.ssl_key_password is not None and k.ssl_key_password.get_secret_value() == "from-a-file"
    assert k.schema_registry_basic_auth is not None
