"""Drift detectors: the reward rate (Page-Hinkley) and the feature distributions (PSI).

Both are small, deterministic, pure objects fed one value (or one batch) at a time.

* :class:`PageHinkley` watches a stream of numbers (per-decision rewards, or a rate) and fires
  when its mean moves, up or down, by clearly more than ``delta``. Feed it the rewards of a
  fixed policy (the control arm) to see a change of the world rather than the learner's progress;
  fed the learning arm's rewards, the learner's own progress shows as an ``increase``, so react
  to ``last_change == "decrease"`` only.
* :class:`RewardRateDrift` feeds two of them from reward records as they arrive: the
  ``control`` arm's rewards (the world changed) and the model arms' (the model got worse). It
  feeds explicit outcomes only, in decision-time order, once ``settle_ms`` of decision time
  has passed (see the class).
* :func:`psi` compares two samples of feature vectors, feature by feature, with the population
  stability index over fixed bins on ``[0, 1]`` (every Onramp feature lies there, but a cross
  of two traits, worth ``features.cross_weight``, which counts in the top bin like a 1);
  :class:`FeatureDrift` keeps a reference window and tumbling current windows and reports the
  worst features of each window.

>>> ph = PageHinkley(delta=0.05, threshold=5.0, min_samples=10)
>>> fired = [i for i, x in enumerate([1.0] * 100 + [0.0] * 100) if ph.update(x)]
>>> 100 < fired[0] < 110, ph.last_change
(True, 'decrease')
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref, same, shifted = rng.random((2000, 3)), rng.random((2000, 3)), rng.random((2000, 3))
>>> shifted[:, 1] **= 3                       # feature 1 moves towards 0
>>> [bool(s > 0.25) for s in psi(ref, same)], [bool(s > 0.25) for s in psi(ref, shifted)]
([False, False, False], [False, True, False])
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ray_app.experiments import CONTROL, HOLDOUT

__all__ = ["DriftReport", "FeatureDrift", "PageHinkley", "RewardRateDrift", "psi"]


class PageHinkley:
    """Two-sided Page-Hinkley test on a stream of numbers.

    With ``m`` the running mean since the last reset, it accumulates ``x - m - delta`` (an
    increase shows as this sum rising above its minimum) and ``x - m + delta`` (a decrease shows
    as this one falling below its maximum), and fires when either excursion exceeds ``threshold``
    after at least ``min_samples`` values; then it resets and learns the new mean. ``delta`` is
    the change of the mean that is tolerated; ``threshold`` trades detection delay for false
    alarms. The defaults suit a Bernoulli reward stream: a drop of the rate from 0.6 to 0.3 is
    found in about 200 values, and 20k values of a stationary stream very rarely fire (the
    chance is about ``exp(-2 * delta * threshold / variance)`` per independent stretch).
    ``watch="decrease"`` fires on decreases only (a rise neither fires nor resets it).

    >>> ph = PageHinkley(threshold=5.0, min_samples=10, watch="decrease")
    >>> [ph.update(x) for x in [0.0] * 50 + [1.0] * 50].count(True), ph.n
    (0, 100)
    """

    def __init__(
        self,
        delta: float = 0.05,
        threshold: float = 50.0,
        min_samples: int = 30,
        watch: Literal["both", "decrease"] = "both",
    ) -> None:
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"delta must be a number >= 0, got {delta!r}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a number > 0, got {threshold!r}")
        if not (isinstance(min_samples, int) and min_samples >= 1):
            raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.min_samples = min_samples
        if watch not in ("both", "decrease"):
            raise ValueError(f"watch must be 'both' or 'decrease', got {watch!r}")
        self.watch = watch
        #: Detections so far, and the direction of the last one.
        self.detections = 0
        self.last_change: Literal["increase", "decrease"] | None = None
        #: The tag of the first value after the last detection's estimated change point.
        self.change_at: int | None = None
        #: Values seen in total (across resets).
        self.seen = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream since the last detection (the counters of detections stay)."""
        self.n = 0
        self.mean = 0.0
        self._up = 0.0
        self._up_min = 0.0
        self._down = 0.0
        self._down_max = 0.0
        self._up_min_at: int | None = None  # the tag of the value where each extremum was
        self._down_max_at: int | None = None

    @property
    def statistic(self) -> float:
        """The excursion it watches (the larger of the two, or the fall's alone with
        ``watch="decrease"``); fires above ``threshold``. A rise it does not watch is not
        shown: the model arms' rise is the learner's progress, not a drift."""
        down = self._down_max - self._down
        return down if self.watch == "decrease" else max(self._up - self._up_min, down)

    def update(self, x: float, tag: int | None = None) -> bool:
        """Add one value; True when a change is detected (the detector has then reset).
        Non-finite values are ignored. ``tag`` (default: the count of values seen) names the
        value; :attr:`change_at` is then the tag of the first value after the estimated change
        point (the first value of the stretch when the change began there)."""
        x = float(x)
        if not math.isfinite(x):
            return False
        self.seen += 1
        self.n += 1
        tag = self.seen if tag is None else tag
        if self.n == 1:
            self._up_min_at = self._down_max_at = tag
        self.mean += (x - self.mean) / self.n
        self._up += x - self.mean - self.delta
        if self._up <= self._up_min:  # a tie moves the change point to the later value
            self._up_min, self._up_min_at = self._up, None
        elif self._up_min_at is None:
            self._up_min_at = tag  # the first value after the minimum
        self._down += x - self.mean + self.delta
        if self._down >= self._down_max:
            self._down_max, self._down_max_at = self._down, None
        elif self._down_max_at is None:
            self._down_max_at = tag
        if self.n < self.min_samples:
            return False
        if self.watch == "both" and self._up - self._up_min > self.threshold:
            self.last_change, self.change_at = "increase", self._up_min_at
        elif self._down_max - self._down > self.threshold:
            self.last_change, self.change_at = "decrease", self._down_max_at
        else:
            return False
        self.detections += 1
        self.reset()
        return True


