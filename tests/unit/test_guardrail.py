"""The guardrail against the static flow: a model worse than the control arm is rolled back to the
last weights that beat control (or the cold start), exploration is raised, old decisions do not
fire it again, and equal arms do not fire it."""

from __future__ import annotations

import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ray_app.learn import LearnerConfig, OnlineLearner, RewardRecord
from ray_app.learn.guardrail import ControlGuardrail
from ray_app.model import ModelBundle, cold_start_bundle
from tests.unit.test_learn import CATALOG, SCHEMA

X = SCHEMA.featurize(None).tolist()
SLOT = CATALOG.slot("next_step")


class Traffic:
    """Reward records of treatment and control users with given completion rates."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.n = 0

    def records(
        self, n: int, treatment: float, control: float, version: int, share: float = 0.5
    ) -> list[RewardRecord]:
        out = []
        for _ in range(n):
            self.n += 1
            arm = "treatment" if self.rng.random() < share else "control"
            rate = treatment if arm == "treatment" else control
            reward = float(self.rng.random() < rate)
            a = self.rng.randrange(1, SLOT.size)
            out.append(
                RewardRecord(
                    decision_id=f"d{self.n}",
                    user_key=f"u{self.n}",
                    slot="next_step",
                    action=SLOT.actions[a].id,
                    action_index=a,
                    arm=arm,
                    propensity=0.5,
                    features=X,
                    reward=reward,
                    outcome="completed" if reward else "abandoned",
                    decided_at_ms=self.n * 100,
                    outcome_at_ms=self.n * 100 + 1_000,
                    model_version=0 if arm == "control" else version,
                )
            )
        return out


def new_learner(bundle: ModelBundle | None = None, **config: object) -> OnlineLearner:
    """A learner that publishes whenever asked and trains fast (no replay: what it learns
    from these rewards does not matter here)."""
    config.setdefault("warmup_rewards", 0)
    config.setdefault("publish_interval_s", 0.0)
    config.setdefault("replay_size", 0)
    return OnlineLearner(
        bundle or cold_start_bundle(SCHEMA, CATALOG),
        LearnerConfig(**config),  # type: ignore[arg-type]
    )


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weights(x: ModelBundle | OnlineLearner) -> dict[str, torch.Tensor]:
    return x.scorer.state_dict()


# ------------------------------------------------------------------------------- the test alone


def test_fires_on_a_treatment_worse_than_control_and_needs_fresh_samples_after():
    g = ControlGuardrail()
    traffic = Traffic(1)
    g.update(traffic.records(700, 0.3, 0.6, version=4))
    c = g.compare()
    assert c.enough and c.fires and not c.beats and c.z is not None and c.z < -3.09
    assert c.treatment_rate == pytest.approx(0.3, abs=0.07)
    assert c.control_rate == pytest.approx(0.6, abs=0.07)
    g.restart(min_version=5)  # the rollback was published as version 5
    g.update(traffic.records(4_000, 0.3, 0.6, version=4))  # late rewards of the bad version
    c = g.compare()
    assert not c.fires and c.treatment_n == 0 and c.control_n == 2_000 and g.stale > 1_900
    g.update(traffic.records(400, 0.3, 0.6, version=5))
    assert g.compare().treatment_n < 300 and not g.compare().fires  # not enough yet
    g.update(traffic.records(400, 0.3, 0.6, version=5))
    assert g.compare().fires


def test_minimum_samples_windows_and_arms():
    g = ControlGuardrail(window=500, control_window=400, min_treatment=300, min_control=100)
    traffic = Traffic(2)
    g.update(traffic.records(150, 0.0, 1.0, version=0, share=0.0))  # control only
    assert not g.compare().enough and g.compare().z is None
    g.update(traffic.records(299, 0.0, 1.0, version=0, share=1.0))
    assert not g.compare().fires  # 299 treatment rewards: cannot judge
    g.update(traffic.records(1, 0.0, 1.0, version=0, share=1.0))
    assert g.compare().fires
    g.update(traffic.records(2_000, 0.5, 0.5, version=0))
    c = g.compare()
    assert (c.treatment_n, c.control_n) == (500, 400)  # sliding windows
    # the holdout and a second model arm (another model file) are not treatment
    other = [
        SimpleNamespace(arm=a, reward=0.0, model_version=9) for a in ("holdout", "treatment_b")
    ]
    g.update(other * 1_000)
    assert g.compare() == c
    for bad in ({"window": 0}, {"min_treatment": 600, "window": 500}, {"z": 0.0}):
        with pytest.raises(ValueError):
            ControlGuardrail(**bad)  # type: ignore[arg-type]
    again = pickle.loads(pickle.dumps(g))
    assert again.compare() == c
    fresh = ControlGuardrail(window=500, control_window=400)
    fresh.load_state(g.state_dict())
    assert fresh.compare() == c


def test_equal_arms_do_not_fire():
    """Both arms at the same rate, the test repeated every 50 rewards as the learner's publishes
    do: no firing in 60 runs of 4,000 users (about 120k looks), at three rates."""
    fired = 0
    for seed in range(60):
        g = ControlGuardrail()
        traffic = Traffic(1_000 + seed)
        rate = (0.2, 0.5, 0.8)[seed % 3]
        for _ in range(80):
            g.update(traffic.records(50, rate, rate, version=1))
            fired += g.compare().fires
    assert fired == 0
    # and a treatment a little better than control never fires
    g = ControlGuardrail()
    traffic = Traffic(7)
    for _ in range(400):
        g.update(traffic.records(50, 0.62, 0.6, version=1))
        assert not g.compare().fires


# ------------------------------------------------------------------------------ in the learner


@pytest.mark.slow
def test_a_model_below_control_is_rolled_back_to_the_last_weights_that_beat_it():
    traffic = Traffic(3)
    learner = new_learner(boost_rewards=1_000, epsilon=0.05, boost_epsilon=0.5)
    published: dict[int, ModelBundle] = {}

    def publish(now: float) -> ModelBundle:
        bundle = learner.maybe_publish(now=now)
        assert bundle is not None
        published[bundle.version] = bundle
        return bundle

    # version 1: some training, no control rewards yet: nothing to compare
    learner.learn(traffic.records(200, 0.6, 0.6, version=0, share=1.0))
    v1 = publish(1.0)
    assert v1.metadata["control"]["enough"] is False and learner.beat_control_version is None
    # version 1 serves, treatment does better than control: its weights are the snapshot
    learner.learn(traffic.records(1_000, 0.7, 0.6, version=1))
    v2 = publish(2.0)
    assert v2.metadata["control"]["beats"] and learner.beat_control_version == 1
    assert not same_weights(weights(v2), weights(v1))  # version 2 was trained further
    # version 2 is much worse than control
    learner.learn(traffic.records(1_500, 0.3, 0.6, version=2))
    rolled = publish(3.0)
    meta = rolled.metadata
    assert meta["rollback"] == "below_control" and meta["rolled_back"] is True
    assert meta["rolled_back_to"] == "version 1" and meta["control"]["fires"]
    assert meta["control"]["z"] < -3.09 and meta["control_rollbacks"] == 1
    assert rolled.version == 3 and same_weights(weights(rolled), weights(v1))
    assert same_weights(weights(learner), weights(v1))  # back in the trainer too
    assert learner.counters["control_rollbacks"] == 1 and learner.counters["rollbacks"] == 0
    # exploration raised (published with the bundle) for boost_rewards trained rewards
    assert meta["epsilon"] == 0.5 and learner.exploration() == 0.5 and learner.boost_left == 1_000
    assert learner.control is not None and learner.control.min_version == 3
    assert learner.beat_control_version is None  # the snapshot is used once
    # late rewards of version 2's decisions do not fire it again
    learner.learn(traffic.records(300, 0.3, 0.6, version=2))
    assert learner.exploration() == 0.5 and 0 < learner.boost_left < 1_000
    # nor do the decisions of the boosted version 3: exploring costs completions on purpose
    learner.learn(traffic.records(700, 0.3, 0.6, version=3)[:400])
    assert learner.control.compare().treatment_n > 150 and learner.exploration() == 0.5
    paused = learner.maybe_publish(now=3.5)
    assert (
        paused is not None
        and paused.metadata["control"]["paused"]
        and not paused.metadata["rolled_back"]
    )
    learner.learn(traffic.records(1_200, 0.3, 0.6, version=2))
    assert learner.exploration() == 0.05 and learner.boost_left == 0  # over after 1,000 rewards
    calm = learner.maybe_publish(now=4.0)  # the first version at the base epsilon
    assert calm is not None and calm.version == 5 and calm.metadata["epsilon"] == 0.05
    assert not calm.metadata["rolled_back"] and learner.counters["control_rollbacks"] == 1
    assert learner.control.min_version == 5 and learner.control.compare().treatment_n == 0
    # the restored weights fire again (on their own decisions): no snapshot left, cold start
    learner.learn(traffic.records(900, 0.3, 0.6, version=5))
    again = learner.maybe_publish(now=5.0)
    assert again is not None and again.metadata["rolled_back_to"] == "cold_start"
    assert same_weights(weights(again), weights(cold_start_bundle(SCHEMA, CATALOG)))
    assert learner.counters["control_rollbacks"] == 2


def test_exploring_on_purpose_does_not_fire_it():
    """The warm-up of a cold start explores at 0.5: its decisions do worse than control by
    design; the comparison waits for the first version served at the base epsilon."""
    traffic = Traffic(8)
    learner = new_learner(warmup_rewards=1_000, epsilon=0.05, boost_epsilon=0.5)
    for k in range(10):  # every reward trained on: the warm-up ends with the tenth batch
        learner.learn(traffic.records(100, 0.4, 0.6, version=learner.version))
        bundle = learner.maybe_publish(now=float(k))
        assert bundle is not None and not bundle.metadata["rolled_back"]
    assert learner.exploration() == 0.05 and learner.control is not None
    assert learner.control.min_version == learner.version  # restarted on the first calm version
    learner.learn(traffic.records(900, 0.4, 0.6, version=learner.version))
    assert learner.maybe_publish(now=20.0).metadata["rollback"] == "below_control"  # type: ignore[union-attr]


def test_without_weights_that_beat_control_it_rolls_back_to_the_cold_start():
    trained = cold_start_bundle(SCHEMA, CATALOG, seed=4)  # stands for a model of another world
    trained.version, trained.metadata = 40, {"kind": "online"}
    cold = cold_start_bundle(SCHEMA, CATALOG)
    learner = OnlineLearner(
        trained,
        LearnerConfig(publish_interval_s=0.0, warmup_rewards=0, replay_size=0),
        cold_start=cold,
    )
    traffic = Traffic(4)
    learner.learn(traffic.records(1_000, 0.3, 0.6, version=40))
    rolled = learner.maybe_publish(now=1.0)
    assert rolled is not None and rolled.version == 41
    assert rolled.metadata["rolled_back_to"] == "cold_start"
    assert same_weights(weights(rolled), weights(cold))
    assert learner.exploration() == learner.config.boost_epsilon
    # a cold start of another shape is refused
    with pytest.raises(ValueError, match="architecture"):
        learner.set_cold_start(cold_start_bundle(SCHEMA, CATALOG, hidden=8))
    # without one, a learner from a cold-start bundle rolls back to its initial weights
    plain = new_learner(cold_start_bundle(SCHEMA, CATALOG, seed=2))
    plain.learn(traffic.records(1_000, 0.3, 0.6, version=0))
    bundle = plain.maybe_publish(now=1.0)
    assert bundle is not None and bundle.metadata["rolled_back_to"] == "cold_start"
    assert same_weights(weights(bundle), weights(cold_start_bundle(SCHEMA, CATALOG, seed=2)))


def test_equal_arms_do_not_roll_the_learner_back_and_it_can_be_turned_off():
    traffic = Traffic(5)
    learner = new_learner()
    for k in range(30):
        learner.learn(traffic.records(100, 0.55, 0.55, version=learner.version))
        learner.maybe_publish(now=float(k))
    assert learner.counters["control_rollbacks"] == 0
    assert learner.last_control is not None and learner.last_control.enough
    off = new_learner(control_z=0.0)
    off.learn(traffic.records(1_000, 0.1, 0.9, version=0))
    bundle = off.maybe_publish(now=1.0)
    assert off.control is None and bundle is not None and bundle.metadata["control"] is None
    assert not bundle.metadata["rolled_back"]
    for bad in ({"control_z": -1.0}, {"control_window": 200}, {"control_arm": "treatment"}):
        with pytest.raises(ValueError):
            LearnerConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_comparison_and_the_snapshot_survive_a_restart():
    traffic = Traffic(6)
    learner = new_learner()
    learner.learn(traffic.records(1_000, 0.7, 0.6, version=0))
    assert learner.maybe_publish(now=1.0) is not None
    learner.learn(traffic.records(500, 0.7, 0.6, version=1))
    assert learner.maybe_publish(now=2.0) is not None
    assert learner.beat_control_version == 1
    restored = OnlineLearner.from_bytes(learner.to_bytes(), learner.config)
    assert restored.beat_control_version == 1
    assert restored.control is not None and learner.control is not None
    assert restored.control.compare() == learner.control.compare()
    assert same_weights(restored._beat_control[1], learner._beat_control[1])  # type: ignore[index]
    assert restored._fallback_kind == "cold_start"
    # both roll back to the same weights
    bad = traffic.records(1_500, 0.2, 0.6, version=2)
    a, b = learner, restored
    a.learn(bad)
    b.learn(bad)
    pa, pb = a.maybe_publish(now=3.0), b.maybe_publish(now=3.0)
    assert pa is not None and pb is not None and pa.metadata["rolled_back_to"] == "version 1"
    assert same_weights(weights(pa), weights(pb))
    x = np.array([X], dtype=np.float32)
    assert np.array_equal(a.scores(x, "next_step"), b.scores(x, "next_step"))


def test_a_change_of_the_world_is_not_a_gap_between_the_arms():
    """Both arms at 0.6, then both at 0.4 (the world changed). After the drift restart the
    treatment window holds only the new world's rewards; control's last 2,000 reached back into
    the old one, and the test fired at z < -3 on arms that were equal all along. Control is now
    taken over the same decisions' time as treatment."""
    traffic = Traffic(seed=3)
    g = ControlGuardrail()
    g.update(traffic.records(4_000, 0.6, 0.6, version=1))
    g.restart(min_version=2)  # the learner restarted at the change, publishing version 2
    g.update(traffic.records(1_000, 0.4, 0.4, version=2))
    c = g.compare()
    assert c.enough and not c.fires, c
    assert c.control_n < 2_000  # the old world's control rewards are left out
    assert abs(c.control_rate - 0.4) < 0.06  # type: ignore[operator]
    # saved and restored, the decision times come along (and a state saved before them reads)
    h = ControlGuardrail()
    h.load_state(g.state_dict())
    assert h.compare() == c
    h.load_state({"treatment": [0.0] * 300, "control": [1.0] * 100, "min_version": 0})
    assert h.compare().fires


