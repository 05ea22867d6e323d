"""TLS and SASL settings (``kafka.security_protocol``, ``sasl_*``, ``ssl_*``) in each client
library's own configuration keys."""

from __future__ import annotations

from typing import Any

from ray_app.config import KafkaSettings

__all__ = ["security_confluent", "security_kafka_python"]


def security_kafka_python(s: KafkaSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"security_protocol": s.security_protocol}
    if s.sasl_mechanism:
        out["sasl_mechanism"] = s.sasl_mechanism
        out["sasl_plain_username"] = s.sasl_username
        out["sasl_plain_password"] = s.sasl_password.get_secret_value() if s.sasl_password else None
    if s.ssl_cafile:
        out["ssl_cafile"] = str(s.ssl_cafile)
    if s.ssl_certfile:
        out["ssl_certfile"] = str(s.ssl_certfile)
        out["ssl_keyfile"] = str(s.ssl_keyfile)
    if s.ssl_key_password is not None:
        out["ssl_password"] = s.ssl_key_password.get_secret_value()
    if s.security_protocol.endswith("SSL"):
        out["ssl_check_hostname"] = s.ssl_check_hostname
    return out


def security_confluent(s: KafkaSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"security.protocol": s.security_protocol.lower()}
    if s.sasl_mechanism:
        out["sasl.mechanisms"] = s.sasl_mechanism
        out["sasl.username"] = s.sasl_username or ""
        out["sasl.password"] = s.sasl_password.get_secret_value() if s.sasl_password else ""
    if s.ssl_cafile:
        out["ssl.ca.location"] = str(s.ssl_cafile)
    if s.ssl_certfile:
        out["ssl.certificate.location"] = str(s.ssl_certfile)
        out["ssl.key.location"] = str(s.ssl_keyfile)
    if s.ssl_key_password is not None:
        out["ssl.key.password"] = s.ssl_key_password.get_secret_value()
    if s.security_protocol.endswith("SSL"):
        out["ssl.endpoint.identification.algorithm"] = "https" if s.ssl_check_hostname else "none"
    return out
