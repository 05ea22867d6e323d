"""The learner service's publishing, without Ray or Kafka: a stand-in consumer feeds it."""

from __future__ import annotations

import time
import types
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest

import ray_app.learn.service as service
from ray_app.model import cold_start_bundle
from ray_app.model.registry import ModelRegistry, served_rank
from ray_app.sim.v2 import GroundTruth
from tests.conftest import make_settings
from tests.unit.test_learn import CATALOG, SCHEMA, logged


class _Topic:
    """One partition of reward records and a consumer of it."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def consumer(self, *args: Any, **kwargs: Any) -> Any:
        topic = self

        class Consumer:
            def __init__(self) -> None:
                self.pos = 0

            def assign_at(self, offsets: dict) -> None:
                self.pos = max([o for (_, p), o in offsets.items() if p == 0] or [0])

            def poll(self, timeout_s: float = 0.2, max_records: int = 2000) -> list:
                out = [
                    types.SimpleNamespace(partition=0, offset=o, value=v)
                    for o, v in enumerate(topic.records)
                    if o >= self.pos
                ]
                self.pos = len(topic.records)
                return out

            def close(self) -> None:
                pass

        return Consumer()


@pytest.fixture
def topic(monkeypatch) -> _Topic:
    t = _Topic()
    monkeypatch.setattr(service, "make_consumer", t.consumer)
    return t


def _settings(tmp: Path, **env: str) -> Any:
    return make_settings(
        None, ONRAMP_STATE_DIR=str(tmp), ONRAMP_LEARN__PUBLISH_INTERVAL_S="0.01",
        ONRAMP_KAFKA__PARTITIONS="1", **env,
    )  # fmt: skip


def served_rank_of(data: bytes) -> tuple[int, int]:
    from ray_app.model.registry import read_header

    head = read_header(data) or {}
    return head.get("metadata", {}).get("promotion", 0), head.get("version", 0)


def _feed(s: Any, topic: _Topic, records: list) -> None:
    topic.records += [orjson.dumps(r.to_json()) for r in records]
    batch = s._consumer.poll()
    with s._lock:
        s._learn(batch)
        time.sleep(0.02)
        s._maybe_publish()


def test_a_promotion_the_learner_cannot_adopt_does_not_stop_its_publishes(tmp_path, topic):
    """A version promoted under an older catalog (the catalog gained an action since): the
    learner cannot adopt it, and every candidate used to be dropped for it, for ever, with no
    model file and no state written. It is remembered as not adoptable and the learner goes on
    publishing."""
    before = _settings(tmp_path)
    registry = ModelRegistry.from_settings(before)
    registry.register(cold_start_bundle(SCHEMA, CATALOG, seed=1))
    registry.promote(1, before.model_path, SCHEMA, CATALOG)
    promoted = before.model_path.read_bytes()
    text = resources.files("ray_app.catalog").joinpath("default.yaml").read_text()
    grown = text.replace(
        "      - template_gallery\n", "      - template_gallery\n      - webinar\n", 1
    )
    assert grown != text
    (tmp_path / "catalog.yaml").write_text(grown)
    after = _settings(tmp_path, ONRAMP_DECIDE__CATALOG_PATH=str(tmp_path / "catalog.yaml"))
    s = service.LearnerService(after, "stand-in")
    gt = GroundTruth(seed=4)
    for k in range(3):
        _feed(s, topic, logged(gt, k * 400, 400, seed=k))
    assert s.learner.counters["publishes"] >= 1
    assert after.model_path.read_bytes() != promoted, "the learner's candidate was written"
    assert after.learner_state_path.exists(), "and its state with the offsets"
    # ranked above the promotion: running replicas, which hold the promoted file, take it
    # (ranked below, they refused it while replicas started later loaded it)
    assert served_rank(after.model_path) > served_rank_of(promoted)


def test_the_state_is_written_before_the_model_file(tmp_path, topic, monkeypatch):
    """A crash between the two writes must not publish one version twice with two sets of
    weights: the state first (a crash then skips a version), the model file second."""
    written: list[str] = []
    real = service.write_file_atomically

    def recording(path: Path, data: bytes) -> None:
        written.append(Path(path).name)
        real(path, data)

    monkeypatch.setattr(service, "write_file_atomically", recording)
    settings = _settings(tmp_path)
    s = service.LearnerService(settings, "stand-in")
    _feed(s, topic, logged(GroundTruth(seed=5), 0, 400, seed=5))
    assert written[:2] == [settings.learner_state_path.name, settings.model_path.name]


def test_a_registry_that_fails_once_does_not_make_a_promotion_unadoptable(
    tmp_path, topic, monkeypatch
):
    """A passing registry error (an S3 hiccup) is tried again: the promotion is adopted on a
    later publish and the learner's candidate is not written over the promoted file meanwhile
    (one failure used to mark the promotion unadoptable for good)."""
    settings = _settings(tmp_path)
    s = service.LearnerService(settings, "stand-in")
    registry = s.registry
    registry.register(cold_start_bundle(SCHEMA, CATALOG, seed=3))
    registry.promote(1, settings.model_path, SCHEMA, CATALOG)
    promoted = settings.model_path.read_bytes()
    real = ModelRegistry.promoted_bundle
    fails = [1]

    def flaky(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if fails[0]:
            fails[0] -= 1
            raise OSError("S3 hiccup")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ModelRegistry, "promoted_bundle", flaky)
    gt = GroundTruth(seed=6)
    _feed(s, topic, logged(gt, 0, 400, seed=6))
    assert s._unadoptable_epoch is None
    assert settings.model_path.read_bytes() == promoted  # not written over meanwhile
    _feed(s, topic, logged(gt, 400, 400, seed=7))
    assert s.learner.lineage.get("promotion") == 1  # adopted on the next try


def test_a_promotion_of_another_feature_schema_does_not_stop_the_publishes(tmp_path, topic):
    """A promoted version whose metadata names another feature schema (a release changed the
    features since it was trained) is refused by the registry for good, not for this once: it
    used to be tried again at every publish, which dropped every candidate, so no model file and
    no state were written again."""
    settings = _settings(tmp_path)
    s = service.LearnerService(settings, "stand-in")
    s.registry.register(cold_start_bundle(SCHEMA, CATALOG, seed=3))
    s.registry.promote(1, None, SCHEMA, CATALOG)
    meta = tmp_path / "registry" / "versions" / "000001" / "meta.json"
    assert meta.exists(), sorted(p.name for p in tmp_path.rglob("*"))
    meta.write_bytes(meta.read_bytes().replace(SCHEMA.hash.encode(), b"an-older-schema"))
    gt = GroundTruth(seed=8)
    for k in range(2):
        _feed(s, topic, logged(gt, k * 400, 400, seed=k))
    assert s._unadoptable_epoch == 1
    assert settings.model_path.exists() and settings.learner_state_path.exists()
    assert served_rank(settings.model_path) > (1, 1)  # above the promotion replicas hold


def test_rewards_written_again_are_not_counted_again_in_the_rates_and_detectors(tmp_path, topic):
    """Reward records are written at least once (a stream worker's replay after a crash writes
    them again). The learner drops the copies, but the service used to count them again in its
    per-arm rates, its detectors and its outcome-to-weights latencies whenever the same poll
    also brought a new record."""
    settings = _settings(tmp_path)
    s = service.LearnerService(settings, "stand-in")
    gt = GroundTruth(seed=9)
    first = logged(gt, 0, 200, seed=9) + logged(gt, 300, 20, seed=11, arm="holdout")
    _feed(s, topic, first)
    assert s.arms["holdout"][0] == 20
    counted = {arm: list(c) for arm, c in s.arms.items()}
    fed = s.rate_drift.fed + s.rate_drift.held + s.rate_drift.late + s.rate_drift.timeouts
    vectors = s.feature_drift._ref_n + s.feature_drift._cur_n
    _feed(s, topic, [*first, *logged(gt, 200, 1, seed=10)])  # a replay, and one new record
    assert sum(c[0] for c in s.arms.values()) == sum(c[0] for c in counted.values()) + 1
    after = s.rate_drift.fed + s.rate_drift.held + s.rate_drift.late + s.rate_drift.timeouts
    assert after == fed + 1 and s.arms["holdout"][0] == 20
    # the feature-shift monitor too (its windows counted a replay's copies again)
    assert s.feature_drift._ref_n + s.feature_drift._cur_n == vectors + 1


def test_a_publish_that_cannot_be_written_is_tried_again_and_the_loop_goes_on(
    tmp_path, topic, monkeypatch
):
    """One ENOSPC while writing the state stopped the learner's loop for good: no publish and
    no learning until the whole stack was restarted. The publish is now counted as failed and
    tried again, with the same weights, at the next chance."""
    real = service.write_file_atomically
    failures = [OSError(28, "No space left on device")]

    def full_once(path: Path, data: bytes) -> None:
        if failures:
            raise failures.pop()
        real(path, data)

    monkeypatch.setattr(service, "write_file_atomically", full_once)
    settings = _settings(tmp_path)
    s = service.LearnerService(settings, "stand-in")
    _feed(s, topic, logged(GroundTruth(seed=6), 0, 400, seed=6))
    assert s.publish_failures == 1 and not settings.model_path.exists()
    time.sleep(0.02)
    with s._lock:
        s._maybe_publish()  # nothing new learned: the weights of the failed publish again
    assert settings.model_path.exists() and s.status()["publishFailures"] == 1


def test_a_promotion_made_while_the_state_is_written_is_not_overwritten(
    tmp_path, topic, monkeypatch
):
    """The learner checked the registry, then wrote its state (a second for a large one), then
    its model file: a promotion in between was overwritten on disk by a lower-ranked file,
    which replicas started later loaded. The learner now leaves the promoted file and adopts
    the promotion at its next publish."""
    settings = _settings(tmp_path)
    registry = ModelRegistry.from_settings(settings)
    registry.register(cold_start_bundle(SCHEMA, CATALOG, seed=2))
    s = service.LearnerService(settings, "stand-in")
    real = service.write_file_atomically

    def promote_meanwhile(path: Path, data: bytes) -> None:
        real(path, data)
        if Path(path) == settings.learner_state_path and registry.promoted() is None:
            registry.promote(1, settings.model_path, SCHEMA, CATALOG)

    monkeypatch.setattr(service, "write_file_atomically", promote_meanwhile)
    _feed(s, topic, logged(GroundTruth(seed=7), 0, 400, seed=7))
    assert served_rank(settings.model_path)[0] == 1, "the promoted file stays"
    time.sleep(0.02)
    with s._lock:
        s._maybe_publish()  # adopts the promotion, and publishes it under the learner's number
    assert s.learner.lineage.get("promotion") == 1
    assert served_rank(settings.model_path) == (1, s.learner.version)