class _Outcome(Protocol):
    @property
    def arm(self) -> str: ...
    @property
    def reward(self) -> float: ...
    @property
    def outcome(self) -> str: ...
    @property
    def decided_at_ms(self) -> int: ...


def _wall_clock_ms() -> float:
    return time.time() * 1000


class RewardRateDrift:
    """Page-Hinkley on the reward rate of the ``control`` arm (:attr:`world`: it serves a fixed
    policy, so a change either way is the world's) and of the model arms (:attr:`model`: its
    rise is the learner's progress, so only a ``decrease`` is reported), fed reward records as
    they arrive from the reward topic.

    **What is fed.** Explicit outcomes only (``completed``, ``converted``, ``abandoned``...): they
    arrive seconds after their decision (how many depends on the product). A ``timeout`` is not
    fed: it arrives a whole attribution window (plus the allowed lateness) after its decision,
    and fed then, a wave of timeouts after a wave of completions looks like a fall of the rate;
    the guardrail against the static flow counts them. The ``holdout`` arm is not fed.

    **In which order.** In decision-time order, a settle after the decision (below): a record is
    held until a reward of a decision made a settle later has arrived (decision time is the
    clock: replays and lagging consumers see the same order). Fed in arrival order, a stream
    whose completions come faster than its abandonments begins richer in completions than it is,
    and so does every restart of traffic after a pause: simulated with completions after 1 s and
    abandonments after 3 s (log-normal) at 200 users/s, the arrival order fired a spurious
    ``decrease`` within seconds in 20 runs out of 20; in decision-time order the rate of what is
    fed is the rate of the decisions, from the first one. An explicit outcome that arrives after
    its decision's turn (later than the settle) is counted in :attr:`late` and not fed. A
    decision time more than ``MAX_AHEAD_MS`` past ``clock_ms()`` (the wall clock; the learning
    twin passes its own) is counted in :attr:`future` and not fed: one record from a replica
    whose clock ran a year ahead used to move the detector's clock there, after which every
    reward was late and neither detector saw anything.

    **How long it waits.** With ``settle_quantile`` (the service's default, 0.99) the settle follows
    this stream's own outcomes: how far behind the clock each explicit outcome arrives (the
    latest decision time seen, less its own) is kept for the last ``SETTLE_WINDOW`` outcomes,
    and the detector waits for that quantile of it, with a quarter more and ``SETTLE_PAD_MS`` to
    spare, and at most ``settle_ms``. Until it has watched ``settle_ms`` of decision time (and
    ``SETTLE_MIN_OBSERVED`` outcomes) it waits all of ``settle_ms``: the first outcomes to
    arrive are the quickest, and a settle fitted to them would feed completions and leave the
    later abandonments out (on the learning twin, with abandonments reported 20 s after
    completions, that fired a false ``decrease`` at user 3,200 on each of 4 seeds). A product
    whose users answer within a second or two is then watched with a settle of a few seconds
    (3.5 s on the learning twin); one that reports an abandoned step 20 s after a completed one
    waits about 27 s, where a fixed 5 s fed it completions only, and no drift was ever found.
    Every second of settle is a second of traffic before an alert. Without ``settle_quantile``
    it waits ``settle_ms``.

    :meth:`update` returns the alerts of the records it fed, as ``(kind, detail)``:
    ``("control_reward_rate", {"change": "increase" | "decrease", "sinceMs": ...})`` and
    ``("model_reward_rate", {"change": "decrease", "sinceMs": ...})``, ``sinceMs`` the decision
    time of the first reward after the estimated change point (the extremum of Page-Hinkley's
    cumulative sum): the rewards since then come from the new world. Below, the rate falls at
    decision 400 (40,000 ms), and the change point is put 200 ms before it.

    >>> from types import SimpleNamespace as R
    >>> drift = RewardRateDrift(delta=0.05, threshold=5.0, min_samples=10, settle_ms=1_000)
    >>> def rewards(start, n, rate):
    ...     return [R(arm="control", reward=float(i % 10 < rate * 10), outcome="completed",
    ...               decided_at_ms=(start + i) * 100) for i in range(n)]
    >>> drift.update(rewards(0, 400, 0.8))
    []
    >>> drift.fed, drift.held                           # the last second waits for its turn
    (389, 11)
    >>> drift.update(rewards(400, 400, 0.2))
    [('control_reward_rate', {'change': 'decrease', 'sinceMs': 39800})]
    >>> drift.update([R(arm="control", reward=0.0, outcome="timeout", decided_at_ms=0)])
    []
    >>> drift.timeouts, drift.late
    (1, 0)
    """

    #: Explicit outcomes whose lateness the adaptive settle looks at (the most recent ones).
    SETTLE_WINDOW = 2_000
    #: Outcomes seen before the adaptive settle replaces ``settle_ms``.
    SETTLE_MIN_OBSERVED = 200
    #: Added to the quantile (with a quarter of it): the settle's spare.
    SETTLE_PAD_MS = 250
    #: How far ahead of ``clock_ms()`` a decision time may be (replica clocks differ a little).
    MAX_AHEAD_MS = 600_000

    def __init__(
        self,
        delta: float = 0.05,
        threshold: float = 50.0,
        min_samples: int = 30,
        settle_ms: int = 10_000,
        control_arm: str = CONTROL,
        holdout_arm: str = HOLDOUT,
        settle_quantile: float | None = None,
        model_arms: Sequence[str] = ("treatment",),
        clock_ms: Callable[[], float] = _wall_clock_ms,
    ) -> None:
        if not (isinstance(settle_ms, int) and settle_ms >= 0):
            raise ValueError(f"settle_ms must be an integer >= 0, got {settle_ms!r}")
        if settle_quantile is not None and not 0 < settle_quantile <= 1:
            raise ValueError(f"settle_quantile must be in (0, 1], got {settle_quantile!r}")
        self.world = PageHinkley(delta, threshold, min_samples)
        # decreases only: a rise is the learner doing its job, and firing on it would reset the
        # detector and leave it blind for min_samples rewards (a drop right after one went
        # unseen for 1,800 users on the learning twin)
        self.model = PageHinkley(delta, threshold, min_samples, watch="decrease")
        #: The most it waits; :attr:`settle` is what it waits now.
        self.settle_ms = settle_ms
        self.settle_quantile = settle_quantile
        self.settle = settle_ms
        self._lateness: deque[int] = deque(maxlen=self.SETTLE_WINDOW)
        self._observed = 0
        self._first: int | None = None  # the decision time of the first explicit outcome
        self.control_arm = control_arm
        self.holdout_arm = holdout_arm
        #: The arms that serve the learner's model (what the model detector watches).
        self.model_arms = frozenset(model_arms)
        # (decided at, seq, control?, reward, model version)
        self._held: list[tuple[int, int, bool, float, int]] = []
        self._seq = 0
        self._latest: int | None = None
        self._released: int | None = None  # decisions before this were fed
        self._model_min_version = 0  # model arms' decisions of older versions are not fed
        self._restarted_at: int | None = None  # the decision time of the last drift restart
        #: Alerts not acted on: their change began before the last drift restart, which answered it.
        self.answered_alerts = 0
        #: Explicit rewards fed; explicit rewards that arrived after their turn; timeouts seen.
        self.fed = 0
        self.late = 0
        self.timeouts = 0
        #: Rewards whose decision time was past ``clock_ms() + MAX_AHEAD_MS``: not fed.
        self.future = 0
        self.clock_ms = clock_ms

    @classmethod
    def from_settings(
        cls, learn: Any, clock_ms: Callable[[], float] | None = None
    ) -> RewardRateDrift:
        """The detector under ``learn.drift_*`` (a :class:`~ray_app.config.LearnSettings`): the
        learner service's, and the learning twin's (with its simulated ``clock_ms``)."""
        return cls(
            delta=learn.drift_delta,
            threshold=learn.drift_threshold,
            min_samples=learn.drift_min_samples,
            settle_ms=int(learn.drift_settle_s * 1000),
            settle_quantile=learn.drift_settle_quantile or None,
            clock_ms=clock_ms or _wall_clock_ms,
        )

    @property
    def held(self) -> int:
        """Explicit rewards waiting for their turn."""
        return len(self._held)

    def update(self, records: Iterable[_Outcome]) -> list[tuple[str, dict[str, Any]]]:
        """Add reward records (in arrival order); feed those whose turn came; the alerts."""
        arrived: list[int] = []
        now = self.clock_ms()
        ahead = now + self.MAX_AHEAD_MS
        for r in records:
            if r.arm == self.holdout_arm:
                continue
            if r.arm != self.control_arm and r.arm not in self.model_arms:
                continue  # another model file (treatment_b): not the learner's, other versions
            if r.outcome == "timeout":
                self.timeouts += 1
                continue
            at = int(r.decided_at_ms)
            if at > ahead:
                self.future += 1
                continue
            arrived.append(at)
            # the detectors' clock never passes the learner's: one record of a replica whose
            # clock ran minutes ahead made every later record "late" (fed to neither detector)
            # for as long; such a record waits for its time instead
            seen = min(at, int(now))
            if self._latest is None or seen > self._latest:
                self._latest = seen
            if self._released is not None and at < self._released:
                self.late += 1
                continue
            version = getattr(r, "model_version", 0)
            entry = (at, self._seq, r.arm == self.control_arm, r.reward, version)
            heapq.heappush(self._held, entry)
            self._seq += 1
        alerts: list[tuple[str, dict[str, Any]]] = []
        if self._latest is None:
            return alerts
        if self.settle_quantile is not None and arrived:
            self._adapt(arrived)
        cut = self._latest - self.settle
        held = self._held
        while held and held[0][0] < cut:
            at, _, control, reward, version = heapq.heappop(held)
            self.fed += 1
            if control:
                if self.world.update(reward, at):
                    change = {"change": self.world.last_change, "sinceMs": self.world.change_at}
                    alerts.append(("control_reward_rate", change))
            elif version < self._model_min_version:
                continue  # a decision of a model the learner has since replaced
            elif self.model.update(reward, at) and self.model.last_change == "decrease":
                change = {"change": "decrease", "sinceMs": self.model.change_at}
                alerts.append(("model_reward_rate", change))
        if self._released is None or cut > self._released:
            self._released = cut
        return alerts

    def answered(self, detail: Mapping[str, Any]) -> bool:
        """Whether an alert of :meth:`update` was answered by the last drift restart (its
        change began before it: the other detector saw the same change first, maybe in the
        same batch); counted in :attr:`answered_alerts`."""
        since = detail.get("sinceMs")
        if self._restarted_at is None or not isinstance(since, int) or since >= self._restarted_at:
            return False
        self.answered_alerts += 1
        return True

    def reacted(self, restarted: bool, min_version: int) -> None:
        """The learner replaced the model it serves, from ``min_version`` on: ``restarted``
        after a drift alert, else rolled back below control or adopted a promotion. The model
        arms' rewards of decisions by older versions judge a model that is gone: the model
        detector starts again on those of ``min_version`` and later (by version, not time: a
        promotion adopted at start comes before any reward, and replicas swap a few seconds
        after a publish). After a restart, an alert whose change began before it (the other
        detector seeing the same change of the world) has been answered (:meth:`answered`).
        Before, a drop a rollback had answered fired a drift restart later,
        which threw the restored weights away, and one change of the world seen by both
        detectors restarted the learner twice, some hundreds of users apart."""
        self.model.reset()
        # assigned, not raised: a registry rollback promotes an older version as the new one
        self._model_min_version = int(min_version)
        if restarted:
            self._restarted_at = self._latest

    def _adapt(self, arrived: list[int]) -> None:
        """Note how far behind the clock these outcomes arrived; every 100, the settle again."""
        latest = self._latest
        assert latest is not None and self.settle_quantile is not None
        if self._first is None:
            self._first = min(arrived)
        before = self._observed // 100
        self._lateness.extend(latest - at for at in arrived)
        self._observed += len(arrived)
        if (
            self._observed < self.SETTLE_MIN_OBSERVED
            or latest - self._first < self.settle_ms
            or self._observed // 100 == before
        ):
            return
        seen = sorted(self._lateness)
        q = seen[min(len(seen) - 1, int(self.settle_quantile * len(seen)))]
        self.settle = min(self.settle_ms, q + q // 4 + self.SETTLE_PAD_MS)


def _counts(x: np.ndarray, bins: int) -> np.ndarray:
    """Per-feature histogram ``[d, bins]`` of ``[n, d]`` values over equal bins of [0, 1]."""
    v = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    idx = np.minimum((v * bins).astype(np.int64), bins - 1)
    d = v.shape[1]
    flat = (idx + np.arange(d, dtype=np.int64) * bins).ravel()
    return np.bincount(flat, minlength=d * bins).reshape(d, bins).astype(np.float64)


def _psi_counts(ref: np.ndarray, cur: np.ndarray, floor: float) -> np.ndarray:
    p = np.maximum(ref / np.maximum(ref.sum(axis=1, keepdims=True), 1.0), floor)
    q = np.maximum(cur / np.maximum(cur.sum(axis=1, keepdims=True), 1.0), floor)
    out: np.ndarray = ((q - p) * np.log(q / p)).sum(axis=1)
    return out


def _matrix(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2:
        raise ValueError(f"expected [n, d] feature vectors, got shape {a.shape}")
    return a


def psi(reference: Any, current: Any, bins: int = 10, floor: float = 1e-4) -> np.ndarray:
    """Population stability index of each feature: ``sum((q - p) * ln(q / p))`` over ``bins``
    equal bins of [0, 1], ``p`` and ``q`` the shares of the reference and current samples in each
    bin (at least ``floor``). ``reference`` and ``current`` are ``[n, d]`` (a 1-D array: one
    feature). Rule of thumb: < 0.1 stable, 0.1-0.25 moving, > 0.25 shifted.

    >>> psi([0.1, 0.2, 0.8, 0.9], [0.1, 0.2, 0.8, 0.9]).tolist()
    [0.0]
    """
    if not (isinstance(bins, int) and bins >= 2):
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    ref, cur = _matrix(reference), _matrix(current)
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} features, current {cur.shape[1]}")
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError("psi needs at least one vector in each sample")
    return _psi_counts(_counts(ref, bins), _counts(cur, bins), floor)


@dataclass(frozen=True)
class DriftReport:
    """The PSI of one current window against the reference.

    ``top``: the ``top`` worst features as ``(name, psi)``, worst first; ``fired``: ``max_psi``
    exceeded the threshold (the monitor then took this window as its new reference);
    ``window``: the number of this window (1, 2, ...).
    """

    max_psi: float
    fired: bool
    top: tuple[tuple[str, float], ...]
    threshold: float
    window: int
    size: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for logs and alerts)."""
        return {
            "max_psi": round(self.max_psi, 6),
            "fired": self.fired,
            "top": [[name, round(v, 6)] for name, v in self.top],
            "threshold": self.threshold,
            "window": self.window,
            "size": self.size,
        }


class FeatureDrift:
    """PSI monitor over feature vectors: the first ``reference_size`` vectors are the reference,
    then every ``window`` vectors form a current window that is compared with it.

    Memory is two histograms (``[dim, bins]``), whatever the window sizes. When a window fires,
    it becomes the new reference, so a lasting shift is reported once, not in every window.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> monitor = FeatureDrift(reference_size=500, window=500, names=["a", "b"])
    >>> monitor.update(rng.random((900, 2))) is None       # reference, then a partial window
    True
    >>> monitor.update(rng.random((100, 2))).fired         # the first window completes
    False
    >>> drifted = rng.random((500, 2)); drifted[:, 0] = 0.95
    >>> report = monitor.update(drifted)
    >>> report.fired, report.top[0][0]
    (True, 'a')
    """

    def __init__(
        self,
        reference_size: int = 1000,
        window: int = 1000,
        threshold: float = 0.25,
        bins: int = 10,
        top: int = 5,
        names: Sequence[str] | None = None,
        floor: float = 1e-4,
    ) -> None:
        for name, v in (("reference_size", reference_size), ("window", window), ("top", top)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(bins, int) and bins >= 2):
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a number > 0, got {threshold!r}")
        self.reference_size = reference_size
        self.window = window
        self.threshold = float(threshold)
        self.bins = bins
        self.top = top
        self.names = None if names is None else tuple(names)
        self.floor = floor
        self.windows = 0
        self.detections = 0
        self._dim: int | None = None
        self._ref: np.ndarray | None = None
        self._cur: np.ndarray | None = None
        self._ref_n = 0
        self._cur_n = 0

    def update(self, features: Any) -> DriftReport | None:
        """Add one feature vector (or a ``[n, dim]`` batch). Returns the report of a window this
        call completed (a fired one before a quiet one, else the last), or ``None``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2:
            raise ValueError(f"expected a vector or [n, dim] vectors, got shape {x.shape}")
        if self._dim is None:
            self._dim = x.shape[1]
            if self.names is not None and len(self.names) != self._dim:
                raise ValueError(f"{len(self.names)} names for {self._dim} features")
            self._ref = np.zeros((self._dim, self.bins))
            self._cur = np.zeros((self._dim, self.bins))
        elif x.shape[1] != self._dim:
            raise ValueError(f"expected {self._dim} features, got {x.shape[1]}")
        assert self._ref is not None and self._cur is not None
        report: DriftReport | None = None
        i = 0
        while i < len(x):
            if self._ref_n < self.reference_size:
                take = min(self.reference_size - self._ref_n, len(x) - i)
                self._ref += _counts(x[i : i + take], self.bins)
                self._ref_n += take
                i += take
                continue
            take = min(self.window - self._cur_n, len(x) - i)
            self._cur += _counts(x[i : i + take], self.bins)
            self._cur_n += take
            i += take
            if self._cur_n == self.window:
                r = self._report()
                if report is None or not report.fired:
                    report = r
                if r.fired:
                    self._ref = self._cur  # the reference stays complete
                    self._cur = np.zeros_like(self._ref)
                else:
                    self._cur[:] = 0.0
                self._cur_n = 0
        return report

    def _report(self) -> DriftReport:
        assert self._ref is not None and self._cur is not None
        scores = _psi_counts(self._ref, self._cur, self.floor)
        self.windows += 1
        order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[: self.top]
        names = self.names
        top = tuple((names[j] if names is not None else f"f{j}", float(scores[j])) for j in order)
        worst = float(scores[order[0]]) if order else 0.0
        fired = worst > self.threshold
        if fired:
            self.detections += 1
        return DriftReport(worst, fired, top, self.threshold, self.windows, self.window)
