"""The online learner as a service: reads ``onramp.rewards``, trains, publishes model files.

Its loop, on one thread (Kafka consumers are not thread-safe): poll reward records -> validate
(bad ones are counted and logged, never trained on) -> :meth:`OnlineLearner.learn` (dedupe by
decision id, importance weights, guardrail slice) -> feed the drift detectors (Page-Hinkley on
the reward rate, PSI on the logged features; every detection is logged as an alert, and a drop
of the reward rate also raises exploration for a while) -> :meth:`OnlineLearner.maybe_publish`
at most every ``learn.publish_interval_s`` -> write the model file (temporary file + rename: the decision
replicas watching it never read half of one) and the learner's state (weights, optimizer, reward
offsets, dedupe memory) the same way. A restarted learner resumes from that state: the offsets
say where to read, the dedupe memory drops what it had already learned from. Without a state it
starts from the model registry's promoted version (``onramp models promote``); a promotion made
while it runs, or since its state was saved, is adopted within ``_REGISTRY_POLL_S`` seconds
(:meth:`OnlineLearner.adopt`), so its next publishes build on the promoted weights.

Outcome-to-weights time: for each positive outcome a publish includes, the wall time of the
publish minus the outcome's event time (the collector's clock, after skew correction).

``LearnerService`` is a plain class; :func:`start_learner_actor` runs it as a Ray actor.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from typing import Any

import orjson

from ray_app.catalog import load_catalog
from ray_app.config import Settings
from ray_app.features import FeatureSchema
from ray_app.kafka.client import make_consumer
from ray_app.learn.drift import FeatureDrift, PageHinkley
from ray_app.learn.learner import LearnerConfig, LearnerStateError, OnlineLearner
from ray_app.learn.reward import RewardRecord, RewardRecordError
from ray_app.model import ModelBundle, ModelFileError, cold_start_bundle
from ray_app.model.registry import ModelRegistry, RegistryError
from ray_app.storage import write_file_atomically

__all__ = ["LEARNER_NAME", "LearnerService", "start_learner_actor"]

log = logging.getLogger(__name__)

#: Name of the learner actor (in ``settings.ray.namespace``).
LEARNER_NAME = "onramp-learner"

#: How often the running learner looks for a new promotion in the registry (seconds).
_REGISTRY_POLL_S = 2.0


class LearnerService:
    """See the module docstring."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        logging.basicConfig(level=logging.INFO)
        self.settings = settings
        s = settings.learn
        self.catalog = load_catalog(settings.decide.catalog_path)
        self.schema = FeatureSchema.from_catalog(self.catalog)
        self.model_path = settings.model_path
        self.state_path = settings.learner_state_path
        self.config = LearnerConfig(
            lr=s.lr,
            batch_size=s.batch_size,
            publish_interval_s=s.publish_interval_s,
            guardrail_tolerance=s.guardrail_tolerance,
            epsilon=settings.decide.epsilon,
            boost_epsilon=s.boost_epsilon,
            boost_seconds=s.boost_seconds,
            replay_size=s.replay_size,
            replay_steps=s.replay_steps,
            min_propensity=s.min_propensity,
            weight_decay=s.weight_decay,
            warmup_rewards=s.warmup_rewards,
        )
        self.registry = ModelRegistry.from_settings(settings)
        self._registry_checked = time.monotonic()
        self.learner = self._restore()
        self.topic = settings.topics.rewards
        self._consumer = make_consumer(bootstrap, settings.kafka)
        offsets = self.learner.offsets
        self.resumed_from = dict(offsets)
        self._consumer.assign_at(
            {(self.topic, p): offsets.get(p, 0) for p in range(settings.kafka.partitions)}
        )
        # the world: rewards of the static flow (control arm) moving either way; the model:
        # rewards of the model arms falling (their rise is the learner doing its job)
        # (min_samples: the first rewards of a fresh model move for reasons of its own)
        self.world_drift = PageHinkley(
            delta=s.drift_delta, threshold=s.drift_threshold, min_samples=s.drift_min_samples
        )
        self.reward_drift = PageHinkley(
            delta=s.drift_delta, threshold=s.drift_threshold, min_samples=s.drift_min_samples
        )
        self.feature_drift = FeatureDrift(
            reference_size=s.psi_window, window=s.psi_window, names=list(self.schema.names)
        )
        self.alerts: deque[dict[str, Any]] = deque(maxlen=50)
        self._by_decision_time: list[tuple[int, str, RewardRecord]] = []
        self._latest_decision = 0
        st = settings.stream
        self._settle_ms = int(st.attribution_window_s * 1000) + st.allowed_lateness_ms + 2_000
        self.invalid = 0
        self.arms: dict[str, list[int]] = {}  # arm -> [rewards, positives]
        self.recent: dict[str, deque[float]] = {}
        self.timeline: list[dict[str, Any]] = []
        self._awaiting: list[int] = []  # outcome times (ms) of positives not yet published
        self.latencies_ms: deque[int] = deque(maxlen=5_000)
        self.last_psi = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def _promoted(self) -> ModelBundle | None:
        """The registry's promoted version (``None``: none, or it cannot serve this catalog)."""
        try:
            return self.registry.promoted_bundle(self.schema, self.catalog)
        except (RegistryError, ModelFileError, OSError) as exc:
            log.error(
                "registry %s: %s; not starting from its promoted version", self.registry.uri, exc
            )
            return None

    def _adopt_promotion(self, learner: OnlineLearner) -> None:
        """Continue from the registry's promoted version if it is newer than the learner's."""
        head = self.registry.promoted()
        if head is None or head.epoch <= learner.lineage.get("promotion", 0):
            return
        bundle = self._promoted()
        if bundle is None:
            return
        try:
            learner.adopt(bundle)
        except ValueError as exc:
            log.error("promoted version %d not adopted: %s", head.version, exc)
            return
        log.info(
            "learner continues from promoted version %d (promotion %d)", head.version, head.epoch
        )

    def _restore(self) -> OnlineLearner:
        """From the learner's state if there is one, else the registry's promoted version, else
        the model file, else the cold start; a promotion newer than the state is adopted."""
        if self.state_path.exists():
            try:
                learner = OnlineLearner.from_bytes(self.state_path.read_bytes(), self.config)
                log.info("learner resumed at version %d from %s", learner.version, self.state_path)
                self._adopt_promotion(learner)
                return learner
            except LearnerStateError as exc:
                log.error("%s: %s; starting from the model file instead", self.state_path, exc)
        promoted = self._promoted()
        if promoted is not None:
            log.info("learner starts from the registry's promoted version %d", promoted.version)
            return OnlineLearner(promoted, self.config)
        bundle: ModelBundle | None = None
        if self.model_path.exists():
            try:
                bundle = ModelBundle.from_bytes(
                    self.model_path.read_bytes(), self.schema, self.catalog, False
                )
            except ModelFileError as exc:
                log.error("%s: %s; starting from the cold-start model", self.model_path, exc)
        return OnlineLearner(bundle or cold_start_bundle(self.schema, self.catalog), self.config)

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> bool:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="onramp-learner", daemon=True)
            self._thread.start()
        return True

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._consumer.poll(timeout_s=0.2, max_records=2_000)
                with self._lock:
                    if batch:
                        self._learn(batch)
                    self._maybe_publish()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("learner stopped")

    def _learn(self, batch: list[Any]) -> None:
        records: list[RewardRecord] = []
        offsets: dict[int, int] = {}
        for rec in batch:
            offsets[rec.partition] = rec.offset + 1
            try:
                records.append(RewardRecord.from_json(orjson.loads(rec.value)))
            except (RewardRecordError, orjson.JSONDecodeError) as exc:
                self.invalid += 1
                log.warning("reward %s/%d: %s", rec.partition, rec.offset, exc)
        seen_before = self.learner.counters.get("trained", 0)
        self.learner.learn(records, offsets)
        fresh = self.learner.counters.get("trained", 0) > seen_before
        now = time.time()
        for r in records:
            counts = self.arms.setdefault(r.arm, [0, 0])
            counts[0] += 1
            counts[1] += r.reward > 0
            self.recent.setdefault(r.arm, deque(maxlen=500)).append(r.reward)
            heapq.heappush(self._by_decision_time, (r.decided_at_ms, r.decision_id, r))
            self._latest_decision = max(self._latest_decision, r.decided_at_ms)
            if (
                fresh
                and r.reward > 0
                and r.outcome_at_ms is not None
                and r.arm != "holdout"
                and not self.learner.in_guardrail(r.decision_id)
            ):
                self._awaiting.append(r.outcome_at_ms)
        self._feed_reward_drift()
        if records:
            report = self.feature_drift.update([r.features for r in records])
            if report is not None:
                self.last_psi = report.max_psi
                if report.fired:
                    # covariate shift alone: logged and exported, no boost. The outcome model
                    # may be as right as before on the new mix; clearing replay and exploring
                    # at 0.5 on it cost the treatment arm 0.84 -> 0.64 in a 20k-user run where
                    # the shift was only profile reads missing their deadline (cold features).
                    self._alert("features", report.as_dict(), boost=False)
        if self.timeline and now - self.timeline[-1]["t"] < 1.0:
            return
        self.timeline.append(
            {"t": now, **{arm: sum(v) / len(v) for arm, v in self.recent.items() if v}}
        )
        del self.timeline[:-3_600]

    def _feed_reward_drift(self) -> None:
        """Feed the Page-Hinkley detectors in decision-time order, once a decision's outcome can
        no longer be pending: rewards arrive out of that order (a completion at once, a timeout
        only when its window closes), and fed as they arrive, the wave of timeouts after a
        wave of completions would look like a fall of the reward rate."""
        settled = self._latest_decision - self._settle_ms
        heap = self._by_decision_time
        while heap and heap[0][0] < settled:
            _, _, r = heapq.heappop(heap)
            if r.arm == "control":
                if self.world_drift.update(r.reward):
                    self._alert("control_reward_rate", {"change": self.world_drift.last_change})
            elif r.arm != "holdout" and self.reward_drift.update(r.reward):
                if self.reward_drift.last_change == "decrease":
                    self._alert("model_reward_rate", {"change": "decrease"})

    def _alert(self, kind: str, detail: dict[str, Any], boost: bool = True) -> None:
        """Log and keep an alert; a reward-rate drift also raises exploration for a while."""
        if boost:
            self.learner.drift()
        alert = {"at": time.time(), "kind": kind, "boosted": boost, **detail}
        self.alerts.append(alert)
        log.warning(
            "DRIFT (%s): %s%s", kind, detail, "; exploration raised for a while" if boost else ""
        )

    def _maybe_publish(self) -> None:
        if time.monotonic() - self._registry_checked >= _REGISTRY_POLL_S:
            self._registry_checked = time.monotonic()
            try:
                self._adopt_promotion(self.learner)
            except (RegistryError, OSError) as exc:
                log.warning("registry %s: %s", self.registry.uri, exc)
        bundle = self.learner.maybe_publish()
        if bundle is None:
            return
        try:
            head = self.registry.promoted()
        except (RegistryError, OSError):
            head = None
        if head is not None and head.epoch > bundle.serving_rank[0]:
            # promoted since the last check: the promotion wins, this candidate is dropped
            # (written, it would replace the promoted file that new replicas load)
            self._adopt_promotion(self.learner)
            return
        write_file_atomically(self.model_path, bundle.to_bytes())
        published_ms = int(time.time() * 1000)
        self.latencies_ms.extend(published_ms - t for t in self._awaiting)
        self._awaiting = []
        write_file_atomically(self.state_path, self.learner.to_bytes())
        if bundle.metadata.get("rolled_back"):
            log.warning(
                "guardrail breached (%s): rolled back to the last good weights as version %d",
                bundle.metadata.get("guardrail"),
                bundle.version,
            )
        else:
            log.info("published model version %d", bundle.version)

    def stop(self) -> dict[str, Any]:
        """Stop the loop, save the state, close; returns the status."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            write_file_atomically(self.state_path, self.learner.to_bytes())
        self._consumer.close()
        return self.status()

    # -- reading -------------------------------------------------------------------------------

    def ping(self) -> str | None:
        return self.error

    def status(self) -> dict[str, Any]:
        """Read without the loop's lock (the loop holds it while it trains, and a lock does not
        queue fairly): a value may be one batch old, never torn (retried if a dict grew)."""
        for _ in range(5):
            try:
                return self._status()
            except RuntimeError:  # "changed size during iteration": read again
                continue
        return self._status()

    def _status(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        check = self.learner.last_check
        return {
            "version": self.learner.version,
            "counters": dict(self.learner.counters),
            "offsets": {str(p): o for p, o in self.learner.offsets.items()},
            "resumedFrom": {str(p): o for p, o in self.resumed_from.items()},
            "invalid": self.invalid,
            "epsilon": self.learner.exploration(),
            "arms": {
                arm: {"rewards": n, "positives": k, "rate": k / n if n else None}
                for arm, (n, k) in sorted(self.arms.items())
            },
            "recentRate": {arm: sum(v) / len(v) for arm, v in sorted(self.recent.items()) if v},
            "guardrail": None if check is None else check.as_dict(),
            "drift": {
                "rewardStatistic": self.reward_drift.statistic,
                "featureMaxPsi": self.last_psi,
                "alerts": list(self.alerts),
            },
            "outcomeToWeightsMs": {
                "count": len(lat),
                "p50": lat[len(lat) // 2] if lat else None,
                "p90": lat[int(len(lat) * 0.9)] if lat else None,
            },
            "error": self.error,
        }

    def timeline_points(self) -> list[dict[str, Any]]:
        """Recent reward rate per arm, about once a second (for the demo's plot)."""
        return list(self.timeline)


def start_learner_actor(settings: Settings, bootstrap: str) -> Any:
    """Run :class:`LearnerService` as the named actor :data:`LEARNER_NAME` and start it."""
    import ray

    cls = ray.remote(num_cpus=0, max_concurrency=4)(LearnerService)  # type: ignore[call-overload]
    actor = cls.options(name=LEARNER_NAME, namespace=settings.ray.namespace).remote(
        settings, bootstrap
    )
    ray.get(actor.start.remote(), timeout=120)
    return actor