def _rates(
    start: int, n: int, rate: float, arms: tuple[str, ...] = ("treatment",), version: int = 1
) -> list:
    return [
        SimpleNamespace(arm=arm, reward=float((start + i) % 10 < rate * 10), outcome="completed",
                        decided_at_ms=(start + i) * 100, model_version=version)
        for i in range(n)
        for arm in arms
    ]  # fmt: skip


def test_the_model_detector_starts_again_when_the_learner_replaces_its_model():
    """A drop the learner answered by rolling back (the model arms' decisions before it judge
    a model that is gone) fired a drift restart afterwards, which threw the restored weights
    away: the detector went on accumulating the bad model's rewards."""
    from ray_app.learn.drift import RewardRateDrift

    def run(react: bool) -> list:
        d = RewardRateDrift(delta=0.05, threshold=5.0, min_samples=10, settle_ms=1_000)
        alerts = d.update(_rates(0, 400, 0.8)) + d.update(_rates(400, 14, 0.0))
        if react:  # the rollback, published as version 2 before the detector fired
            d.reacted(restarted=False, min_version=2)
        # version 1's last rewards still arrive, and the restored weights serve as version 2
        return alerts + d.update(_rates(414, 6, 0.0) + _rates(420, 400, 0.8, version=2))

    assert [kind for kind, _ in run(react=False)] == ["model_reward_rate"]
    assert run(react=True) == []


