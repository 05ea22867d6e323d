"""The online learner as a service: reads ``onramp.rewards``, trains, publishes model files.

Its loop, on one thread (Kafka consumers are not thread-safe): poll reward records -> validate
(bad ones are counted and logged, never trained on) -> :meth:`OnlineLearner.learn` (dedupe by
decision id, importance weights, guardrail slice, the comparison with the control arm) -> feed
the drift detectors (:class:`~ray_app.learn.drift.RewardRateDrift`: Page-Hinkley on the reward
rate of explicit outcomes once their decision's outcomes are in: the p99 of how late they
arrive, at most ``learn.drift_settle_s``; PSI on the logged features; every detection is logged
as an alert, and a change of the reward rate also raises exploration for
``learn.boost_rewards`` rewards) -> :meth:`OnlineLearner.maybe_publish` at most every
``learn.publish_interval_s`` (a treatment arm significantly below control is rolled back
there, logged at WARNING and counted) -> write the model file (temporary file + rename: the
decision replicas watching it never read half of one) and the learner's state (weights,
optimizer, reward offsets, dedupe memory) the same way.

**Start** (:func:`~ray_app.learn.startup.restore_learner`): the saved state if it was saved
under this feature schema and catalog, else the registry's promoted version, else the model
file, else the cold start; what is refused is logged and counted. A promotion made while it
runs, or since its state was saved, is adopted within ``_REGISTRY_POLL_S`` seconds
(:meth:`OnlineLearner.adopt`), so its next publishes build on the promoted weights.

Outcome-to-weights time: for each positive outcome a publish includes, the wall time of the
publish minus the outcome's event time (the collector's clock, after skew correction).

``LearnerService`` is a plain class; :func:`start_learner_actor` runs it as a Ray actor.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any

import orjson

from ray_app.catalog import load_catalog
from ray_app.config import Settings
from ray_app.features import FeatureSchema
from ray_app.kafka.client import make_consumer
from ray_app.learn.drift import FeatureDrift, RewardRateDrift
from ray_app.learn.learner import LearnerConfig, OnlineLearner
from ray_app.learn.memory import SeenIds
from ray_app.learn.startup import restore_learner
from ray_app.model import ModelBundle, ModelFileError
from ray_app.model.registry import ModelRegistry, Promotion, RegistryError, served_rank
from ray_app.records import RewardRecord, RewardRecordError
from ray_app.storage import write_file_atomically

__all__ = [
    "LEARNER_NAME",
    "LearnerService",
    "control_rollback_message",
    "learner_config",
    "restore_learner",
    "start_learner_actor",
]

log = logging.getLogger(__name__)

#: Name of the learner actor (in ``settings.ray.namespace``).
LEARNER_NAME = "onramp-learner"

#: How often the running learner looks for a new promotion in the registry (seconds).
_REGISTRY_POLL_S = 2.0
#: Outcome times of positive rewards kept for the outcome -> new weights latency until the next
#: publish (the oldest dropped beyond it).
_AWAITING_KEPT = 100_000


def learner_config(settings: Settings) -> LearnerConfig:
    """The learner's configuration from the settings (``learn.*``, and ``decide.epsilon``)."""
    s = settings.learn
    return LearnerConfig(
        lr=s.lr,
        hidden=s.hidden,
        batch_size=s.batch_size,
        publish_interval_s=s.publish_interval_s,
        boost_publish_factor=s.boost_publish_factor,
        guardrail_share=s.guardrail_share,
        guardrail_tolerance=s.guardrail_tolerance,
        epsilon=settings.decide.epsilon,
        gamma_scale=s.gamma_scale,
        optimism=s.optimism,
        boost_epsilon=s.boost_epsilon,
        boost_rewards=s.boost_rewards,
        drift_restart=s.drift_restart,
        drift_gamma_head_start=s.drift_gamma_head_start,
        replay_size=s.replay_size,
        replay_steps=s.replay_steps,
        min_propensity=s.min_propensity,
        weight_decay=s.weight_decay,
        warmup_rewards=s.warmup_rewards,
        lr_decay_rewards=s.lr_decay_rewards,
        settle_lr_factor=s.settle_lr_factor,
        settle_rewards=s.settle_rewards,
        control_z=s.control_z,
        control_window=s.control_window,
        control_min_treatment=s.control_min_treatment,
        control_min_control=s.control_min_control,
    )


