"""At start, existing topics must match kafka.partitions: a clear error names each one that
does not (key -> partition, and so profile lookups, depend on the count)."""

import uuid

import pytest

from ray_app.config import KafkaSettings
from ray_app.errors import ConfigError
from ray_app.kafka import ensure_topics

pytestmark = pytest.mark.integration


def test_partition_mismatch_is_a_clear_error(broker):
    prefix = f"tc{uuid.uuid4().hex[:6]}"
    s = KafkaSettings(partitions=3, topic_prefix=prefix)
    assert len(ensure_topics(broker.bootstrap, s)) == 5
    assert ensure_topics(broker.bootstrap, s) == []  # same count: fine, nothing created
    with pytest.raises(ConfigError) as info:
        ensure_topics(broker.bootstrap, s.model_copy(update={"partitions": 8}))
    msg = str(info.value)
    assert f"existing topics do not match kafka.partitions=8: {prefix}.events has 3" in msg
    assert f"{prefix}.rewards has 3 partitions" in msg and "ONRAMP_KAFKA__PARTITIONS" in msg
    # a partly created set: the missing topics are created, the existing one checked (same count)
    other = s.model_copy(update={"topic_prefix": f"{prefix}b"})
    ensure_topics(broker.bootstrap, other, [f"{prefix}b.events"])
    assert ensure_topics(broker.bootstrap, other) == [
        f"{prefix}b.events.dlq",
        f"{prefix}b.events.late",
        f"{prefix}b.decisions",
        f"{prefix}b.rewards",
    ]


def test_fewer_replicas_than_configured_is_a_clear_error(broker):
    """The embedded broker has one node: topics created with one replica are refused when the
    settings ask for two (less durability than configured), and retention cannot be verified
    there (Tansu reports no topic configs), which is logged, not refused."""
    prefix = f"tr{uuid.uuid4().hex[:6]}"
    s = KafkaSettings(partitions=2, topic_prefix=prefix, retention_ms=3_600_000)
    assert len(ensure_topics(broker.bootstrap, s)) == 5
    assert ensure_topics(broker.bootstrap, s) == []
    with pytest.raises(ConfigError) as info:
        ensure_topics(broker.bootstrap, s.model_copy(update={"replication_factor": 2}))
    msg = str(info.value)
    assert f"{prefix}.events has 1 replica per partition (kafka.replication_factor=2)" in msg
    assert f"{prefix}.rewards has 1 replica" in msg