def test_one_change_seen_by_both_detectors_restarts_the_learner_once():
    from ray_app.learn.drift import RewardRateDrift

    d = RewardRateDrift(delta=0.05, threshold=5.0, min_samples=10, settle_ms=1_000)
    acted = []
    for k in range(0, 1_200, 10):
        rate = 0.8 if k < 400 else 0.2  # the world changed: both arms fall
        for kind, detail in d.update(_rates(k, 10, rate, ("treatment", "control"))):
            if d.answered(detail):
                continue
            acted.append(kind)
            d.reacted(restarted=True, min_version=2)  # the service's answer: a drift restart
    assert len(acted) == 1 and d.answered_alerts == 1


def test_a_drift_restarts_the_treatment_window_of_the_control_guardrail():
    """With no exploration boost (boost_rewards 0) nothing restarted the treatment window: the
    pre-drift model's decisions, which the drift had answered, then fired a rollback too."""
    learner = OnlineLearner(
        cold_start_bundle(SCHEMA, CATALOG),
        LearnerConfig(warmup_rewards=0, boost_rewards=0, publish_interval_s=0.0),
    )
    assert learner.control is not None
    traffic = Traffic(seed=5)
    learner.learn(traffic.records(600, 0.3, 0.6, version=learner.version), now=1.0)
    assert learner.control.compare().treatment_n > 0
    learner.drift(now=2.0)
    assert learner.control.compare().treatment_n == 0
    assert learner.control.min_version == learner.version + 1