def control_rollback_message(metadata: dict[str, Any], version: int, config: LearnerConfig) -> str:
    """What the WARNING of a rollback below control says (from the published bundle's metadata).

    >>> meta = {"control": {"treatment_rate": 0.3, "treatment_n": 400, "control_rate": 0.6,
    ...                     "control_n": 380, "z": -8.5, "threshold": 3.09},
    ...         "rolled_back_to": "cold_start", "gamma": 10.0}
    >>> print(control_rollback_message(meta, 12, LearnerConfig()))  # doctest: +NORMALIZE_WHITESPACE
    ROLLBACK below the static flow: the treatment arm completed 0.300 of its last 400 rewards,
    the control arm 0.600 of 380 (z = -8.50 < -3.09). Published the cold_start model (no weights
    beat control since the last rollback or the start) as version 12; exploration restarted
    (squarecb gamma 10; epsilon 0.5 under epsilon_greedy) for the next 1000 rewards; only
    decisions of version 12 and later count for treatment from now on.
    """
    c = metadata.get("control") or {}
    restored = str(metadata.get("rolled_back_to"))
    gamma = metadata.get("gamma")
    exploration = (
        f"exploration restarted (squarecb gamma {gamma:g}; epsilon {config.boost_epsilon:g} under "
        "epsilon_greedy)"
        if isinstance(gamma, int | float)
        else f"exploration at {config.boost_epsilon:g}"
    )
    target = (
        f"the last weights that beat control ({restored})"
        if restored.startswith("version")
        else f"the {restored} model (no weights beat control since the last rollback or the start)"
    )
    return (
        f"ROLLBACK below the static flow: the treatment arm completed "
        f"{c.get('treatment_rate') or 0.0:.3f} of its last {c.get('treatment_n', 0)} rewards, "
        f"the control arm {c.get('control_rate') or 0.0:.3f} of {c.get('control_n', 0)} "
        f"(z = {c.get('z') or 0.0:.2f} < -{c.get('threshold', 0.0):g}). Published {target} as "
        f"version {version}; {exploration} for the next {config.boost_rewards} rewards; only "
        f"decisions of version {version} and later count for treatment from now on."
    )


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
        self.config = learner_config(settings)
        self.registry = ModelRegistry.from_settings(settings)
        self._registry_checked = time.monotonic()
        #: A promotion this learner could not adopt (see _adopt_promotion): not tried again.
        self._unadoptable_epoch: int | None = None
        # the learner does not take the holdout's rewards (nor remember their ids): counted
        # once in the rates all the same, whatever a replay writes again
        self._holdout_seen = SeenIds(100_000)
        # the world: rewards of the static flow (control arm) moving either way; the model:
        # rewards of the model arms falling (their rise is the learner doing its job)
        # (min_samples: the first rewards of a fresh model move for reasons of its own)
        self.rate_drift = RewardRateDrift.from_settings(s)
        self.learner = self._restore()
        self.topic = settings.topics.rewards
        self._consumer = make_consumer(bootstrap, settings.kafka)
        offsets = self.learner.offsets
        self.resumed_from = dict(offsets)
        self._consumer.assign_at(
            {(self.topic, p): offsets.get(p, 0) for p in range(settings.kafka.partitions)}
        )
        self.feature_drift = FeatureDrift(
            reference_size=s.psi_window, window=s.psi_window, names=list(self.schema.names)
        )
        self.alerts: deque[dict[str, Any]] = deque(maxlen=50)
        self.invalid = 0
        self.arms: dict[str, list[int]] = {}  # arm -> [rewards, positives]
        self.recent: dict[str, deque[float]] = {}
        self.timeline: list[dict[str, Any]] = []
        # outcome times (ms) of positives not yet published; bounded: while publishes fail
        # (a full disk) it grew by one a positive reward, without end
        self._awaiting: deque[int] = deque(maxlen=_AWAITING_KEPT)
        self.latencies_ms: deque[int] = deque(maxlen=5_000)
        self.last_psi = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        #: Publishes whose state or model file could not be written (retried at the next one).
        self.publish_failures = 0

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
        """Continue from the registry's promoted version if it is newer than the learner's. A
        promotion that cannot be adopted (it cannot serve this catalog, or does not fit the
        learner) is remembered as such: it neither blocks the learner's publishes (which would
        otherwise be dropped for it for ever, nothing written) nor is tried again."""
        head = self.registry.promoted()
        if head is None or head.epoch <= learner.lineage.get("promotion", 0):
            return
        if head.epoch == self._unadoptable_epoch:
            return
        try:
            bundle = self.registry.promoted_bundle(self.schema, self.catalog)
        except (ModelFileError, RegistryError) as exc:
            # what the registry holds for it cannot serve here (another feature schema or
            # catalog, no model file, unreadable metadata): reading it again gives the same
            self._outrank(learner, head, exc)
            return
        except OSError as exc:  # the registry's store answered badly this once
            log.warning("registry %s: %s; the promotion is tried again", self.registry.uri, exc)
            raise
        if bundle is None:
            return
        try:
            learner.adopt(bundle)
        except ValueError as exc:
            self._outrank(learner, head, exc)
            return
        # the promoted weights are published again as the next version (OnlineLearner.adopt)
        self.rate_drift.reacted(restarted=False, min_version=learner.version + 1)
        log.info(
            "learner continues from promoted version %d (promotion %d), republished as version %d",
            head.version,
            head.epoch,
            learner.version + 1,
        )

    def _outrank(self, learner: OnlineLearner, head: Promotion, why: Exception) -> None:
        """A promotion the learner cannot adopt: remembered (not tried again), and the learner
        goes on from its own weights numbered above it, so that its next publish is what every
        replica serves. Numbered below it, running replicas refused its publishes (they hold
        the promoted file) while replicas started later loaded them: two models at once."""
        log.error(
            "promoted version %d (promotion %d) cannot be adopted: %s; the learner goes on from "
            "its own weights (version %d), which replace it at its next publish",
            head.version,
            head.epoch,
            why,
            learner.version,
        )
        self._unadoptable_epoch = head.epoch
        learner.lineage = {"promotion": head.epoch}
        learner.version = max(learner.version, head.version)
        if learner.control is not None:  # what replicas serve until then is not the learner's
            learner.control.restart(min_version=learner.version + 1)

    def _restore(self) -> OnlineLearner:
        """:func:`restore_learner` with this service's files, registry and settings."""
        return restore_learner(
            self.state_path,
            self.model_path,
            self.schema,
            self.catalog,
            self.config,
            promoted=self._promoted,
            adopt=self._try_adopt,
        )

    def _try_adopt(self, learner: OnlineLearner) -> None:
        """:meth:`_adopt_promotion`, a registry that answered badly logged (tried again later)."""
        try:
            self._adopt_promotion(learner)
        except (RegistryError, OSError):
            pass  # logged by _adopt_promotion

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
        learned = self.learner.learn(records, offsets)
        # what the learner took: a reward written again (a stream worker's replay after a
        # crash) or an invalid one is not counted twice in the rates and the detectors
        holdout = self.learner.config.holdout_arm
        taken = [
            *learned.taken,
            *(r for r in records if r.arm == holdout and self._holdout_seen.add(r.decision_id)),
        ]
        now = time.time()
        for r in taken:
            counts = self.arms.setdefault(r.arm, [0, 0])
            counts[0] += 1
            counts[1] += r.reward > 0
            self.recent.setdefault(r.arm, deque(maxlen=500)).append(r.reward)
            if (
                r.reward > 0
                and r.outcome_at_ms is not None
                and r.arm != holdout
                and not self.learner.in_guardrail(r.decision_id)
            ):
                self._awaiting.append(r.outcome_at_ms)
        for kind, detail in self.rate_drift.update(taken):
            if self.rate_drift.answered(detail):  # the same change, restarted for already
                log.info("drift (%s) %s: answered by the last restart", kind, detail)
                continue
            self._alert(kind, detail)
        # only vectors of this schema's length: a reward of another schema (one decided before
        # an upgrade changed the features, read again by a learner that started cold) is the
        # learner's invalid record, and would stop the drift check (and the learner) on its shape
        # (and, as the rates, each reward once: a replay's copies were counted twice in a window)
        vectors = [r.features for r in taken if len(r.features) == self.schema.dim]
        if vectors:
            report = self.feature_drift.update(vectors)
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

    def _alert(self, kind: str, detail: dict[str, Any], boost: bool = True) -> None:
        """Log and keep an alert; a reward-rate drift also raises exploration for
        ``learn.boost_rewards`` rewards."""
        if boost:
            self.learner.drift(since_ms=detail.get("sinceMs"))
            # the model judged until now is gone: the next version is the restarted one
            self.rate_drift.reacted(restarted=True, min_version=self.learner.version + 1)
        alert = {"at": time.time(), "kind": kind, "boosted": boost, **detail}
        self.alerts.append(alert)
        log.warning(
            "DRIFT (%s): %s%s", kind, detail, "; exploration raised for a while" if boost else ""
        )

    def _maybe_publish(self) -> None:
        if time.monotonic() - self._registry_checked >= _REGISTRY_POLL_S:
            self._registry_checked = time.monotonic()
            self._try_adopt(self.learner)
        bundle = self.learner.maybe_publish()
        if bundle is None:
            return
        try:
            head = self.registry.promoted()
        except (RegistryError, OSError):
            head = None
        if (
            head is not None
            and head.epoch > bundle.serving_rank[0]
            and head.epoch != self._unadoptable_epoch
        ):
            # promoted since the last check: the promotion wins, this candidate is dropped
            # (written, it would replace the promoted file that new replicas load)
            try:
                self._adopt_promotion(self.learner)
            except (RegistryError, OSError):
                pass  # logged; the next publish tries again
            return  # adopted, or the learner now outranks it: the next publish is written
        # the state first: a crash between the two writes then skips a version number, where
        # the other order would publish the same version again with other weights (which
        # replicas that hold the first refuse, and new ones load)
        try:
            write_file_atomically(self.state_path, self.learner.to_bytes())
            if served_rank(self.model_path)[0] > bundle.serving_rank[0]:
                # promoted while the state was written (a second for a large state): written,
                # this would replace the promoted file that replicas started later load
                self._registry_checked = -math.inf  # adopted at the next publish
                self.learner.republish()
                return
            write_file_atomically(self.model_path, bundle.to_bytes())
        except OSError as exc:  # a full disk, a store that failed once: not the loop's end
            self.publish_failures += 1
            self.learner.republish()  # the weights again at the next chance
            log.error("model version %d not published: %s; tried again", bundle.version, exc)
            return
        published_ms = int(time.time() * 1000)
        self.latencies_ms.extend(published_ms - t for t in self._awaiting)
        self._awaiting.clear()
        rollback = bundle.metadata.get("rollback")
        if rollback == "below_control":
            self.rate_drift.reacted(restarted=False, min_version=bundle.version)
            log.warning(
                "%s", control_rollback_message(bundle.metadata, bundle.version, self.config)
            )
        elif rollback == "loss":
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
        control = self.learner.control
        return {
            "version": self.learner.version,
            "counters": dict(self.learner.counters),
            "offsets": {str(p): o for p, o in self.learner.offsets.items()},
            "resumedFrom": {str(p): o for p, o in self.resumed_from.items()},
            "invalid": self.invalid,
            "publishFailures": self.publish_failures,
            "epsilon": self.learner.exploration(),
            "settleFactor": self.learner.settle_factor,
            "settleInformation": self.learner.settle_information,
            "arms": {
                arm: {"rewards": n, "positives": k, "rate": k / n if n else None}
                for arm, (n, k) in sorted(self.arms.items())
            },
            "recentRate": {arm: sum(v) / len(v) for arm, v in sorted(self.recent.items()) if v},
            "guardrail": None if check is None else check.as_dict(),
            # the comparison at the last publish (paused while exploring), else the live one
            "control": None
            if control is None
            else (self.learner.last_control or control.compare()).as_dict(),
            "drift": {
                "rewardStatistic": self.rate_drift.model.statistic,
                "controlStatistic": self.rate_drift.world.statistic,
                "fed": self.rate_drift.fed,
                "late": self.rate_drift.late,
                "future": self.rate_drift.future,
                "settleMs": self.rate_drift.settle,
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


#: How long the learner's start (its model file and state read, its consumer) may take.
LAUNCH_TIMEOUT_S = 120


def launch_learner_actor(settings: Settings, bootstrap: str) -> tuple[Any, Any]:
    """Create :class:`LearnerService` as the named actor :data:`LEARNER_NAME` and ask it to
    start without waiting: ``(actor, ref)``, ``ray.get(ref)`` once it has started."""
    import ray

    cls = ray.remote(num_cpus=0, max_concurrency=4)(LearnerService)  # type: ignore[call-overload]
    actor = cls.options(name=LEARNER_NAME, namespace=settings.ray.namespace).remote(
        settings, bootstrap
    )
    return actor, actor.start.remote()


def start_learner_actor(settings: Settings, bootstrap: str) -> Any:
    """Run :class:`LearnerService` as the named actor :data:`LEARNER_NAME` and start it."""
    import ray

    actor, started = launch_learner_actor(settings, bootstrap)
    ray.get(started, timeout=LAUNCH_TIMEOUT_S)
    return actor
