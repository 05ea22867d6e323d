"""Kafka TLS and SASL settings: checked for consistency, and mapped to each client's own option
names (kafka-python and librdkafka spell them differently), which the real clients accept."""

import datetime as dt

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from ray_app.config import KafkaSettings, load_settings
from ray_app.errors import ConfigError
from ray_app.kafka.security import security_confluent, security_kafka_python


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    """A real self-signed certificate and key (librdkafka reads them when a client is made)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("pem")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onramp-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"k3y"),
        )
    )
    return d


def test_sasl_scram_over_tls_maps_to_both_clients():
    s = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="onramp",
        sasl_password="s3cret",
        ssl_cafile="/etc/ssl/ca.pem",
    )
    assert security_kafka_python(s) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "onramp",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": "/etc/ssl/ca.pem",
        "ssl_check_hostname": True,
    }
    assert security_confluent(s) == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "onramp",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ssl/ca.pem",
        "ssl.endpoint.identification.algorithm": "https",
    }


def test_mutual_tls_maps_to_both_clients(pem):
    s = KafkaSettings(
        security_protocol="SSL",
        ssl_cafile=pem / "cert.pem",
        ssl_certfile=pem / "cert.pem",
        ssl_keyfile=pem / "key.pem",
        ssl_key_password="k3y",
        ssl_check_hostname=False,
    )
    kp = security_kafka_python(s)
    assert kp["ssl_certfile"] == str(pem / "cert.pem") and kp["ssl_keyfile"] == str(pem / "key.pem")
    assert kp["ssl_password"] == "k3y" and kp["ssl_check_hostname"] is False
    cf = security_confluent(s)
    assert cf["ssl.certificate.location"] == str(pem / "cert.pem")
    assert cf["ssl.key.location"] == str(pem / "key.pem") and cf["ssl.key.password"] == "k3y"
    assert cf["ssl.endpoint.identification.algorithm"] == "none"
    assert "sasl.mechanisms" not in cf and "sasl_mechanism" not in kp


def test_plaintext_maps_to_nothing_but_the_protocol():
    s = KafkaSettings()
    assert security_kafka_python(s) == {"security_protocol": "PLAINTEXT"}
    assert security_confluent(s) == {"security.protocol": "plaintext"}


SETTINGS = [
    {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
     "sasl_password": "p"},
    {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u",
     "sasl_password": "p", "ssl_check_hostname": False},
    "mtls",
]  # fmt: skip


def _settings(spec, pem):
    if spec == "mtls":
        return KafkaSettings(
            security_protocol="SSL",
            ssl_cafile=pem / "cert.pem",
            ssl_certfile=pem / "cert.pem",
            ssl_keyfile=pem / "key.pem",
            ssl_key_password="k3y",
        )
    return KafkaSettings(**spec)


@pytest.mark.parametrize("spec", SETTINGS, ids=["plain", "scram", "mtls"])
def test_kafka_python_knows_every_option(spec, pem):
    options = security_kafka_python(_settings(spec, pem))
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        unknown = set(options) - set(client.DEFAULT_CONFIG)
        assert not unknown, (client.__name__, unknown)


@pytest.mark.parametrize("spec", SETTINGS, ids=["plain", "scram", "mtls"])
def test_librdkafka_accepts_every_option(spec, pem):
    """librdkafka checks property names and values (and reads the PEM files) when a client is
    made, before any connection."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    conf = {"bootstrap.servers": "127.0.0.1:1", **security_confluent(_settings(spec, pem))}
    confluent_kafka.Producer(conf).flush(0)
    confluent_kafka.Consumer({**conf, "group.id": "g"}).close()
    with pytest.raises(confluent_kafka.KafkaException, match="No such configuration property"):
        confluent_kafka.Producer({**conf, "sasl.mechanismz": "PLAIN"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_mechanism: required with security_protocol"),
        ({"SASL_MECHANISM": "PLAIN"}, "security_protocol PLAINTEXT is not SASL_*"),
        (
            {"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "SCRAM-SHA-256",
             "SASL_USERNAME": "u"},
            "sasl_username and sasl_password: required by SCRAM-SHA-256",
        ),
        ({"SSL_CAFILE": "/ca.pem"}, "ssl_cafile: set, but security_protocol PLAINTEXT is not TLS"),
        (
            {"SECURITY_PROTOCOL": "SSL", "SSL_CERTFILE": "/c.pem"},
            "ssl_certfile and ssl_keyfile: give both",
        ),
        ({"SASL_MECHANISM": "GSSAPI"}, "kafka.sasl_mechanism: Input should be"),
    ],
)  # fmt: skip
def test_inconsistent_security_settings_are_named(env, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")) as info:
        load_settings(env={f"ONRAMP_KAFKA__{k}": v for k, v in env.items()})
    assert "kafka" in str(info.value)


def test_secrets_stay_masked(pem):
    s = load_settings(
        env={
            "ONRAMP_KAFKA__SECURITY_PROTOCOL": "SSL",
            "ONRAMP_KAFKA__SSL_CERTFILE": str(pem / "cert.pem"),
            "ONRAMP_KAFKA__SSL_KEYFILE": str(pem / "key.pem"),
            "ONRAMP_KAFKA__SSL_KEY_PASSWORD": "k3y",
        }
    )
    assert "k3y" not in repr(s) and s.kafka.ssl_key_password.get_secret_value() == "k3y"