def test_a_small_control_share_still_fires_once_its_window_turned_over():
    """Control at 3% of traffic: the first cut (control since treatment's sliding window began)
    left it about 60 rewards, under min_control, so the guardrail never judged. The cut is
    from a restart on, and goes once control's window has turned over."""
    traffic = Traffic(seed=7)
    g = ControlGuardrail()
    g.update(traffic.records(20_000, 0.3, 0.6, version=1, share=0.97))
    assert g.compare().fires and g.compare().control_n > 500
    g.restart(min_version=2)
    g.update(traffic.records(2_000, 0.3, 0.6, version=2, share=0.97))
    c = g.compare()
    assert c.control_n < 100 and not c.enough  # only control decided since the restart
    g.update(traffic.records(6_000, 0.3, 0.6, version=2, share=0.97))
    assert g.compare().fires


def test_the_model_detector_follows_a_registry_rollback_to_a_lower_version_and_one_arm():
    """A promotion may lower the version (a registry rollback): keeping the highest version
    ever reacted to left the detector blind to the learner's next ~40 publishes. treatment_b
    serves another model file, with versions of its own: not the learner's to watch."""
    from ray_app.learn.drift import RewardRateDrift

    d = RewardRateDrift(delta=0.05, threshold=5.0, min_samples=10, settle_ms=1_000)
    d.reacted(restarted=True, min_version=51)  # a drift restart at version 50
    d.reacted(restarted=False, min_version=7)  # then a registry rollback adopted version 7
    d.update(_rates(0, 50, 0.8, version=8))
    assert d.model.seen > 30  # version 8's rewards (the last second held back)
    b = RewardRateDrift(delta=0.05, threshold=5.0, min_samples=10, settle_ms=1_000)
    b.update(_rates(0, 50, 0.8, ("treatment_b",), version=99))
    assert b.model.seen == 0


def test_a_guardrail_state_saved_before_the_cut_keeps_cutting_at_treatments_window():
    traffic = Traffic(seed=9)
    g = ControlGuardrail()
    g.update(traffic.records(2_000, 0.6, 0.6, version=1))
    g.restart(min_version=2)
    g.update(traffic.records(600, 0.4, 0.4, version=2))
    state = g.state_dict()
    old = {k: v for k, v in state.items() if k not in ("since", "restarted")}
    h = ControlGuardrail()
    h.load_state(old)
    assert h.compare() == g.compare()
