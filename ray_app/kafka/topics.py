"""Topic management: Onramp's topics exist with the configured partitions, replication and
retention."""

from __future__ import annotations

import logging
from typing import Any

from ray_app.config import KafkaSettings, Topics
from ray_app.errors import ConfigError, KafkaUnavailable

__all__ = [
    "TopicCounter",
    "Topics",
    "check_partitions",
    "check_topics",
    "ensure_topics",
    "list_topics",
    "verify_topics",
]

log = logging.getLogger(__name__)


def _admin(bootstrap: str, settings: KafkaSettings, timeout_s: float) -> Any:
    from kafka.admin import KafkaAdminClient

    from ray_app.kafka.security import security_kafka_python

    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","),
            client_id="onramp-admin",
            request_timeout_ms=int(timeout_s * 1000),
            # the first connection too: its default (30 s) held the stream supervisor's monitor,
            # and the worker restarts it runs, for 30 s a minute while Kafka was unreachable
            bootstrap_timeout_ms=int(timeout_s * 1000),
            **security_kafka_python(settings),
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


def verify_topics(
    bootstrap: str, settings: KafkaSettings, names: list[str], timeout_s: float = 10.0
) -> None:
    """The partition counts of those of ``names`` the cluster has (a reader of topics that
    would read ``kafka.partitions`` partitions of each: another count leaves some unread).
    :class:`KafkaUnavailable` when the cluster does not answer."""
    admin = _admin(bootstrap, settings, timeout_s)
    try:
        try:
            existing = set(admin.list_topics())
        except Exception as exc:
            raise KafkaUnavailable(
                f"cannot list the topics of Kafka at {bootstrap}: {exc}", bootstrap=bootstrap
            ) from None
        # a reader reads kafka.partitions of each: only their count matters to it (a longer
        # retention or more replicas than configured are no reason not to read)
        check_topics(admin, [n for n in names if n in existing], settings, partitions_only=True)
    finally:
        admin.close()


def check_topics(
    admin: Any, names: list[str], settings: KafkaSettings, partitions_only: bool = False
) -> None:
    """Existing topics must fit the settings, else a :class:`ConfigError` names each one that
    does not and how:

    * ``kafka.partitions`` partitions: key -> partition is computed with that count (profile
      lookups, the reward join), so another count sends lookups to the wrong stream worker;
    * at least ``kafka.replication_factor`` replicas per partition (fewer is less durability
      than configured);
    * ``retention.ms`` equal to ``kafka.retention_ms`` when that is set and the broker reports
      the topic's configuration (the embedded broker reports none: then it is logged as
      unverified, not refused).

    >>> class Admin:  # what kafka-python's KafkaAdminClient answers
    ...     def describe_topics(self, names):
    ...         return [{"name": n, "error_code": 0,
    ...                  "partitions": [{"replica_nodes": [1]}] * 2} for n in names]
    ...     def describe_configs(self, resources, config_filter="modified"):  # kafka-python's shape
    ...         return {"topic": {"t": {"retention.ms": {"value": "1000", "config_source": "x"}}}}
    >>> check_topics(Admin(), ["t"], KafkaSettings(partitions=2))
    >>> check_topics(Admin(), ["t"], KafkaSettings(partitions=2, replication_factor=3,
    ...                                            retention_ms=5000))
    Traceback (most recent call last):
    ...
    ray_app.errors.ConfigError: existing topics do not match the settings: t has 1 replica per partition (kafka.replication_factor=3); t has retention.ms=1000 (kafka.retention_ms=5000). ...
    >>> check_topics(Admin(), ["t"], KafkaSettings(partitions=2, replication_factor=3,
    ...                                            retention_ms=5000), partitions_only=True)

    ``partitions_only``: the first check alone (what a reader of the topics needs).
    """
    if not names:
        return
    wrong_partitions: list[str] = []
    problems: list[str] = []
    for t in admin.describe_topics(names):
        name = t.get("name") or t.get("topic")
        if t.get("error_code", 0) != 0:
            continue
        parts = t["partitions"]
        if len(parts) != settings.partitions:
            wrong_partitions.append(f"{name} has {len(parts)}")
        replicas = min((len(p.get("replica_nodes") or p.get("replicas") or []) for p in parts),
                       default=0)  # fmt: skip
        if parts and replicas < settings.replication_factor and not partitions_only:
            problems.append(
                f"{name} has {replicas} replica{'s' if replicas != 1 else ''} per partition "
                f"(kafka.replication_factor={settings.replication_factor})"
            )
    if settings.retention_ms is not None and not partitions_only:
        problems += _retention_problems(admin, names, settings.retention_ms)
    if wrong_partitions:
        raise ConfigError(
            f"existing topics do not match kafka.partitions={settings.partitions}: "
            + ", ".join(wrong_partitions)
            + " partitions. Use new topics (kafka.topic_prefix) with a new checkpoint store "
            "(stream.checkpoint_uri), or, if no stream has checkpointed these topics yet, set "
            "ONRAMP_KAFKA__PARTITIONS to their count (checkpoints written under another count "
            "are refused); Kafka cannot shrink a topic and growing one moves keys.",
            topics=wrong_partitions,
        )
    if problems:
        raise ConfigError(
            "existing topics do not match the settings: "
            + "; ".join(problems)
            + ". Change the topics (kafka-configs / kafka-reassign-partitions) or the settings, "
            "or use new topics (kafka.topic_prefix).",
            topics=problems,
        )


