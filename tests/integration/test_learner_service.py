"""The online learner against the real broker: reads onramp.rewards, publishes model files the
decision replicas can load, and resumes after a restart from its saved offsets and weights."""

import dataclasses
import time

import orjson
import pytest

from ray_app.kafka import OutRecord, ensure_topics, make_producer
from ray_app.learn.service import LearnerService
from ray_app.model import ModelBundle
from ray_app.sim.v2 import GroundTruth
from tests.conftest import make_settings
from tests.unit.test_learn import CATALOG, SCHEMA, logged

pytestmark = pytest.mark.integration


def _send(broker, settings, records):
    producer = make_producer(broker.bootstrap, settings.kafka)
    producer.send_all(
        [
            OutRecord(settings.topics.rewards, orjson.dumps(r.to_json()), key=r.user_key.encode())
            for r in records
        ]
    ).result(timeout=60)
    producer.close()


def _wait(service, predicate, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = service.status()
        if predicate(st):
            return st
        time.sleep(0.2)
    raise AssertionError(f"timed out; last status {st}")


def _settings(broker, tmp_path, prefix, publish_interval_s="0.3"):
    """Settings of a learner on its own topics (``prefix``), created, and state in ``tmp_path``."""
    settings = make_settings(
        broker.bootstrap,
        ONRAMP_KAFKA__TOPIC_PREFIX=prefix,
        ONRAMP_STATE_DIR=str(tmp_path),
        ONRAMP_LEARN__PUBLISH_INTERVAL_S=publish_interval_s,
    )
    ensure_topics(broker.bootstrap, settings.kafka)
    return settings


def _run_until(service, predicate, timeout_s=60):
    """Start ``service``, wait for ``predicate`` of its status, stop it (whatever happened);
    the status ``stop`` returns."""
    service.start()
    try:
        _wait(service, predicate, timeout_s)
    finally:
        st = service.stop()
    return st


def test_learner_publishes_and_resumes_where_it_stopped(broker, tmp_path):
    settings = _settings(broker, tmp_path, "learner-it")
    gt = GroundTruth(seed=4)
    first = logged(gt, 0, 3_000, seed=1)
    _send(broker, settings, first)
    service = LearnerService(settings, broker.bootstrap)
    st = _run_until(service, lambda s: s["counters"]["received"] >= 3_000 and s["version"] >= 1)
    assert st["error"] is None and st["invalid"] == 0
    offsets = st["offsets"]
    assert sum(offsets.values()) == 3_000
    published = ModelBundle.from_bytes(settings.model_path.read_bytes(), SCHEMA, CATALOG)
    assert published.version == st["version"] >= 1
    assert published.metadata["kind"] == "online"
    assert settings.learner_state_path.exists()

    # a restart resumes from the saved offsets: the old records are not read again, a resent
    # copy of them is recognised by decision id, new ones are learned
    second = logged(gt, 3_000, 1_000, seed=2)
    _send(broker, settings, first[:500] + second)
    again = LearnerService(settings, broker.bootstrap)
    assert again.status()["resumedFrom"] == offsets
    assert again.learner.version == st["version"]
    st2 = _run_until(
        again, lambda s: s["counters"]["received"] >= 4_500 and s["version"] > st["version"]
    )
    assert st2["counters"]["duplicates"] - st["counters"]["duplicates"] == 500
    assert st2["counters"]["received"] == 4_500
    assert sum(st2["offsets"].values()) == 4_500


def test_learner_starts_from_the_promoted_version_and_follows_promotions(broker, tmp_path):
    import torch

    from ray_app.model import cold_start_bundle
    from ray_app.model.registry import ModelRegistry

    settings = _settings(broker, tmp_path, "learner-reg")
    registry = ModelRegistry.from_settings(settings)
    registry.register(cold_start_bundle(SCHEMA, CATALOG, seed=1))
    registry.register(cold_start_bundle(SCHEMA, CATALOG, seed=2))
    registry.promote(1, settings.model_path, SCHEMA, CATALOG)
    service = LearnerService(settings, broker.bootstrap)  # no learner state: the promoted one
    assert service.learner.version == 1
    assert service.learner.lineage == {"promotion": 1, "registryVersion": 1}
    one = registry.load(1, SCHEMA, CATALOG).scorer.state_dict()
    assert all(torch.equal(one[k], v) for k, v in service.learner.scorer.state_dict().items())
    service.start()
    try:
        registry.promote(2, settings.model_path, SCHEMA, CATALOG)  # while it runs
        _wait(service, lambda s: s["version"] == 2, timeout_s=30)
        _send(broker, settings, logged(GroundTruth(seed=4), 0, 500, seed=1))
        _wait(service, lambda s: s["version"] >= 3)
    finally:
        st = service.stop()
    assert st["error"] is None
    published = ModelBundle.from_bytes(settings.model_path.read_bytes(), SCHEMA, CATALOG)
    # the learner's publish builds on promotion 2, so replicas take it after the promotion
    assert published.serving_rank[0] == 2 and published.version == st["version"] >= 3
    assert published.metadata["registryVersion"] == 2


def test_a_model_file_from_another_world_is_dropped_for_the_cold_start(broker, tmp_path, caplog):
    """Started from a model file (no learner state), the service's learner settles on it; the
    first rewards show it was learned elsewhere (here: users who complete what it ranks last),
    so it goes back to the cold start, counts it, and its next model file says why."""
    import logging

    from ray_app.learn import LearnerConfig, OnlineLearner
    from ray_app.model import cold_start_bundle
    from ray_app.model.registry import read_header

    settings = _settings(broker, tmp_path, "learner-foreign", "1")  # 5 polls a publish
    gt = GroundTruth(seed=4)
    elsewhere = OnlineLearner(cold_start_bundle(SCHEMA, CATALOG), LearnerConfig(warmup_rewards=0))
    elsewhere.learn(logged(gt, 0, 2_000, seed=1))
    trained = elsewhere.maybe_publish(now=1e9)
    assert trained is not None
    settings.model_path.parent.mkdir(parents=True, exist_ok=True)
    settings.model_path.write_bytes(trained.to_bytes())
    _send(broker, settings, logged(gt, 2_000, 1_500, seed=2, flip=True))
    service = LearnerService(settings, broker.bootstrap)
    assert service.learner.version == trained.version  # it starts from the file
    said: list[object] = []

    def restarted(st: dict) -> bool:  # the model file of every publish, as replicas read it
        meta = read_header(settings.model_path.read_bytes()).get("metadata") or {}
        said.append(meta.get("restarted"))
        return st["counters"]["foreign_weights"] == 1 and "foreign_weights" in said

    with caplog.at_level(logging.WARNING, "ray_app.learn.learner"):
        st = _run_until(service, restarted)
    assert st["error"] is None and st["counters"]["drifts"] == 0
    assert st["settleInformation"] < 0.01 and st["settleFactor"] == 1.0
    assert "learned elsewhere, the learner restarts from the cold-start weights" in caplog.text


def test_rewards_of_another_feature_schema_are_invalid_and_the_learner_goes_on(broker, tmp_path):
    """After an upgrade that changes the features (512 -> 2,048 hash buckets), a learner that
    started cold reads the rewards topic from its start: rewards decided under the old schema
    carry shorter vectors. They are counted invalid, and neither the learner nor its feature
    drift check stops on them, in batches of either width or of both."""
    settings = _settings(broker, tmp_path, "learner-widths")
    gt = GroundTruth(seed=5)
    records = logged(gt, 0, 1_600, seed=3)
    old_width = SCHEMA.dim - 1_536  # the vector of 512 buckets
    old = [dataclasses.replace(r, features=r.features[:old_width]) for r in records[:400]]
    mixed = old[:200] + records[400:1_000] + old[200:] + records[1_000:]  # widths interleaved
    _send(broker, settings, mixed)
    service = LearnerService(settings, broker.bootstrap)
    st = _run_until(service, lambda s: s["counters"]["received"] >= 1_600 and s["version"] >= 1)
    assert st["error"] is None
    assert st["counters"]["invalid"] == 400
    assert st["counters"]["trained"] == 1_200
