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
see :meth:`~OnlineLearner.in_guardrail`) is never trained on: the last ``guardrail_window`` of
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
Counted in rewards, not seconds, the boost costs as many users at any traffic and always lasts
long enough to learn from.

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
import io
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from ray_app.errors import OnrampError
from ray_app.experiments import CONTROL, HOLDOUT
from ray_app.learn.guardrail import TREATMENT, ControlComparison, ControlGuardrail
from ray_app.model import ModelBundle, Scorer, score_batch
from ray_app.records import RewardRecord

__all__ = [
    "GuardrailCheck",
    "LearnReport",
    "LearnerConfig",
    "LearnerStateError",
    "OnlineLearner",
]

_STATE_KIND = "onramp.learner/1"
_COUNTERS = (
    "received",
    "trained",
    "duplicates",
    "holdout",
    "guardrail",
    "invalid",
    "updates",
    "publishes",
    "rollbacks",
    "control_rollbacks",
    "drifts",
    "refused_at_start",
)
"""Counter names. ``rollbacks``: loss-guardrail rollbacks; ``control_rollbacks``: rollbacks of
the guardrail against the static flow; ``refused_at_start``: learner states or model files
the service found on start and did not adopt (another feature schema or catalog, unreadable)."""


class LearnerStateError(OnrampError):
    """A learner state (``state_dict`` / bytes) that cannot be restored, and why."""


