"""Topic management: Onramp's topics exist with the configured partition count."""

from __future__ import annotations

import logging
from typing import Any

from ray_app.config import KafkaSettings, Topics
from ray_app.errors import ConfigError, KafkaUnavailable

__all__ = ["TopicCounter", "Topics", "check_partitions", "ensure_topics", "list_topics"]

log = logging.getLogger(__name__)


def _admin(bootstrap: str, settings: KafkaSettings, timeout_s: float) -> Any:
    from kafka.admin import KafkaAdminClient

    from ray_app.kafka.client import _security_kafka_python

    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","),
            client_id="onramp-admin",
            request_timeout_ms=int(timeout_s * 1000),
            **_security_kafka_python(settings),
        )
    except Exception as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at {bootstrap}: {exc}", bootstrap=bootstrap
        ) from None


def list_topics(bootstrap: str, settings: KafkaSettings, timeout_s: float = 10.0) -> set[str]:
    """Names of the topics the cluster has."""
    admin = _admin(bootstrap, settings, timeout_s)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def check_partitions(admin: Any, names: list[str], settings: KafkaSettings) -> None:
    """Topics that exist must have ``kafka.partitions`` partitions: key -> partition is computed
    with that count (profile lookups, the reward join), so another count sends lookups to the
    wrong stream worker. A :class:`ConfigError` names each topic that differs."""
    if not names:
        return
    wrong = []
    for t in admin.describe_topics(names):
        name = t.get("name") or t.get("topic")
        if t.get("error_code", 0) == 0 and len(t["partitions"]) != settings.partitions:
            wrong.append(f"{name} has {len(t['partitions'])}")
    if wrong:
        raise ConfigError(
            f"existing topics do not match kafka.partitions={settings.partitions}: "
            + ", ".join(wrong)
            + " partitions. Set ONRAMP_KAFKA__PARTITIONS to their count, or use new topics "
            "(kafka.topic_prefix); Kafka cannot shrink a topic and growing one moves keys.",
            topics=wrong,
        )


def ensure_topics(
    bootstrap: str, settings: KafkaSettings, names: list[str] | None = None, timeout_s: float = 10.0
) -> list[str]:
    """Create the missing ones among Onramp's topics; return the names created.

    Idempotent: a topic that exists (or that another process creates meanwhile) is left alone,
    but must have ``settings.partitions`` partitions (:func:`check_partitions`).
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = names or Topics(settings.topic_prefix).all()
    admin = _admin(bootstrap, settings, timeout_s)
    try:
        missing = [n for n in names if n not in set(admin.list_topics())]
        created = []
        for name in missing:
            try:
                admin.create_topics(
                    [NewTopic(name, settings.partitions, settings.replication_factor)],
                    timeout_ms=int(timeout_s * 1000),
                )
                created.append(name)
            except TopicAlreadyExistsError:  # created by someone else meanwhile
                pass
        if created:
            log.info("created topics %s with %d partitions", created, settings.partitions)
        check_partitions(admin, [n for n in names if n not in created], settings)
        return created
    finally:
        admin.close()


class TopicCounter:
    """Counts the records in topics by reading them (the embedded broker's end offsets
    under-count, so reading is the one count that holds on every broker).

    ``counts()`` reads what arrived since the last call and returns running totals per topic.
    """

    def __init__(self, bootstrap: str, settings: KafkaSettings, topics: list[str]) -> None:
        from ray_app.kafka.client import make_consumer

        self._consumer = make_consumer(bootstrap, settings)
        self._totals = dict.fromkeys(topics, 0)
        self._consumer.assign([(t, p) for t in topics for p in range(settings.partitions)])

    def counts(self, max_s: float = 0.5) -> dict[str, int]:
        import time

        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            records = self._consumer.poll(timeout_s=0.05, max_records=10_000)
            if not records:
                break
            for r in records:
                self._totals[r.topic] = self._totals.get(r.topic, 0) + 1
        return dict(self._totals)

    def close(self) -> None:
        self._consumer.close()
