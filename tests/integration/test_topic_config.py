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


def test_the_supervisor_notices_topics_whose_partitions_no_longer_match(broker, caplog):
    """Grown after the start (kafka-topics --alter), a topic sends some users' events to
    partitions no worker reads, which nothing noticed: the supervisor's monitor checks the
    counts every minute and logs it at ERROR once, and again when it is mended."""
    import logging

    from ray_app.stream import StreamSupervisor
    from tests.conftest import make_settings

    prefix = f"tg{uuid.uuid4().hex[:6]}"
    settings = make_settings(
        broker.bootstrap, ONRAMP_KAFKA__TOPIC_PREFIX=prefix, ONRAMP_KAFKA__PARTITIONS="2"
    )
    ensure_topics(broker.bootstrap, settings.kafka)
    sup = StreamSupervisor(settings, broker.bootstrap, workers=1)
    assert sup.check_topics() is None
    grown = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"partitions": 3})}
    )
    sup.settings = grown  # as if the topics had 2 partitions more than the run hashes over
    with caplog.at_level(logging.ERROR, logger="ray_app.stream.supervisor"):
        problem = sup.check_topics()
        assert sup.check_topics() == problem  # said once
    assert problem is not None and f"{prefix}.events has 2" in problem
    assert [r.getMessage() for r in caplog.records].count(
        f"{problem}: events of some users are not read"
    ) == 1
    # on /metrics (from the supervisor's status, every worker's entry), for an alert rule
    from ray_app.telemetry.stream import stream_metrics_text

    worker = {"worker": "w0", "partitions": {}, "freshnessBucketsMs": [10],
              "freshnessCounts": [0, 0], "freshnessSumMs": 0.0}  # fmt: skip
    text = stream_metrics_text([{**worker, "topicProblem": problem}])
    assert "onramp_stream_topic_partitions_mismatch 1" in text
    sup.settings = settings
    assert sup.check_topics() is None and sup.topic_problem is None
    assert "onramp_stream_topic_partitions_mismatch 0" in stream_metrics_text([worker])