@dataclass(frozen=True)
class LearnerConfig:
    """How the learner trains, guards and publishes (see the module docstring)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 0.01
    batch_size: int = 64
    min_propensity: float = 0.5
    """Training: importance weights are ``1 / max(propensity, min_propensity)``."""
    eval_min_propensity: float = 0.05
    """The guardrail's loss and IPS value: the same weights clipped much wider (an estimate of a
    policy's value needs the real ratios; only the training step trades them for variance)."""
    guardrail_share: float = 0.1
    guardrail_window: int = 2_000
    guardrail_min_records: int = 100
    guardrail_tolerance: float = 0.1
    publish_interval_s: float = 5.0
    dedupe_horizon: int = 1_000_000
    epsilon: float = 0.1
    boost_epsilon: float = 0.5
    boost_rewards: int = 1_000
    """After a drift or a rollback to beat the static flow, serve ``boost_epsilon`` and learn at
    ``boost_lr_factor`` times ``lr`` until this many more rewards were trained on (0: no boost);
    counted like ``warmup_rewards``."""
    boost_lr_factor: float = 3.0
    gamma_scale: float = 10.0
    gamma_exponent: float = 0.5
    """The ``gamma`` published for a ``squarecb`` policy: ``gamma_scale * (1 + n) **
    gamma_exponent``, ``n`` the rewards trained on since the learner started from a cold model,
    or since the last drift or rollback below control (exploration starts over then); Vowpal
    Wabbit's defaults."""
    weight_decay: float = 0.3
    """Decoupled weight decay (AdamW; plain L2 for SGD) per step."""
    replay_size: int = 5_000
    """Recent trained rewards kept for replay (0: none). Emptied on drift."""
    replay_steps: int = 8
    """Extra mini-batches drawn from the replay buffer per ``batch_size`` new rewards (however
    the rewards are split over :meth:`~OnlineLearner.learn` calls): each reward is then
    learned from several times while it is recent, which online updates need here (a single
    pass over ε-greedy logs learns the rarely explored actions far too slowly)."""
    warmup_rewards: int = 1_000
    """A learner that starts from an untrained model (a cold-start bundle) explores as after a
    drift (``boost_epsilon``, ``boost_lr_factor``) until it has trained on this many rewards (0:
    no warm-up): with ``epsilon`` alone, a segment whose best action the first updates underrate
    sees that action ``epsilon / n`` of the time and stays on a worse one for thousands of users.
    Counted in rewards, not seconds, so it lasts as long at any traffic."""
    control_z: float = 3.09
    """The guardrail against the static flow fires when treatment's completion rate is below
    control's with ``z < -control_z`` (one-sided; 3.09: 0.1%); 0 turns it off."""
    control_window: int = 2_000
    """Rewards of each arm (treatment, control) that the comparison looks at, most recent."""
    control_min_treatment: int = 300
    control_min_control: int = 100
    """Rewards each window needs before the comparison can fire or a snapshot be taken."""
    treatment_arms: tuple[str, ...] = (TREATMENT,)
    """The arms that serve this learner's model (compared with ``control_arm``)."""
    control_arm: str = CONTROL
    guardrail_salt: str = "onramp-guardrail"
    holdout_arm: str = HOLDOUT

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        for name in (
            "lr",
            "publish_interval_s",
            "boost_lr_factor",
            "weight_decay",
            "control_z",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not (math.isfinite(self.gamma_scale) and self.gamma_scale > 0):
            raise ValueError(f"gamma_scale must be a number > 0, got {self.gamma_scale!r}")
        if not (math.isfinite(self.gamma_exponent) and 0 <= self.gamma_exponent <= 1):
            raise ValueError(f"gamma_exponent must be in [0, 1], got {self.gamma_exponent!r}")
        if not self.boost_lr_factor > 0:
            raise ValueError(f"boost_lr_factor must be > 0, got {self.boost_lr_factor!r}")
        for name in ("warmup_rewards", "boost_rewards"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in (
            "batch_size",
            "guardrail_window",
            "dedupe_horizon",
            "control_window",
            "control_min_treatment",
            "control_min_control",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.guardrail_min_records, int) and self.guardrail_min_records >= 1):
            raise ValueError(
                f"guardrail_min_records must be an integer >= 1, got {self.guardrail_min_records!r}"
            )
        for name in ("min_propensity", "eval_min_propensity", "epsilon", "boost_epsilon"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        for name in ("min_propensity", "eval_min_propensity"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not (0.0 <= self.guardrail_share < 1.0):
            raise ValueError(f"guardrail_share must be in [0, 1), got {self.guardrail_share!r}")
        if not (math.isfinite(self.guardrail_tolerance) and self.guardrail_tolerance >= 0):
            raise ValueError(
                f"guardrail_tolerance must be a number >= 0, got {self.guardrail_tolerance!r}"
            )
        if max(self.control_min_treatment, self.control_min_control) > self.control_window:
            raise ValueError(
                "control_min_treatment and control_min_control must fit control_window"
            )
        if self.control_arm in self.treatment_arms:
            raise ValueError(f"{self.control_arm!r} cannot be a treatment arm")


@dataclass(frozen=True)
class LearnReport:
    """What one :meth:`OnlineLearner.learn` call did with its records.

    ``received`` = ``trained + guardrail + holdout + duplicates + invalid``; ``updates`` is the
    number of optimizer steps; ``loss`` the mean importance-weighted log loss of the trained
    records before their step (``None`` if nothing was trained); ``lr`` the learning rate used.
    """

    received: int = 0
    trained: int = 0
    guardrail: int = 0
    holdout: int = 0
    duplicates: int = 0
    invalid: int = 0
    updates: int = 0
    loss: float | None = None
    lr: float = 0.0


@dataclass(frozen=True)
class GuardrailCheck:
    """A candidate against the last good weights on the guardrail slice.

    ``loss``/``last_good_loss``: importance-weighted log loss (lower is better; ``None`` below
    ``guardrail_min_records``); ``ips_value``/``last_good_ips_value``: IPS estimates of the
    completion rate of each one's greedy policy; ``breached``: the candidate was rolled back.
    """

    records: int
    loss: float | None
    last_good_loss: float | None
    ips_value: float | None
    last_good_ips_value: float | None
    tolerance: float
    breached: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the ``guardrail`` entry of a published bundle's metadata)."""
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _id_hash(decision_id: str) -> int:
    """A signed 64-bit hash of a decision id (fits an int64 tensor)."""
    h = hashlib.blake2b(decision_id.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big", signed=True)


def _lineage(metadata: Mapping[str, Any]) -> dict[str, int]:
    """The registry promotion (``promotion``, ``registryVersion``) named in bundle metadata."""
    return {
        k: v
        for k in ("promotion", "registryVersion")
        if isinstance(v := metadata.get(k), int) and not isinstance(v, bool)
    }


def _clone(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _check_weights(weights: Mapping[str, torch.Tensor], scorer: Scorer) -> dict[str, torch.Tensor]:
    """``weights`` cloned, after checking that they load into ``scorer``'s architecture."""
    probe = copy.deepcopy(scorer)
    probe.load_state_dict(weights)
    return _clone(weights)


class _Group(NamedTuple):
    """Guardrail records of one slot as tensors."""

    slot: int
    x: torch.Tensor
    a: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor
    mask: torch.Tensor


class OnlineLearner:
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
        self.config = config or LearnerConfig()
        self._clock = clock
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
        #: The trainer's weights: the candidate of the next publish.
        self.scorer: Scorer = copy.deepcopy(bundle.scorer)
        self._last_good = _clone(self.scorer.state_dict())
        #: The version of the last published bundle (the given bundle's at first).
        self.version = int(bundle.version)
        #: The registry promotion the weights descend from (carried into every publish, so
        #: replicas order them after it; see :attr:`ModelBundle.serving_rank`).
        self.lineage: dict[str, int] = _lineage(bundle.metadata)
        self._optimizer = self._make_optimizer()
        self._replay: deque[RewardRecord] = deque(maxlen=max(self.config.replay_size, 1))
        self._replay_rng = random.Random(0)
        self._replay_credit = 0.0  # replay steps owed to the rewards learned so far
        self._since_good: set[int] = set()  # ids of replay entries learned since last good
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._guardrail: deque[RewardRecord] = deque(maxlen=self.config.guardrail_window)
        self._offsets: dict[int, int] = {}
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._pending_updates = 0
        self._pending_rewards = 0
        self._last_publish_at: float | None = None
        self._published_epsilon = self.config.epsilon
        self._boost_until: int | None = None  # the trained count at which the boost ends
        # the trained count since which squarecb's gamma grows (0: a cold model learns from 0;
        # a trained one is as sure as its lineage makes it)
        self._explore_from = 0
        self._warmup = (
            self.config.warmup_rewards > 0 and bundle.metadata.get("kind") == "cold_start"
        )
        #: The guardrail check of the last publish (``None`` before the first).
        self.last_check: GuardrailCheck | None = None
        cfg = self.config
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
        self._explored = False  # a version published while boosted is being served
        # the last weights that beat control: ((promotion, version) served, weights)
        self._beat_control: tuple[tuple[int, int], dict[str, torch.Tensor]] | None = None
        self._fallback = _clone(self.scorer.state_dict())
        self._fallback_kind = (
            "cold_start" if bundle.metadata.get("kind") == "cold_start" else "initial"
        )
        if cold_start is not None:
            self.set_cold_start(cold_start)

    # ------------------------------------------------------------------------------ learning

    def in_guardrail(self, decision_id: str) -> bool:
        """Whether a decision's reward goes to the guardrail slice (never trained on).

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
        >>> from ray_app.model import cold_start_bundle
        >>> c = load_catalog()
        >>> learner = OnlineLearner(cold_start_bundle(FeatureSchema.from_catalog(c), c))
        >>> share = sum(learner.in_guardrail(f"d{i}") for i in range(10_000)) / 10_000
        >>> 0.09 < share < 0.11
        True
        """
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
        cfg = self.config
        n = trained = guard = holdout = dup = invalid = 0
        batch: list[RewardRecord] = []
        control = self.control
        for r in records:
            n += 1
            if r.arm == cfg.holdout_arm:
                holdout += 1
                continue
            if not self._valid(r):
                invalid += 1
                continue
            h = _id_hash(r.decision_id)
            if h in self._seen:
                dup += 1
                continue
            self._remember(h)
            if control is not None:
                control.observe(r)
            if self.in_guardrail(r.decision_id):
                self._guardrail.append(r)
                guard += 1
                continue
            batch.append(r)
        lr = cfg.lr * (cfg.boost_lr_factor if self._boosted(now) else 1.0)
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        updates = 0
        loss_sum = 0.0
        replaying = cfg.replay_size > 0
        for start in range(0, len(batch), cfg.batch_size):
            chunk = batch[start : start + cfg.batch_size]
            # A short chunk (the stream hands over a few rewards at a time) is topped up with
            # replayed rewards: every step sees a full mini-batch, so Adam's step (about lr
            # whatever the batch) is not taken on the noise of a handful of recent rewards.
            fill = min(cfg.batch_size - len(chunk), len(self._replay)) if replaying else 0
            loss_sum += self._step(chunk + self._replay_sample(fill), fresh=len(chunk))
            updates += 1
            if replaying:
                self._replay.extend(chunk)
                self._since_good.update(id(r) for r in chunk)
                # replay in proportion to the new rewards, not to how often learn() is called
                self._replay_credit += cfg.replay_steps * len(chunk) / cfg.batch_size
                while self._replay_credit >= 1.0 and len(self._replay) > cfg.batch_size:
                    self._replay_credit -= 1.0
                    self._step(self._replay_sample(cfg.batch_size))
                    updates += 1
                self._replay_credit = min(self._replay_credit, float(cfg.replay_steps))
        trained = len(batch)
        if offsets:
            self._offsets.update({int(p): int(o) for p, o in offsets.items()})
        c = self.counters
        c["received"] += n
        c["trained"] += trained
        c["guardrail"] += guard
        c["holdout"] += holdout
        c["duplicates"] += dup
        c["invalid"] += invalid
        c["updates"] += updates
        self._pending_updates += updates
        self._pending_rewards += trained
        return LearnReport(
            received=n,
            trained=trained,
            guardrail=guard,
            holdout=holdout,
            duplicates=dup,
            invalid=invalid,
            updates=updates,
            loss=loss_sum / trained if trained else None,
            lr=lr,
        )

    def _valid(self, r: RewardRecord) -> bool:
        ids = self._slot_actions.get(r.slot)
        if ids is None or not (0 <= r.action_index < len(ids)) or ids[r.action_index] != r.action:
            return False
        if len(r.features) != self._arch["dim"]:
            return False
        if not (0.0 < r.propensity <= 1.0) or not (0.0 <= r.reward <= 1.0):
            return False
        s = math.fsum(r.features)
        return s - s == 0.0  # no nan, no inf

    def _remember(self, h: int) -> None:
        self._seen.add(h)
        self._seen_order.append(h)
        if len(self._seen_order) > self.config.dedupe_horizon:
            self._seen.discard(self._seen_order.popleft())

    def _tensors(
        self, records: list[RewardRecord]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        x = torch.tensor([r.features for r in records], dtype=torch.float32)
        a = torch.tensor([r.action_index for r in records], dtype=torch.int64)
        y = torch.tensor([r.reward for r in records], dtype=torch.float32)
        p = torch.tensor([r.propensity for r in records], dtype=torch.float32)
        w = 1.0 / p.clamp(min=self.config.min_propensity)
        slots = [self._slot_index[r.slot] for r in records]
        return x, a, y, w, slots

    @staticmethod
    def _groups(slots: list[int]) -> dict[int, torch.Tensor]:
        out: dict[int, list[int]] = {}
        for i, s in enumerate(slots):
            out.setdefault(s, []).append(i)
        return {s: torch.tensor(idx, dtype=torch.int64) for s, idx in out.items()}

    def _replay_sample(self, k: int) -> list[RewardRecord]:
        if k <= 0:
            return []
        picks = self._replay_rng.sample(range(len(self._replay)), k)
        return [self._replay[i] for i in picks]

    def _step(self, records: list[RewardRecord], fresh: int | None = None) -> float:
        """One optimizer step on ``records``; returns the summed weighted loss of the first
        ``fresh`` of them (default: all), the new rewards a report averages over."""
        x, a, y, w, slots = self._tensors(records)
        w = w / w.mean()
        self._optimizer.zero_grad(set_to_none=True)
        per_record = torch.zeros(len(records))
        for s, idx in self._groups(slots).items():
            logits = self.scorer(x[idx], s)
            chosen = logits.gather(1, a[idx].unsqueeze(1)).squeeze(1)
            bce = F.binary_cross_entropy_with_logits(chosen, y[idx], reduction="none")
            per_record = per_record.index_put((idx,), bce * w[idx])
        loss = per_record.sum() / len(records)
        loss.backward()  # type: ignore[no-untyped-call]
        self._optimizer.step()
        n = len(records) if fresh is None else fresh
        return float(per_record[:n].detach().sum())

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = list(self.scorer.parameters())
        if self.config.optimizer == "adam":
            return torch.optim.AdamW(
                params, lr=self.config.lr, weight_decay=self.config.weight_decay
            )
        return torch.optim.SGD(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

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

    def last_good(self) -> ModelBundle:
        """The last good weights as a bundle (what was last published, or the initial bundle)."""
        return self._bundle(
            self._last_good, self.version, {"kind": "online", "last_good": True, **self.lineage}
        )

    def adopt(self, bundle: ModelBundle) -> None:
        """Continue from ``bundle`` (a newly promoted registry version): its weights become the
        trainer's and the last good ones, its version and promotion the current ones; offsets,
        dedupe memory, counters and the guardrail slice are kept, the replay buffer (rewards
        learned into the old weights) and the optimizer's moments are dropped; the comparison
        with control starts again on the decisions of the new version (the last weights that
        beat control are kept). ``ValueError`` if it does not have the learner's architecture
        and actions.

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
        """
        if (
            bundle.scorer.architecture != self._arch
            or bundle.slot_actions != self._slot_actions
            or bundle.schema_hash != self._schema_hash
        ):
            raise ValueError(
                "the bundle's architecture, actions or feature schema differ from the learner's"
            )
        self.scorer.load_state_dict(_clone(bundle.scorer.state_dict()))
        self._last_good = _clone(self.scorer.state_dict())
        self._catalog_digest = bundle.catalog_digest
        self.version = int(bundle.version)
        self.lineage = _lineage(bundle.metadata)
        self._optimizer = self._make_optimizer()
        self._replay.clear()
        self._since_good = set()
        self._pending_updates = 0
        self._pending_rewards = 0
        if self.control is not None:
            # judge the promoted weights by their own decisions (a promotion may lower the
            # version: decisions of the old lineage's later versions still count for a moment)
            self.control.restart(min_version=self.version)

    def _bundle(
        self, weights: Mapping[str, torch.Tensor], version: int, metadata: dict[str, Any]
    ) -> ModelBundle:
        scorer = Scorer(self._arch["dim"], self._arch["slot_sizes"], self._arch["hidden"])
        scorer.load_state_dict(_clone(weights))
        return ModelBundle(
            scorer=scorer,
            schema_hash=self._schema_hash,
            catalog_digest=self._catalog_digest,
            version=version,
            created_at=self._clock(),
            metadata=metadata,
            slot_actions={k: list(v) for k, v in self._slot_actions.items()},
        )

    # ---------------------------------------------------------------------------- guardrail

    def _eval_batch(self, records: list[RewardRecord]) -> list[_Group]:
        """The guardrail records as tensors, one group per slot (built once per check)."""
        by_slot: dict[str, list[RewardRecord]] = {}
        for r in records:
            by_slot.setdefault(r.slot, []).append(r)
        groups = []
        floor = self.config.eval_min_propensity
        for name, rs in by_slot.items():
            index = self._action_index[name]
            mask = np.ones((len(rs), len(index)), dtype=np.bool_)
            for row, r in enumerate(rs):
                if r.candidates:
                    cols = [index[c] for c in r.candidates if c in index]
                    if cols:
                        mask[row] = False
                        mask[row, cols] = True
            p = np.array([r.propensity for r in rs], dtype=np.float32)
            groups.append(
                _Group(
                    slot=self._slot_index[name],
                    x=torch.from_numpy(np.array([r.features for r in rs], dtype=np.float32)),
                    a=torch.tensor([r.action_index for r in rs], dtype=torch.int64),
                    y=torch.tensor([r.reward for r in rs], dtype=torch.float32),
                    w=torch.from_numpy(1.0 / np.maximum(p, np.float32(floor))),
                    mask=torch.from_numpy(mask),
                )
            )
        return groups

    @staticmethod
    def _metrics(scorer: Scorer, groups: list[_Group]) -> tuple[float, float]:
        """(importance-weighted log loss, IPS value of the greedy policy) on the groups."""
        loss_sum = ips_sum = w_sum = 0.0
        n = 0
        with torch.no_grad():
            for g in groups:
                logits = scorer(g.x, g.slot)
                chosen = logits.gather(1, g.a.unsqueeze(1)).squeeze(1)
                bce = F.binary_cross_entropy_with_logits(chosen, g.y, reduction="none")
                loss_sum += float((bce * g.w).sum())
                greedy = logits.masked_fill(~g.mask, -math.inf).argmax(dim=1)
                hit = (greedy == g.a).to(torch.float32)
                ips_sum += float((g.y * hit * g.w).sum())
                w_sum += float(g.w.sum())
                n += len(g.a)
        return loss_sum / w_sum, ips_sum / n

    def _check(self) -> GuardrailCheck:
        cfg = self.config
        records = list(self._guardrail)
        if len(records) < cfg.guardrail_min_records:
            return GuardrailCheck(
                len(records), None, None, None, None, cfg.guardrail_tolerance, False
            )
        groups = self._eval_batch(records)
        loss, ips = self._metrics(self.scorer, groups)
        good = Scorer(self._arch["dim"], self._arch["slot_sizes"], self._arch["hidden"])
        good.load_state_dict(self._last_good)
        good_loss, good_ips = self._metrics(good, groups)
        breached = loss > good_loss * (1.0 + cfg.guardrail_tolerance) + 1e-12
        return GuardrailCheck(
            len(records), loss, good_loss, ips, good_ips, cfg.guardrail_tolerance, breached
        )

    # ---------------------------------------------------------------------------- publishing

    def exploration(self, now: float | None = None) -> float:
        """The epsilon to serve: ``boost_epsilon`` for ``boost_rewards`` trained rewards after
        the last :meth:`drift` (or rollback below control) and during the warm-up
        (``warmup_rewards``), else ``epsilon``. ``now`` is not used.

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
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
        >>> from ray_app.model import cold_start_bundle
        >>> c = load_catalog()
        >>> learner = OnlineLearner(cold_start_bundle(FeatureSchema.from_catalog(c), c))
        >>> learner.gamma()
        10.0
        >>> learner.counters["trained"] += 99; learner.gamma()
        100.0
        >>> learner.drift(); learner.gamma()   # a drift: exploration starts over
        10.0
        """
        n = max(self.counters["trained"] - self._explore_from, 0)
        return float(self.config.gamma_scale * (1.0 + n) ** self.config.gamma_exponent)

    @property
    def boost_left(self) -> int:
        """Trained rewards until the boost after a drift or a rollback ends (0: none running;
        the warm-up is not counted here)."""
        if self._boost_until is None:
            return 0
        return max(self._boost_until - self.counters["trained"], 0)

    def _boosted(self, now: float | None = None) -> bool:
        if self._warmup:  # explore while an untrained model learns its first rewards
            if self.counters["trained"] < self.config.warmup_rewards:
                return True
            self._warmup = False
        if self._boost_until is None:
            return False
        if self.counters["trained"] < self._boost_until:
            return True
        self._boost_until = None
        return False

    def _boost(self) -> None:
        """Explore and learn faster for ``boost_rewards`` rewards, from a fresh optimizer (moments
        of the old world would slow the move to the new one), with empty guardrail slice and
        replay buffer (rewards from before would judge candidates by a world that is gone, and
        pull towards it)."""
        self._boost_until = self.counters["trained"] + self.config.boost_rewards
        self._explore_from = self.counters["trained"]
        self._guardrail.clear()
        self._replay.clear()
        self._since_good = set()
        self._optimizer = self._make_optimizer()

    def drift(self, now: float | None = None) -> None:
        """Signal a drift (from a detector). For the next ``boost_rewards`` trained rewards the
        learner then serves ``boost_epsilon`` and learns at ``boost_lr_factor`` times ``lr``, from
        a fresh optimizer; the guardrail slice and the replay buffer are emptied: rewards from
        before the drift would judge candidates by a world that is gone and roll back the very
        updates that adapt to the new one; until ``guardrail_min_records`` new guardrail rewards
        have arrived, candidates are accepted. ``now`` is not used."""
        self._boost()
        self.counters["drifts"] += 1

    def set_cold_start(self, bundle: ModelBundle) -> None:
        """The weights to roll back to when the model is below control and no weights beat
        control since (the cold-start model, whose greedy choice is the static flow's).
        ``ValueError`` unless ``bundle`` has the learner's architecture, actions and schema
        (build it with ``cold_start_bundle(schema, catalog, hidden=...)``)."""
        if (
            bundle.scorer.architecture != self._arch
            or bundle.slot_actions != self._slot_actions
            or bundle.schema_hash != self._schema_hash
        ):
            raise ValueError(
                "the cold-start bundle's architecture, actions or feature schema differ from the "
                "learner's"
            )
        self._fallback = _clone(bundle.scorer.state_dict())
        self._fallback_kind = "cold_start"

    @property
    def architecture(self) -> dict[str, Any]:
        """The scorer's architecture (``dim``, ``slot_sizes``, ``hidden``)."""
        return dict(self._arch)

    @property
    def beat_control_version(self) -> int | None:
        """The version whose weights last beat control (what a rollback below control restores;
        ``None``: none since the start or the last such rollback, which then restores the cold
        start)."""
        return None if self._beat_control is None else self._beat_control[0][1]

    def _serving_key(self) -> tuple[int, int]:
        return (self.lineage.get("promotion", 0), self.version)

    def _compare_with_control(self) -> ControlComparison | None:
        """The comparison with control; keeps the weights being served when they beat it.
        Paused (neither fires nor beats) while the learner explores on purpose."""
        if self.control is None:
            return None
        comparison = self.control.compare()
        if self._boosted() or self._explored:
            return replace(comparison, fires=False, beats=False, paused=True)
        if comparison.beats:
            key = self._serving_key()
            if self._beat_control is None or self._beat_control[0] != key:
                self._beat_control = (key, _clone(self._last_good))
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
        self.scorer.load_state_dict(_clone(weights))
        self._last_good = _clone(weights)
        self._boost()
        self.counters["control_rollbacks"] += 1
        return restored

    def maybe_publish(self, now: float | None = None) -> ModelBundle | None:
        """A new bundle to serve, or ``None``: not before ``publish_interval_s`` after the last
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
        cfg = self.config
        if (
            self._last_publish_at is not None
            and now - self._last_publish_at < cfg.publish_interval_s
        ):
            return None
        control = self._compare_with_control()
        below = control is not None and control.fires
        restored: str | None = None
        if below:
            restored = self._roll_back_below_control()
            check = GuardrailCheck(0, None, None, None, None, cfg.guardrail_tolerance, False)
        epsilon = self.exploration(now)
        if not below:
            if self._pending_updates == 0 and epsilon == self._published_epsilon:
                return None
            check = self._check()
            if check.breached:
                self.scorer.load_state_dict(self._last_good)
                self._optimizer = self._make_optimizer()
                # the rewards learned since the last good weights (behind the breach) are not
                # replayed again; older ones stay
                kept = [r for r in self._replay if id(r) not in self._since_good]
                self._replay.clear()
                self._replay.extend(kept)
                self.counters["rollbacks"] += 1
            else:
                self._last_good = _clone(self.scorer.state_dict())
        self._since_good = set()
        self.version += 1
        self.counters["publishes"] += 1
        if self.control is not None:
            if below:
                self.control.restart(min_version=self.version)
            elif self._explored and not self._boosted():
                # the first version served at the base epsilon after a boost: judge from here
                self.control.restart(min_version=self.version)
        self._explored = self._boosted()
        rollback = "below_control" if below else ("loss" if check.breached else None)
        metadata = {
            "kind": "online",
            "updates": self.counters["updates"],
            "rewards": self.counters["trained"],
            "new_updates": self._pending_updates,
            "new_rewards": self._pending_rewards,
            "guardrail": check.as_dict(),
            "control": None if control is None else control.as_dict(),
            "rolled_back": rollback is not None,
            "rollback": rollback,
            "rolled_back_to": restored,
            "rollbacks": self.counters["rollbacks"],
            "control_rollbacks": self.counters["control_rollbacks"],
            "epsilon": epsilon,
            "gamma": round(self.gamma(), 3),
            "offsets": {str(p): o for p, o in sorted(self._offsets.items())},
            **self.lineage,
        }
        bundle = self._bundle(self._last_good, self.version, metadata)
        bundle.created_at = float(now)
        self._last_publish_at = float(now)
        self._pending_updates = 0
        self._pending_rewards = 0
        self._published_epsilon = epsilon
        self.last_check = check
        self.last_control = control
        return bundle

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
        return len(self._seen_order)

    def state_dict(self) -> dict[str, Any]:
        """Everything a restarted learner needs: weights, optimizer state, last good weights,
        version, dedupe memory, reward offsets, guardrail slice, counters, the control
        guardrail's windows, the last weights that beat control and the cold-start weights
        (plain Python and tensors: ``torch.save``-able, readable with ``weights_only=True``)."""
        return {
            "kind": _STATE_KIND,
            "schema_hash": self._schema_hash,
            "catalog_digest": self._catalog_digest,
            "slot_actions": {k: list(v) for k, v in self._slot_actions.items()},
            "architecture": dict(self._arch, slot_sizes=list(self._arch["slot_sizes"])),
            "weights": _clone(self.scorer.state_dict()),
            "last_good": _clone(self._last_good),
            "optimizer": {
                "kind": self.config.optimizer,
                "state": copy.deepcopy(self._optimizer.state_dict()),
            },
            "version": self.version,
            "seen": torch.tensor(list(self._seen_order), dtype=torch.int64),
            "offsets": dict(self._offsets),
            "counters": dict(self.counters),
            "guardrail": [r.to_json() for r in self._guardrail],
            "replay": [r.to_json() for r in self._replay],
            "replay_rng": list(self._replay_rng.getstate()[1]),
            "replay_credit": self._replay_credit,
            "pending_updates": self._pending_updates,
            "pending_rewards": self._pending_rewards,
            "last_publish_at": self._last_publish_at,
            "published_epsilon": self._published_epsilon,
            "boost_until_trained": self._boost_until,
            "explore_from": self._explore_from,
            "explored": self._explored,
            "warmup": self._warmup,
            "lineage": dict(self.lineage),
            "control": None if self.control is None else self.control.state_dict(),
            "beat_control": None
            if self._beat_control is None
            else {
                "promotion": self._beat_control[0][0],
                "version": self._beat_control[0][1],
                "weights": _clone(self._beat_control[1]),
            },
            "fallback": _clone(self._fallback),
            "fallback_kind": self._fallback_kind,
        }

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
            if state.get("kind") != _STATE_KIND:
                raise LearnerStateError(f"not a learner state (kind {state.get('kind')!r})")
            for field, want in (("schema_hash", schema_hash), ("catalog_digest", catalog_digest)):
                got = state.get(field)
                if want is not None and got != want:
                    what = "feature schema" if field == "schema_hash" else "catalog"
                    raise LearnerStateError(
                        f"the learner state was saved under another {what} ({field} {got}; "
                        f"the current one is {want})",
                        reason="foreign",
                        field=field,
                        state=got,
                        current=want,
                    )
            arch = state["architecture"]
            scorer = Scorer(arch["dim"], arch["slot_sizes"], arch["hidden"])
            scorer.load_state_dict(state["weights"])
            bundle = ModelBundle(
                scorer=scorer,
                schema_hash=state["schema_hash"],
                catalog_digest=state["catalog_digest"],
                version=int(state["version"]),
                slot_actions=state["slot_actions"],
            )
            learner = cls(bundle, config, clock)
            learner._last_good = _clone(state["last_good"])
            opt = state["optimizer"]
            if opt["kind"] == learner.config.optimizer:
                learner._optimizer.load_state_dict(opt["state"])
                for group in learner._optimizer.param_groups:
                    group["lr"] = learner.config.lr
                    group["weight_decay"] = learner.config.weight_decay
            for h in state["seen"].tolist():
                learner._remember(int(h))
            learner._offsets = {int(p): int(o) for p, o in state["offsets"].items()}
            learner.counters.update({k: int(v) for k, v in state["counters"].items()})
            for rec in state["guardrail"]:
                learner._guardrail.append(RewardRecord.from_json(rec))
            for rec in state.get("replay", ()):
                learner._replay.append(RewardRecord.from_json(rec))
            if state.get("replay_rng"):
                learner._replay_rng.setstate((3, tuple(state["replay_rng"]), None))
            learner._replay_credit = float(state.get("replay_credit", 0.0))
            learner._pending_updates = int(state["pending_updates"])
            learner._pending_rewards = int(state["pending_rewards"])
            learner._last_publish_at = state["last_publish_at"]
            learner._published_epsilon = float(state["published_epsilon"])
            # a boost counted in trained rewards ("boost_until", in seconds, is not carried over)
            boost = state.get("boost_until_trained")
            learner._boost_until = None if boost is None else int(boost)
            learner._explore_from = int(state.get("explore_from", 0))
            learner._explored = bool(state.get("explored", False))
            learner._warmup = bool(state.get("warmup", False)) and learner.config.warmup_rewards > 0
            learner.lineage = _lineage(state.get("lineage") or {})
            if learner.control is not None and state.get("control"):
                learner.control.load_state(state["control"])
            beat = state.get("beat_control")
            if beat:
                key = (int(beat["promotion"]), int(beat["version"]))
                learner._beat_control = (key, _check_weights(beat["weights"], scorer))
            if state.get("fallback") is not None:
                learner._fallback = _check_weights(state["fallback"], scorer)
                learner._fallback_kind = str(state.get("fallback_kind", "initial"))
        except LearnerStateError:
            raise
        except Exception as exc:  # a bad state can fail in many ways; report one kind
            raise LearnerStateError(
                f"cannot restore the learner: {type(exc).__name__}: {exc}"
            ) from None
        return learner

    def to_bytes(self) -> bytes:
        """:meth:`state_dict` as bytes (``torch.save``)."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return buf.getvalue()

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
        ray_app.learn.learner.LearnerStateError: the learner state was saved under another feature schema (schema_hash ... the current one is another)
        >>> OnlineLearner.from_bytes(b"junk")
        Traceback (most recent call last):
        ...
        ray_app.learn.learner.LearnerStateError: cannot read the learner state: not a torch.save file of plain data
        """
        try:
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as exc:
            raise LearnerStateError(
                "cannot read the learner state: not a torch.save file of plain data",
                cause=f"{type(exc).__name__}: {exc}",
            ) from None
        if not isinstance(state, dict):
            raise LearnerStateError(f"not a learner state: {type(state).__name__}")
        return cls.from_state(state, config, clock, schema_hash, catalog_digest)
