"""The online learner's publishing half: what to serve, when, and the guardrails in front of it.

:class:`Publishing` is mixed into :class:`~ray_app.learn.learner.OnlineLearner` (whose module
docstring tells the whole story). It holds the exploration to serve (warm-up, boost after a
drift or a rollback: :class:`~ray_app.learn.exploration.BoostSchedule`; squarecb's ``gamma``),
the loss guardrail on the guardrail slice (:mod:`ray_app.learn.loss_guardrail`), the guardrail
against the static flow (:class:`~ray_app.learn.guardrail.ControlGuardrail`, with the last
weights that beat control and the cold-start weights to roll back to) and
:meth:`~Publishing.maybe_publish`, which puts them together into the next version.

>>> from ray_app.catalog import load_catalog
>>> from ray_app.features import FeatureSchema
>>> from ray_app.learn import OnlineLearner
>>> from ray_app.model import cold_start_bundle
>>> c = load_catalog()
>>> learner = OnlineLearner(cold_start_bundle(FeatureSchema.from_catalog(c), c))
>>> bundle = learner.maybe_publish(now=0.0)     # nothing learned, but the epsilon to serve changed
>>> bundle.version, bundle.metadata["epsilon"], bundle.metadata["guardrail"]["breached"]
(1, 0.5, False)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch

from ray_app.learn.config import LearnerConfig
from ray_app.learn.exploration import BoostSchedule
from ray_app.learn.guardrail import ControlComparison, ControlGuardrail
from ray_app.learn.learner_state import clone_weights
from ray_app.learn.loss_guardrail import GuardrailCheck, check_candidate
from ray_app.learn.memory import ReplayBuffer
from ray_app.learn.update import make_optimizer, observe_records
from ray_app.model import ModelBundle, Scorer
from ray_app.records import RewardRecord

__all__ = ["Publishing"]


class Publishing:
    """The publishing half of :class:`~ray_app.learn.learner.OnlineLearner` (see the module
    docstring); the learner sets every attribute below."""

    config: LearnerConfig
    _clock: Callable[[], float]
    scorer: Scorer
    _last_good: dict[str, torch.Tensor]
    version: int
    lineage: dict[str, int]
    counters: dict[str, int]
    _optimizer: torch.optim.Optimizer
    _replay: ReplayBuffer[RewardRecord]
    _guardrail: deque[RewardRecord]
    _offsets: dict[int, int]
    _pending_updates: int
    _pending_rewards: int
    _last_publish_at: float | None
    _published_epsilon: float
    _republish: bool
    _restart_reason: str | None
    _schedule: BoostSchedule
    last_check: GuardrailCheck | None
    control: ControlGuardrail | None
    last_control: ControlComparison | None
    _beat_control: tuple[tuple[int, int], dict[str, torch.Tensor]] | None
    _fallback: dict[str, torch.Tensor]
    _fallback_kind: str
    _arch: dict[str, Any]
    _schema_hash: str
    _catalog_digest: str
    _slot_actions: dict[str, list[str]]
    _slot_index: dict[str, int]
    _action_index: dict[str, dict[str, int]]

    def _renew_optimizer(self, settle: bool | None) -> None:
        """A fresh optimizer for the trainer's weights. ``settle``: True on trained weights (a
        model file, a model of ``onramp train``, a promotion): it settles first
        (``settle_lr_factor``, see :meth:`BoostSchedule.settle`); False: the full rate
        (cold-start weights; a drift or a rollback below control, which boost); None: a running
        settling goes on and none starts (a rollback to the last good weights, a few updates old:
        after a drift, settling would slow the relearning that such a rollback interrupts; on
        the learning twin one of four ``campus`` seeds did not recover)."""
        cfg = self.config
        self._optimizer = make_optimizer(self.scorer, cfg.optimizer, cfg.lr, cfg.weight_decay)
        if settle:
            self._start_settling()
        elif settle is not None:
            self._schedule.settled()

    def _start_settling(self) -> None:
        """Settle the new optimizer, if it is Adam (plain SGD keeps no memory of the gradients
        that a new one would lack) and settling is configured (``settle_lr_factor`` below 1,
        ``settle_rewards`` above 0)."""
        cfg = self.config
        if cfg.optimizer == "adam" and cfg.settle_lr_factor < 1 and cfg.settle_rewards > 0:
            self._schedule.fresh_optimizer(self.counters["trained"])
        else:
            self._schedule.settled()

    def last_good(self) -> ModelBundle:
        """The last good weights as a bundle (what was last published, or the initial bundle)."""
        return self._bundle(
            self._last_good,
            self.version,
            {
                "kind": "online",
                "last_good": True,
                "learned": self.learned,
                "gamma_head_start": self._schedule.head_start,
                **self.lineage,
            },
        )

    def _check_fits(self, bundle: ModelBundle, what: str, any_hidden: bool = False) -> None:
        """``ValueError`` unless ``bundle`` has the learner's architecture (with ``any_hidden``,
        but for its hidden units), actions and feature schema."""
        arch = bundle.scorer.architecture
        if any_hidden:
            arch["hidden"] = self._arch["hidden"]
        if (
            arch != self._arch
            # in head order: a dict's == would take the same slots in another order
            or list(bundle.slot_actions.items()) != list(self._slot_actions.items())
            or bundle.schema_hash != self._schema_hash
        ):
            raise ValueError(
                f"{what} architecture, actions or feature schema differ from the learner's"
            )

    def _bundle(
        self, weights: Mapping[str, torch.Tensor], version: int, metadata: dict[str, Any]
    ) -> ModelBundle:
        scorer = Scorer(self._arch["dim"], self._arch["slot_sizes"], self._arch["hidden"])
        scorer.load_state_dict(clone_weights(weights))
        return ModelBundle(
            scorer=scorer,
            schema_hash=self._schema_hash,
            catalog_digest=self._catalog_digest,
            version=version,
            created_at=self._clock(),
            metadata=metadata,
            slot_actions={k: list(v) for k, v in self._slot_actions.items()},
        )

    # ---------------------------------------------------------------------------- exploring

    def exploration(self, now: float | None = None) -> float:
        """The epsilon to serve: ``boost_epsilon`` for ``boost_rewards`` trained rewards after
        the last :meth:`drift` (or rollback below control) and during the warm-up
        (``warmup_rewards``), else ``epsilon``. ``now`` is not used.

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
        >>> from ray_app.learn import LearnerConfig, OnlineLearner
        >>> from ray_app.model import cold_start_bundle
        >>> c = load_catalog()
        >>> learner = OnlineLearner(cold_start_bundle(FeatureSchema.from_catalog(c), c),
        ...                         LearnerConfig(epsilon=0.1, boost_epsilon=0.4, boost_rewards=500,
        ...                                       warmup_rewards=0))
        >>> learner.drift()
        >>> learner.exploration(), learner.boost_left
        (0.4, 500)
        >>> learner.counters["trained"] += 500           # as if 500 rewards were trained on
        >>> learner.exploration(), learner.boost_left
        (0.1, 0)
        """
        return self.config.boost_epsilon if self._boosted() else self.config.epsilon

    def gamma(self) -> float:
        """The ``gamma`` to serve to a ``squarecb`` policy (see :class:`LearnerConfig`).

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
        >>> from ray_app.learn import LearnerConfig, OnlineLearner
        >>> from ray_app.model import cold_start_bundle
        >>> c = load_catalog()
        >>> learner = OnlineLearner(cold_start_bundle(FeatureSchema.from_catalog(c), c))
        >>> learner.gamma()
        40.0
        >>> learner.counters["trained"] += 99; learner.gamma()
        400.0
        >>> learner.drift(); round(learner.gamma(), 1)  # a drift: starts over, around the cold start
        2530.1
        """
        n = self.learned + self._schedule.head_start
        return float(self.config.gamma_scale * (1.0 + n) ** self.config.gamma_exponent)

    @property
    def learned(self) -> int:
        """Rewards the weights learned since a cold start, drift or rollback below control (the
        ``learned`` of a published bundle; a learner started from one counts on from it): how
        far squarecb's ``gamma`` and the step-size decay are along."""
        return max(self.counters["trained"] - self._schedule.explore_from, 0)

    @property
    def settle_factor(self) -> float:
        """The step-size factor of a settling optimizer now (1: not settling; see
        ``LearnerConfig.settle_lr_factor``)."""
        cfg = self.config
        return self._schedule.settle_factor(
            self.counters["trained"], cfg.settle_lr_factor, cfg.settle_rewards
        )

    @property
    def boost_left(self) -> int:
        """Trained rewards until the boost after a drift or a rollback ends (0: none running;
        the warm-up is not counted here)."""
        return self._schedule.left(self.counters["trained"])

    def _boosted(self, now: float | None = None) -> bool:
        return self._schedule.active(self.counters["trained"])

    def _boost(self, head_start: int = 0, since_ms: int | None = None) -> None:
        """Explore and learn faster for ``boost_rewards`` rewards, from a fresh optimizer (moments
        of the old world would slow the move to the new one), with empty guardrail slice and
        replay buffer (rewards from before would judge candidates by a world that is gone, and
        pull towards it). With ``since_ms`` (a drift restart's change point) the replay keeps
        the rewards decided since then: they are the new world's, so they are counted in the
        evidence of the restarted weights and owed as many batches as new rewards."""
        self._schedule.start(self.counters["trained"], head_start)
        self._guardrail.clear()
        # the cold-start weights, a new world, or (after a rollback below control) weights that
        # beat control: relearn at the boosted full rate
        self._renew_optimizer(settle=False)
        if since_ms is None or not self.config.drift_restart:
            self._replay.clear()
            return
        cfg = self.config
        kept = self._replay.retain(lambda r: r.decided_at_ms >= since_ms)
        observe_records(self.scorer, list(self._replay), self._slot_index)
        self._replay.credit = (1 + cfg.replay_steps) * kept / cfg.batch_size

    def _restart_from_fallback(self, since_ms: int | None, reason: str) -> None:
        """The trainer and the last good weights go back to the fallback (the cold-start
        weights), the last weights that beat control are forgotten, and the learner boosts from
        there (see :meth:`drift`; ``since_ms``: the replayed rewards decided since then are
        kept and learned again). The next publish says ``reason`` as ``restarted``."""
        self._restart_reason = reason
        self.scorer.load_state_dict(clone_weights(self._fallback))
        self._last_good = clone_weights(self._fallback)
        self._beat_control = None
        self._boost(self.config.drift_gamma_head_start, since_ms)

    def drift(self, now: float | None = None, since_ms: int | None = None) -> None:
        """Signal a drift (from a detector). For the next ``boost_rewards`` trained rewards the
        learner then serves ``boost_epsilon`` and learns at ``boost_lr_factor`` times ``lr``, from
        a fresh optimizer; the guardrail slice and the replay buffer are emptied (the replay
        keeps the rewards since ``since_ms``, see below): rewards from
        before the drift would judge candidates by a world that is gone and roll back the very
        updates that adapt to the new one; until ``guardrail_min_records`` new guardrail rewards
        have arrived, candidates are accepted. ``now`` is not used.

        With ``drift_restart`` (the default) the trainer and the last good weights also go back
        to the cold-start weights, and the last weights that beat control are forgotten: the
        model then serves the static flow's choices while it relearns, instead of the choices of
        a world that is gone (on the learning twin those were below the static flow until the
        new world was learned; with the service's detector, restarting recovered 3 of 4 seeds
        within 5,000 users against 2 of 4). A false alarm then costs what was learned, hence a
        detector tuned to rarely fire on a stationary stream.

        ``since_ms`` (the detector's estimate of when the change began, as decision time; used
        with ``drift_restart`` only): the replayed rewards of decisions made since then are kept,
        counted in the restarted weights' evidence and owed as many replayed batches as new
        rewards, so the restarted weights learn them at once; they come from the new world (a
        detector needs some hundreds of rewards to be sure). They do not count as learned for
        ``gamma`` and the step size, which start over."""
        if self.config.drift_restart:
            self._restart_from_fallback(since_ms, "drift")
        else:
            self._boost(0, since_ms)
        if self.control is not None:  # the decisions of the versions before judge a model and
            self.control.restart(min_version=self.version + 1)  # a world that are gone
        self.counters["drifts"] += 1

    # ------------------------------------------------------------------- guarding, publishing

    def set_cold_start(self, bundle: ModelBundle) -> None:
        """The weights to roll back to when the model is below control and no weights beat
        control since (the cold-start model, whose greedy choice is the static flow's).
        ``ValueError`` unless ``bundle`` has the learner's architecture, actions and schema
        (build it with ``cold_start_bundle(schema, catalog, hidden=...)``)."""
        self._check_fits(bundle, "the cold-start bundle's")
        self._fallback = clone_weights(bundle.scorer.state_dict())
        self._fallback_kind = "cold_start"

    @property
    def beat_control_version(self) -> int | None:
        """The version whose weights last beat control (what a rollback below control restores;
        ``None``: none since the start or the last such rollback, which then restores the cold
        start)."""
        return None if self._beat_control is None else self._beat_control[0][1]

    def _compare_with_control(self) -> ControlComparison | None:
        """The comparison with control; keeps the weights being served when they beat it.
        Paused (neither fires nor beats) while the learner explores on purpose."""
        if self.control is None:
            return None
        comparison = self.control.compare()
        if self._boosted() or self._schedule.explored:
            return replace(comparison, fires=False, beats=False, paused=True)
        if comparison.beats:
            key = (self.lineage.get("promotion", 0), self.version)
            if self._beat_control is None or self._beat_control[0] != key:
                self._beat_control = (key, clone_weights(self._last_good))
        return comparison

    def _roll_back_below_control(self) -> str:
        """Restore the last weights that beat control (or the cold start) into the trainer and
        the last good weights, and boost; returns what was restored."""
        if self._beat_control is not None:
            (_, version), weights = self._beat_control
            restored = f"version {version}"
            self._beat_control = None  # used once: if they fire again, the cold start is next
        else:
            weights, restored = self._fallback, self._fallback_kind
        self.scorer.load_state_dict(clone_weights(weights))
        self._last_good = clone_weights(weights)
        self._boost()
        self.counters["control_rollbacks"] += 1
        return restored

    def _guard_candidate(self) -> GuardrailCheck:
        """The candidate against the last good weights on the guardrail slice: accepted (it
        becomes the last good weights) or rolled back (the last good weights go back into the
        trainer, with a fresh optimizer; the rewards learned since are not replayed again)."""
        cfg = self.config
        last_good = Scorer(self._arch["dim"], self._arch["slot_sizes"], self._arch["hidden"])
        last_good.load_state_dict(self._last_good)
        check = check_candidate(
            self.scorer,
            last_good,
            list(self._guardrail),
            self._slot_index,
            self._action_index,
            min_records=cfg.guardrail_min_records,
            tolerance=cfg.guardrail_tolerance,
            eval_min_propensity=cfg.eval_min_propensity,
        )
        if not check.breached and not _finite(self.scorer.state_dict()):
            # weights gone NaN or infinite, which a check too small to judge let through: never
            # the last good weights (replicas refuse such a model file)
            check = replace(check, breached=True)
        if check.breached:
            self.scorer.load_state_dict(self._last_good)
            self._renew_optimizer(settle=None)
            self._replay.drop_since_good()
            self.counters["rollbacks"] += 1
        else:
            self._last_good = clone_weights(self.scorer.state_dict())
        return check

    def publish_interval(self) -> float:
        """Seconds from one publish to the next at the soonest: ``publish_interval_s``, times
        ``boost_publish_factor`` while the learner is boosted.

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
        >>> from ray_app.learn import LearnerConfig, OnlineLearner
        >>> from ray_app.model import cold_start_bundle
        >>> c = load_catalog()
        >>> learner = OnlineLearner(cold_start_bundle(FeatureSchema.from_catalog(c), c),
        ...                         LearnerConfig(publish_interval_s=2.0, warmup_rewards=100))
        >>> learner.publish_interval()  # warming up: an untrained model
        0.5
        >>> learner.counters["trained"] += 100; learner.publish_interval()
        2.0
        >>> learner.drift(); learner.publish_interval()
        0.5
        """
        cfg = self.config
        if self._boosted():
            return cfg.publish_interval_s * cfg.boost_publish_factor
        return cfg.publish_interval_s

    def republish(self) -> None:
        """Publish the last good weights at the next chance, updates or not (an adopted
        promotion under a number of the learner's own; a publish that could not be written)."""
        self._republish = True

    def maybe_publish(self, now: float | None = None) -> ModelBundle | None:
        """A new bundle to serve, or ``None``: not before :meth:`publish_interval` after the last
        publish, and only if there were updates (or the exploration to serve changed, or the
        control guardrail fired) since.

        First the treatment arm is compared with control (see the module docstring): below it,
        the last weights that beat control (or the cold start) are published
        (``metadata["rollback"] == "below_control"``, ``metadata["rolled_back_to"]`` says which)
        and only decisions of this version and later count for treatment from now on. Otherwise
        the candidate is checked on the guardrail slice; a breach rolls it back and re-publishes
        the last good weights (``metadata["rollback"] == "loss"``). ``metadata["rolled_back"]``
        is True after either. The version is the last published one plus one.
        """
        now = self._clock() if now is None else now
        last = self._last_publish_at
        # a clock stepped back (NTP, or a state saved on a host whose clock ran ahead) reads as
        # time to publish, not as a wait as long as the step
        if last is not None and 0 <= now - last < self.publish_interval():
            return None
        control = self._compare_with_control()
        restored: str | None = None
        if control is not None and control.fires:
            restored = self._roll_back_below_control()
            check = GuardrailCheck.unjudged(0, self.config.guardrail_tolerance)
            rollback: str | None = "below_control"
        else:
            if (
                self._pending_updates == 0
                and self.exploration(now) == self._published_epsilon
                and not self._republish
            ):
                return None
            check = self._guard_candidate()
            rollback = "loss" if check.breached else None
        return self._publish(now, check, control, rollback, restored)

    def _publish(
        self,
        now: float,
        check: GuardrailCheck,
        control: ControlComparison | None,
        rollback: str | None,
        restored: str | None,
    ) -> ModelBundle:
        """The last good weights as the next version (see :meth:`maybe_publish`)."""
        epsilon = self.exploration(now)
        self._replay.mark_good()
        self.version += 1
        self.counters["publishes"] += 1
        boosted = self._boosted()
        # after a rollback below control, and at the first version served at the base epsilon
        # after a boost, the comparison with control starts again on this version's decisions
        if self.control is not None and (
            rollback == "below_control" or (self._schedule.explored and not boosted)
        ):
            self.control.restart(min_version=self.version)
        self._schedule.explored = boosted
        metadata = {
            "kind": "online",
            "updates": self.counters["updates"],
            "rewards": self.counters["trained"],
            "learned": self.learned,
            "gamma_head_start": self._schedule.head_start,
            "new_updates": self._pending_updates,
            "new_rewards": self._pending_rewards,
            "guardrail": check.as_dict(),
            "control": None if control is None else control.as_dict(),
            "rolled_back": rollback is not None,
            "rollback": rollback,
            "rolled_back_to": restored,
            "restarted": self._restart_reason,
            "rollbacks": self.counters["rollbacks"],
            "control_rollbacks": self.counters["control_rollbacks"],
            "epsilon": epsilon,
            "gamma": round(self.gamma(), 3),
            "optimism": self.config.optimism,
            "offsets": {str(p): o for p, o in sorted(self._offsets.items())},
            **self.lineage,
        }
        bundle = self._bundle(self._last_good, self.version, metadata)
        bundle.created_at = float(now)
        self._last_publish_at = float(now)
        self._republish = False
        self._pending_updates = 0
        self._pending_rewards = 0
        self._restart_reason = None
        self._published_epsilon = epsilon
        self.last_check = check
        self.last_control = control
        return bundle


def _finite(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether every weight of ``state`` is a finite number."""
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
