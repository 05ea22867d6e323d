"""The online learner's pure core: reward records in, importance-weighted updates, guarded publishes.

:class:`OnlineLearner` holds a copy of a :class:`~ray_app.model.ModelBundle`'s scorer and trains
it on lists of :class:`~ray_app.records.RewardRecord`; an actor (or a test) drives it with
records and a clock, and ships what :meth:`OnlineLearner.maybe_publish` returns to the decision
replicas. Nothing here does I/O.

**Learning.** :meth:`~OnlineLearner.learn` takes mini-batches of ``batch_size`` records (a
shorter one, as a stream hands over a few rewards at a time, is topped up with rewards drawn from
the replay buffer) and does one optimizer step (AdamW or SGD, with ``weight_decay``) per batch on
the binary cross-entropy between the logit of the *logged* action and its reward, each record
weighted by ``1 / max(propensity, min_propensity)`` and the weights normalized to mean 1 within
the batch: inverse propensity weighting, so actions a policy rarely shows count more than their
share of the logs, clipped to bound the variance. The
default clip is tight (``min_propensity=0.5``: weights in [1, 2]) because the scorer models the
reward of every (context, action) pair, which the logs identify without reweighting when the
features hold what the policy saw; wide weights mostly add gradient noise (measured on simulator
v2: with ``min_propensity=0.05``, 8-19% of greedy choices were still wrong after 5k users; 0.4-3%
with 0.5).

Records are skipped, and counted, when they belong to the ``holdout`` arm (it is left out of
learning), when they are invalid (unknown slot or action, wrong feature count, non-finite
values) or when their ``decision_id`` was seen before. Dedupe memory is bounded: the learner keeps
a 64-bit hash of the last ``dedupe_horizon`` decision ids (about 80 bytes each in memory, 8 in
:meth:`~OnlineLearner.state_dict`: the default 1M ids take about 80 MB), which covers any replay
of a reward topic shorter than that; upstream, the reward join is already exactly-once.

**Guardrail.** A deterministic ``guardrail_share`` of the records (by a hash of the decision id,
see :meth:`~OnlineLearner.in_guardrail`; 0 by default, when every record is trained on and this
check never judges) is never trained on: the last ``guardrail_window`` of
them form a holdout slice on which every candidate is compared with the last good weights before
it is published. The metric is the importance-weighted log loss of the logged action; the
report also holds an IPS estimate of the greedy policy's value. A candidate whose loss exceeds
the last good one's by more than ``guardrail_tolerance`` (relative) is **rolled back**: the last
good weights go back into the trainer (with a fresh optimizer), and they are published again
under a new version, so versions always increase. Below ``guardrail_min_records`` records the
check cannot judge and the candidate is accepted.

**Guardrail against the static flow.** The loss guardrail only compares the learner with its
own past. Every reward also feeds a :class:`~ray_app.learn.guardrail.ControlGuardrail`, which
compares the live completion rate of the ``treatment`` arm (the one this learner's model
serves) with the ``control`` arm's (the catalog's static flow) over the last
``control_window`` rewards of each. At each publish: when treatment is at least as good as
control (with ``control_min_treatment`` and ``control_min_control`` rewards), the weights
being served are kept as *the last weights that beat control*; when treatment is
significantly worse (one-sided two-proportion test, ``z < -control_z``), the learner **rolls
back** to those weights, or to the cold-start model (a given ``cold_start`` bundle, see
:meth:`~OnlineLearner.set_cold_start`; the initial bundle's weights if that was a cold start)
if none beat control since, explores as after a drift, and publishes them as a new version
``V`` (``metadata["rollback"] == "below_control"``, with the comparison in
``metadata["control"]``), counted in ``counters["control_rollbacks"]``. From then on only the
rewards of decisions made by versions ``>= V`` count for treatment, so the comparison needs
``control_min_treatment`` fresh rewards before it can fire again. A snapshot is used once: if
the weights it restored fire again before they beat control, the next rollback goes to the
cold start. (The window's rewards come from the decisions of the last few publishes, so the
snapshot is the newest weights of a run that beat control; under a slow decline they may
already be a little worse, and then the second rollback, to the cold start, follows.) While the
learner explores on purpose (the warm-up, the boost after a drift or a rollback) the
comparison is paused: exploring at ``boost_epsilon`` costs completions by design and must not
fire it; the first publish after the boost restarts it on its own decisions.

**Drift.** :meth:`~OnlineLearner.exploration` is the epsilon to serve: ``epsilon``, or
``boost_epsilon`` for the next ``boost_rewards`` trained rewards after
:meth:`~OnlineLearner.drift` was signalled or the control guardrail fired (and for the first
``warmup_rewards`` rewards of a learner that starts from a cold-start model); for as long,
updates use ``boost_lr_factor * lr`` from a fresh optimizer, and the guardrail slice and the
replay buffer start empty (rewards from the old world must not veto adapting to the new one).
With ``drift_restart`` (the default) a drift also puts the cold-start weights back (the static
flow, explored around with a ``gamma`` head start) instead of the old world's.
Counted in rewards, not seconds, the boost costs as many users at any traffic and always lasts
long enough to learn from.

**Where each part lives.** This module: the learner, what it admits and how it batches.
:mod:`~ray_app.learn.objective`: the loss and the IPS estimate; :mod:`~ray_app.learn.update`:
one optimizer step; :mod:`~ray_app.learn.memory`: dedupe ids and the replay buffer;
:mod:`~ray_app.learn.publishing`: exploration, both guardrails and :meth:`maybe_publish
<OnlineLearner.maybe_publish>` (:mod:`~ray_app.learn.exploration`,
:mod:`~ray_app.learn.loss_guardrail`, :mod:`~ray_app.learn.guardrail`);
:mod:`~ray_app.learn.config`: :class:`LearnerConfig`; :mod:`~ray_app.learn.learner_state`: the
saved state.

>>> from ray_app.catalog import load_catalog
>>> from ray_app.features import FeatureSchema
>>> from ray_app.model import cold_start_bundle
>>> catalog = load_catalog()
>>> schema = FeatureSchema.from_catalog(catalog)
>>> learner = OnlineLearner(cold_start_bundle(schema, catalog), LearnerConfig(batch_size=8))
>>> x = schema.featurize({"stepsCompleted": ["welcome"]}).tolist()
>>> records = [RewardRecord(f"d{i}", "u1", "next_step", "goals", 3, "treatment", 1 / 6, x,
...                         1.0, "completed", 0, 1000, 0) for i in range(40)]
>>> report = learner.learn(records, offsets={0: 40})
>>> report.trained + report.guardrail == 40, report.updates >= 4
(True, True)
>>> learner.learn(records[:5]).duplicates
5
>>> bundle = learner.maybe_publish(now=1_000.0)
>>> bundle.version, bundle.metadata["kind"], bundle.metadata["rolled_back"]
(1, 'online', False)
>>> learner.maybe_publish(now=1_001.0) is None     # within publish_interval_s
True
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ray_app.learn import learner_state
from ray_app.learn.config import COUNTERS as _COUNTERS
from ray_app.learn.config import LearnerConfig, LearnerStateError
from ray_app.learn.exploration import BoostSchedule
from ray_app.learn.guardrail import ControlComparison, ControlGuardrail
from ray_app.learn.learner_state import (
    clone_weights,
    gamma_head_start_of,
    learned_of,
    lineage_of,
    trained_weights,
)
from ray_app.learn.loss_guardrail import GuardrailCheck
from ray_app.learn.memory import (
    JsonArray,
    PackedReward,
    ReplayBuffer,
    SeenIds,
    pack_reward,
    packed_features,
    peek_reward,
    unpack_reward,
)
from ray_app.learn.publishing import Publishing
from ray_app.learn.update import (
    LearnReport,
    feature_matrix,
    predicted_rows,
    valid_record,
    weighted_step,
)
from ray_app.model import ModelBundle, Scorer, score_batch
from ray_app.records import RewardRecord

__all__ = [
    "GuardrailCheck",
    "LearnReport",
    "LearnerConfig",
    "LearnerStateError",
    "OnlineLearner",
]

log = logging.getLogger(__name__)

#: New rewards over which settling weights are judged (:mod:`ray_app.learn.settling`): a few
#: mini-batches, seconds of traffic.
SETTLE_JUDGE_REWARDS = 1024
#: The least :func:`~ray_app.learn.settling.information` of settling weights that go on settling.
#: On the learning twin (4 worlds, 4 seeds) the model files of 3,000 and 5,000 users scored
#: 0.014-0.091 on their own world's next 1,024 rewards, those of 5,000 users 0.000-0.009 on the
#: other worlds but for 4 seeds of 45 (0.012-0.030); models of 1,500 users 0.001-0.048. Over 512
#: rewards the noise was twice as large (own world 0.013-0.092, but a model of the `make demo`
#: world scored 0.019; others up to 0.027).
SETTLE_MIN_INFORMATION = 0.01


class OnlineLearner(Publishing):
    """Trains a copy of ``bundle``'s scorer on reward records and publishes guarded versions.

    ``clock`` (seconds; default :func:`time.time`) is read only where a method's ``now`` is left
    out; published bundles take it as ``created_at``. ``cold_start``: the cold-start bundle of
    the same schema, catalog and architecture, what the guardrail against the static flow rolls
    back to when no weights beat control (default: ``bundle`` itself if it is a cold start, else
    the weights the learner starts from; see :meth:`set_cold_start`). Not thread-safe: one
    caller drives it.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        config: LearnerConfig | None = None,
        clock: Callable[[], float] = time.time,
        cold_start: ModelBundle | None = None,
    ) -> None:
        self.config = cfg = config or LearnerConfig()
        self._clock = clock
        self._bind(bundle)
        #: The trainer's weights: the candidate of the next publish.
        self.scorer: Scorer = copy.deepcopy(bundle.scorer)
        self._last_good = clone_weights(self.scorer.state_dict())
        #: The version of the last published bundle (the given bundle's at first).
        self.version = int(bundle.version)
        #: The registry promotion the weights descend from (carried into every publish, so
        #: replicas order them after it; see :attr:`ModelBundle.serving_rank`).
        self.lineage: dict[str, int] = lineage_of(bundle.metadata)
        self._replay = ReplayBuffer[RewardRecord](
            cfg.replay_size, pack=pack_reward, unpack=unpack_reward, peek=peek_reward
        )
        self._seen = SeenIds(cfg.dedupe_horizon)
        self._guardrail: deque[RewardRecord] = deque(maxlen=cfg.guardrail_window)
        self._guardrail_json = JsonArray[RewardRecord]()  # its saved form, encoded once a reward
        self._offsets: dict[int, int] = {}
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._pending_updates = 0
        self._pending_rewards = 0
        self._restarted_in_call = False  # set by _train when the fallback took over in it
        self._last_publish_at: float | None = None
        self._published_epsilon = cfg.epsilon
        #: Publish at the next chance even without updates (the weights of an adopted promotion,
        #: under a number of the learner's own: :meth:`adopt`).
        self._republish = False
        #: The settling judge's last figure (:mod:`ray_app.learn.settling`; ``None``: none yet).
        self.settle_information: float | None = None
        #: Why the weights last went back to the cold start ("drift", "foreign_weights"), for
        #: the next publish's metadata (``restarted``).
        self._restart_reason: str | None = None
        cold = bundle.metadata.get("kind") == "cold_start"
        self._schedule = BoostSchedule(
            cfg.warmup_rewards,
            cfg.boost_rewards,
            warmup=cfg.warmup_rewards > 0 and cold,
            explore_from=-learned_of(bundle.metadata),  # trained weights go on from their lineage
            head_start=gamma_head_start_of(bundle.metadata),
        )
        self._renew_optimizer(settle=trained_weights(bundle.metadata))
        #: The guardrail check of the last publish (``None`` before the first).
        self.last_check: GuardrailCheck | None = None
        #: The guardrail against the static flow (``None`` when ``control_z`` is 0).
        self.control: ControlGuardrail | None = (
            ControlGuardrail(
                window=cfg.control_window,
                control_window=cfg.control_window,
                min_treatment=cfg.control_min_treatment,
                min_control=cfg.control_min_control,
                z=cfg.control_z,
                treatment_arms=cfg.treatment_arms,
                control_arm=cfg.control_arm,
            )
            if cfg.control_z > 0
            else None
        )
        #: The comparison with control at the last publish (``None`` before the first).
        self.last_control: ControlComparison | None = None
        # the last weights that beat control: ((promotion, version) served, weights)
        self._beat_control: tuple[tuple[int, int], dict[str, torch.Tensor]] | None = None
        self._fallback = clone_weights(self.scorer.state_dict())
        self._fallback_kind = "cold_start" if cold else "initial"
        if cold_start is not None:
            self.set_cold_start(cold_start)

    def _bind(self, bundle: ModelBundle) -> None:
        """Take the bundle's architecture, schema, catalog and actions (what records map to)."""
        arch = bundle.scorer.architecture
        if not bundle.slot_actions:
            raise ValueError("the bundle names no slot_actions: the learner cannot map records")
        sizes = [len(ids) for ids in bundle.slot_actions.values()]
        if sizes != list(arch["slot_sizes"]):
            raise ValueError(
                f"the bundle's slot_actions ({sizes} actions) do not fit its heads "
                f"({arch['slot_sizes']})"
            )
        self._arch = arch
        self._schema_hash = bundle.schema_hash
        self._catalog_digest = bundle.catalog_digest
        self._slot_actions = {name: list(ids) for name, ids in bundle.slot_actions.items()}
        self._slot_index = {name: i for i, name in enumerate(self._slot_actions)}
        self._action_index = {
            name: {a: j for j, a in enumerate(ids)} for name, ids in self._slot_actions.items()
        }

    # ------------------------------------------------------------------------------ learning

    def in_guardrail(self, decision_id: str) -> bool:
        """Whether a decision's reward goes to the guardrail slice (never trained on).

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
        >>> from ray_app.model import cold_start_bundle
        >>> c = load_catalog()
        >>> bundle = cold_start_bundle(FeatureSchema.from_catalog(c), c)
        >>> learner = OnlineLearner(bundle, LearnerConfig(guardrail_share=0.1))
        >>> share = sum(learner.in_guardrail(f"d{i}") for i in range(10_000)) / 10_000
        >>> 0.09 < share < 0.11
        True
        >>> none = OnlineLearner(bundle)  # by default every reward trains
        >>> sum(none.in_guardrail(f"d{i}") for i in range(10_000))
        0
        """
        if self.config.guardrail_share <= 0.0:
            return False
        h = hashlib.blake2b(
            f"{self.config.guardrail_salt}\x1f{decision_id}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(h, "big") / 18446744073709551616.0 < self.config.guardrail_share

    def learn(
        self,
        records: Iterable[RewardRecord],
        offsets: Mapping[int, int] | None = None,
        now: float | None = None,
    ) -> LearnReport:
        """Train on ``records`` (see the module docstring); ``offsets`` (partition -> next offset
        of the reward topic that these records reach) are stored with the state, so that a
        restarted learner knows where to resume reading. Every new record of a treatment or the
        control arm (training and guardrail slice alike) also feeds :attr:`control`. ``now`` is
        not used (the boosts are counted in rewards); kept for callers that pass it."""
        batch, counts, taken = self._admit(records)
        lr = self._set_lr()
        updates, loss_sum = self._train(batch)  # counts "trained" as it goes
        if self._restarted_in_call:
            lr = self._optimizer.param_groups[0]["lr"]
        trained = len(batch)
        if offsets:
            self._offsets.update({int(p): int(o) for p, o in offsets.items()})
        for name, n in (*counts.items(), ("updates", updates)):
            self.counters[name] += n
        self._pending_updates += updates
        self._pending_rewards += trained
        return LearnReport(
            trained=trained,
            updates=updates,
            loss=loss_sum / trained if trained else None,
            lr=lr,
            taken=tuple(taken),
            **counts,
        )

    def _admit(
        self, records: Iterable[RewardRecord]
    ) -> tuple[list[RewardRecord], dict[str, int], list[RewardRecord]]:
        """The records to train on, after the holdout arm, invalid records, duplicates and the
        guardrail slice are taken out (and counted), and every record taken (those to train on
        and the guardrail slice's); new records feed :attr:`control`."""
        counts = dict.fromkeys(("received", "guardrail", "holdout", "duplicates", "invalid"), 0)
        batch: list[RewardRecord] = []
        taken: list[RewardRecord] = []
        for r in records:
            counts["received"] += 1
            if r.arm == self.config.holdout_arm:
                counts["holdout"] += 1
            elif not valid_record(r, self._slot_actions, self._arch["dim"], self._schema_hash):
                counts["invalid"] += 1
            elif not self._seen.add(r.decision_id):
                counts["duplicates"] += 1
            else:
                taken.append(r)
                if self.control is not None:
                    self.control.observe(r)
                if self.in_guardrail(r.decision_id):
                    self._guardrail.append(r)
                    counts["guardrail"] += 1
                else:
                    batch.append(r)
        return batch, counts, taken

    def _set_lr(self) -> float:
        """The step size for the rewards trained on now (boost, decay with what was learned,
        settling), set on the optimizer; returned."""
        cfg = self.config
        lr = cfg.lr * (cfg.boost_lr_factor if self._boosted(None) else 1.0)
        if cfg.lr_decay_rewards > 0:
            lr *= (1.0 + self.learned / cfg.lr_decay_rewards) ** -cfg.lr_decay_power
        lr *= self._schedule.settle(
            self.counters["trained"], cfg.settle_lr_factor, cfg.settle_rewards
        )
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _train(self, batch: list[RewardRecord]) -> tuple[int, float]:
        """Mini-batch steps on ``batch``, topped up and followed by replay; returns (steps,
        summed loss of the new rewards). ``counters["trained"]`` counts each mini-batch once
        it is trained on: a restart from the fallback weights in the middle of a long batch
        (weights learned elsewhere, :meth:`_judge_settling`) starts its boost and its schedule
        from the rewards trained so far, and the rest of the batch at the boost's step size."""
        cfg = self.config
        updates = 0
        loss_sum = 0.0
        replaying = cfg.replay_size > 0
        self._restarted_in_call = False
        for start in range(0, len(batch), cfg.batch_size):
            chunk = batch[start : start + cfg.batch_size]
            if self._schedule.settle_evidence is not None:
                foreign = self.counters["foreign_weights"]
                self._judge_settling(chunk)
                if self.counters["foreign_weights"] != foreign and self._fallback_kind == (
                    "cold_start"
                ):  # restarted: the rest of the batch at the restarted schedule's step size
                    self._restarted_in_call = True
                    self._set_lr()
            # A short chunk (the stream hands over a few rewards at a time) is topped up with
            # replayed rewards: every step sees a full mini-batch, so Adam's step (about lr
            # whatever the batch) is not taken on the noise of a handful of recent rewards.
            fill = min(cfg.batch_size - len(chunk), len(self._replay)) if replaying else 0
            loss_sum += self._step(chunk, self._replay.sample(fill), fresh=len(chunk))
            updates += 1
            self.counters["trained"] += len(chunk)
            if replaying:
                # replay in proportion to the new rewards, not to how often learn() is called
                self._replay.add(chunk, credit=cfg.replay_steps * len(chunk) / cfg.batch_size)
                for replayed in self._replay.owed_batches(cfg.batch_size, float(cfg.replay_steps)):
                    self._step([], replayed)
                    updates += 1
        return updates, loss_sum

    def _judge_settling(self, chunk: list[RewardRecord]) -> None:
        """Predict new rewards by the settling weights before training on them (see
        :mod:`ray_app.learn.settling`); log the verdict."""
        cfg = self.config
        rows = predicted_rows(self.scorer, chunk, self._slot_index, cfg.min_propensity)
        info = self._schedule.judge_settling(rows, SETTLE_JUDGE_REWARDS, SETTLE_MIN_INFORMATION)
        if info is None:
            return
        self.settle_information = info
        if info >= SETTLE_MIN_INFORMATION:
            log.info(
                "the trained weights predict this world's first new rewards (information %.3f "
                ">= %.3f): they settle at a lower step size",
                info,
                SETTLE_MIN_INFORMATION,
            )
            return
        self.counters["foreign_weights"] += 1
        cold = self._fallback_kind == "cold_start"
        log.warning(
            "the trained weights the learner started from (or adopted) hardly predict this "
            "world's first %d rewards (information %.3f < %.3f): learned elsewhere, %s",
            SETTLE_JUDGE_REWARDS,
            info,
            SETTLE_MIN_INFORMATION,
            "the learner restarts from the cold-start weights, as after a drift, and relearns "
            "from the rewards so far"
            if cold
            else "they relearn at the full step size",
        )
        if cold:  # every reward so far is this world's: all are kept and learned again
            self._restart_from_fallback(since_ms=0, reason="foreign_weights")

    def _step(
        self,
        records: list[RewardRecord],
        replayed: Sequence[PackedReward] = (),
        *,
        fresh: int | None = None,
    ) -> float:
        """One optimizer step on ``records`` followed by ``replayed`` (entries of the replay
        buffer, whose features are filled in from their sparse form); returns the summed
        weighted loss of the first ``fresh`` of them (default: all), the new rewards a report
        averages over and the scorer's evidence counts (replayed rewards were counted when
        they were new)."""
        dim = self._arch["dim"]
        x = feature_matrix(records, dim)
        if replayed:
            x = np.concatenate([x, packed_features(replayed, dim)])
        return weighted_step(
            self.scorer,
            self._optimizer,
            [*records, *map(peek_reward, replayed)],
            self._slot_index,
            self.config.min_propensity,
            fresh,
            observe=fresh or 0,
            features=x,
        )

    # ----------------------------------------------------------------------------- scoring

    def scores(self, features: np.ndarray, slot: str) -> np.ndarray:
        """The trainer's logits ``[B, n_actions]`` for features ``[B, dim]`` (or one row).

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
        >>> from ray_app.model import cold_start_bundle
        >>> c = load_catalog(); schema = FeatureSchema.from_catalog(c)
        >>> OnlineLearner(cold_start_bundle(schema, c)).scores(schema.featurize(None), "next_step").shape
        (1, 7)
        """
        return score_batch(self.scorer, features, self._slot_index[slot])

    def adopt(self, bundle: ModelBundle) -> None:
        """Continue from ``bundle`` (a newly promoted registry version): its weights become the
        trainer's and the last good ones, its version and promotion the current ones; offsets,
        dedupe memory, counters and the guardrail slice are kept, the replay buffer (rewards
        learned into the old weights) and the optimizer's moments are dropped; exploration
        (``gamma``) and the step size go on from the bundle's own ``learned``; the weights are
        published again at the next chance as the learner's next version (numbered above both
        its own and the bundle's), and the comparison with control starts on that version's
        decisions; the last weights that beat control are forgotten (the old lineage's). A
        promotion with another number of hidden units (a model of ``onramp train`` under
        another ``learn.hidden`` than the learner's state was written with: a learner resumed
        from before the scorer lost its deep part, adopting a wide model) is taken with its own
        shape (:meth:`_reshape`). ``ValueError`` if it does not have the learner's features and
        actions.

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
        >>> from ray_app.model import cold_start_bundle
        >>> c = load_catalog(); schema = FeatureSchema.from_catalog(c)
        >>> learner = OnlineLearner(cold_start_bundle(schema, c))
        >>> promoted = cold_start_bundle(schema, c, seed=4)
        >>> promoted.version, promoted.metadata = 7, {"promotion": 3, "registryVersion": 7}
        >>> learner.adopt(promoted)
        >>> learner.version, learner.lineage, learner.last_good().serving_rank
        (7, {'promotion': 3, 'registryVersion': 7}, (3, 7))
        >>> learner.maybe_publish().serving_rank  # at once, under a number of its own
        (3, 8)
        """
        self._check_fits(bundle, "the bundle's", any_hidden=True)
        if bundle.scorer.hidden != self._arch["hidden"]:
            self._reshape(bundle)
        self.scorer.load_state_dict(clone_weights(bundle.scorer.state_dict()))
        self._last_good = clone_weights(self.scorer.state_dict())
        # the learner stays under its own catalog: the bundle fits its slots and actions
        # (_check_fits), and a digest taken from another catalog would make the next start
        # refuse the learner's saved state as foreign.
        # Its numbers go on from the higher of its own and the bundle's, and the adopted weights
        # are published again at once under the next: decisions and rewards carry only the
        # version, and a promotion (a rollback to an old version) numbered below the learner
        # used to give the learner's next versions numbers that the old lineage's decisions
        # carried too, whose late rewards then judged the promoted weights against control
        self.version = max(self.version, int(bundle.version))
        self.republish()
        self._beat_control = None  # the old lineage's: not what a rollback should restore
        self.lineage = lineage_of(bundle.metadata)
        self._schedule.explore_from = self.counters["trained"] - learned_of(bundle.metadata)
        self._schedule.head_start = gamma_head_start_of(bundle.metadata)
        self._renew_optimizer(settle=trained_weights(bundle.metadata))
        self._replay.clear()
        self._pending_updates = 0
        self._pending_rewards = 0
        if self.control is not None:
            # judge the promoted weights by the decisions of the version they are published
            # again as: none of the old lineage's
            self.control.restart(min_version=self.version + 1)

    def _reshape(self, bundle: ModelBundle) -> None:
        """Take another number of hidden units (:meth:`adopt` loads the weights next). The
        cold-start weights keep their logits: every tensor of the same shape is kept and the
        heads' weights are zero (the new trunk is seeded and random, as a cold start's); initial
        weights of the old shape cannot be carried over, so the adopted ones take their place.
        The weights that beat control were of the old shape and are dropped: a rollback below
        control then restores the cold start."""
        arch, old = bundle.scorer.architecture, self._fallback
        self.scorer = Scorer(**arch)
        self._arch = dict(arch)
        fallback = self.scorer.state_dict()
        if self._fallback_kind == "cold_start":
            for name, value in fallback.items():
                if name in old and old[name].shape == value.shape:
                    value.copy_(old[name])
                elif name.startswith("heads.") and name.endswith(".weight"):
                    value.zero_()
            self._fallback = clone_weights(fallback)
        else:
            self._fallback = clone_weights(bundle.scorer.state_dict())
        self._beat_control = None
        log.warning("the learner takes the promoted model's shape: %d hidden units", arch["hidden"])

    @property
    def architecture(self) -> dict[str, Any]:
        """The scorer's architecture (``dim``, ``slot_sizes``, ``hidden``)."""
        return dict(self._arch)

    # ------------------------------------------------------------------------------- restart

    @property
    def offsets(self) -> dict[int, int]:
        """Partition -> next offset of the reward topic, as last given to :meth:`learn`."""
        return dict(self._offsets)

    @property
    def slot_actions(self) -> dict[str, list[str]]:
        """Slot -> action ids in head order (for :meth:`RewardRecord.from_json`)."""
        return {k: list(v) for k, v in self._slot_actions.items()}

    @property
    def seen(self) -> int:
        """How many decision ids the dedupe memory holds (at most ``dedupe_horizon``)."""
        return len(self._seen)

    def state_dict(self) -> dict[str, Any]:
        """Everything a restarted learner needs (see :mod:`ray_app.learn.learner_state`):
        weights, optimizer state, last good weights, version, dedupe memory, reward offsets,
        guardrail slice, counters, the control guardrail's windows, the last weights that beat
        control and the cold-start weights (plain Python and tensors: ``torch.save``-able,
        readable with ``weights_only=True``)."""
        return learner_state.dump(self)

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        config: LearnerConfig | None = None,
        clock: Callable[[], float] = time.time,
        schema_hash: str | None = None,
        catalog_digest: str | None = None,
    ) -> OnlineLearner:
        """A learner that resumes where :meth:`state_dict` left off, under ``config`` (which may
        differ: a new learning rate applies; a different optimizer kind starts fresh).

        With ``schema_hash`` / ``catalog_digest`` (the current feature schema's and catalog's), a
        state saved under another one is refused: :class:`LearnerStateError` with
        ``context["reason"] == "foreign"``, ``context["field"]`` the one that differs and
        ``context["state"]`` / ``context["current"]`` both values."""
        try:
            learner_state.check_origin(state, schema_hash, catalog_digest)
            learner = cls(learner_state.bundle_of(state), config, clock)
            learner_state.restore(learner, state)
        except LearnerStateError:
            raise
        except Exception as exc:  # a bad state can fail in many ways; report one kind
            raise LearnerStateError(
                f"cannot restore the learner: {type(exc).__name__}: {exc}"
            ) from None
        return learner

    def to_bytes(self) -> bytes:
        """:meth:`state_dict` as bytes (``torch.save``)."""
        return learner_state.to_bytes(self.state_dict())

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        config: LearnerConfig | None = None,
        clock: Callable[[], float] = time.time,
        schema_hash: str | None = None,
        catalog_digest: str | None = None,
    ) -> OnlineLearner:
        """Restore from :meth:`to_bytes` (read with ``weights_only=True``: no pickled code runs);
        ``schema_hash`` / ``catalog_digest``: see :meth:`from_state`.

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
        >>> from ray_app.model import cold_start_bundle
        >>> c = load_catalog()
        >>> learner = OnlineLearner(cold_start_bundle(FeatureSchema.from_catalog(c), c))
        >>> OnlineLearner.from_bytes(learner.to_bytes()).version
        0
        >>> OnlineLearner.from_bytes(learner.to_bytes(), schema_hash="another")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ray_app.learn.config.LearnerStateError: the learner state was saved under another feature schema (schema_hash ... the current one is another)
        >>> OnlineLearner.from_bytes(b"junk")
        Traceback (most recent call last):
        ...
        ray_app.learn.config.LearnerStateError: cannot read the learner state: not a torch.save file of plain data
        """
        state = learner_state.read_bytes(data)
        return cls.from_state(state, config, clock, schema_hash, catalog_digest)