def _retention_problems(admin: Any, names: list[str], want: int) -> list[str]:
    from kafka.admin import ConfigResource, ConfigResourceType

    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    try:
        # every value, not only those set on the topic: a topic at the broker's default
        # retention has it too (the default filter, "modified", left it out: never refused)
        try:
            reported = admin.describe_configs(resources, config_filter="all")
        except TypeError:  # an admin without the filter
            reported = admin.describe_configs(resources)
    except Exception as exc:  # an ACL may forbid DescribeConfigs: say so, do not refuse
        log.warning("cannot verify retention.ms of %s: %s", names, exc)
        return []
    by_topic = reported.get("topic", {}) if isinstance(reported, dict) else {}
    out = []
    for n in names:
        value = _config_value((by_topic.get(n) or {}).get("retention.ms"))
        if value is None:
            log.warning("the broker reports no retention.ms for %s: not verified", n)
        elif value != want:
            out.append(f"{n} has retention.ms={value} (kafka.retention_ms={want})")
    return out


def _config_value(entry: Any) -> int | None:
    """A config's value as kafka-python reports it (text, or ``{"value": text, ...}``) as an
    int; None when absent or not a number.

    >>> _config_value({"value": "1000", "config_source": "DYNAMIC_TOPIC_CONFIG"}), _config_value("7")
    (1000, 7)
    >>> _config_value(None), _config_value({"value": None})
    (None, None)
    """
    if isinstance(entry, dict):
        entry = entry.get("value")
    try:
        return None if entry is None else int(entry)
    except (TypeError, ValueError):
        return None


#: The former name (partitions were all it checked).
check_partitions = check_topics


def ensure_topics(
    bootstrap: str, settings: KafkaSettings, names: list[str] | None = None, timeout_s: float = 10.0
) -> list[str]:
    """Create the missing ones among Onramp's topics; return the names created.

    Idempotent: a topic that exists (or that another process creates meanwhile) is left alone,
    but must fit the settings (:func:`check_topics`).
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
                configs = (
                    {"retention.ms": str(settings.retention_ms)}
                    if settings.retention_ms is not None
                    else {}
                )
                admin.create_topics(
                    [
                        NewTopic(
                            name,
                            settings.partitions,
                            settings.replication_factor,
                            topic_configs=configs,
                        )
                    ],
                    timeout_ms=int(timeout_s * 1000),
                )
                created.append(name)
            except TopicAlreadyExistsError:  # created by someone else meanwhile
                pass
        if created:
            log.info("created topics %s with %d partitions", created, settings.partitions)
        check_topics(admin, [n for n in names if n not in created], settings)
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
