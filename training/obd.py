"""The Open Bandit Dataset (OBD) sample, and the Open Bandit Pipeline quickstart reproduced.

The OBD sample (Saito et al., "Open Bandit Dataset and Pipeline", NeurIPS 2021 Datasets and
Benchmarks) ships inside the ``obp`` 0.4.1 wheel on PyPI: ZOZOTOWN fashion recommendations, 80
items (campaign ``all``) shown in 3 positions, logged by a uniform **Random** policy and by the
production **Bernoulli Thompson Sampling** (BTS) policy, 10,000 impressions each, with clicks and
the logging propensities. :func:`obd_wheel` fetches that wheel once into a cache directory with
``pip download --no-deps`` (we depend on neither obp's code nor a vendored copy of the data);
:func:`load_obd` reads the CSVs straight out of the wheel's zip with pandas and preprocesses them
as obp's ``OpenBanditDataset`` does (rows sorted by time, positions 0..2, one-hot user features
with the first level dropped, label-encoded item features).

:func:`reproduce_quickstart` then runs obp's quickstart with our own estimators
(:mod:`training.ope`): BTS with the production prior (``obp/policy/conf/prior_bts.yaml``),
its action distribution per position by 100,000 Monte Carlo draws from a
``numpy.random.RandomState(12345)`` (the draws obp's ``BernoulliTS.compute_batch_action_dist``
makes), evaluated on the Random logs with IPW, SNIPS, DM and DR; DM/DR use a logistic regression
per position on user features + item features, cross-fitted over 3 shuffled folds (obp's
``RegressionModel.fit_predict``).

>>> alpha, beta = np.array([1.0, 50.0, 1.0]), np.array([99.0, 50.0, 99.0])
>>> dist = bts_action_dist(alpha, beta, len_list=2, n_sim=2_000, random_state=0)
>>> dist.shape, bool(np.allclose(dist.sum(axis=0), 1.0)), bool(dist[1, 0] > 0.99)
((3, 2), True, True)
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ray_app.errors import FieldError, OnrampError
from training.ope import BanditLog, Estimate, evaluate

__all__ = [
    "BEHAVIOR_POLICIES",
    "CAMPAIGNS",
    "OBP_VERSION",
    "OBP_WHEEL",
    "OBP_WHEEL_SHA256",
    "PUBLISHED",
    "ObdLogs",
    "ObdUnavailable",
    "QuickstartResult",
    "bts_action_dist",
    "default_cache_dir",
    "load_bts_prior",
    "load_obd",
    "logistic_outcome_model",
    "obd_wheel",
    "reproduce_quickstart",
]

OBP_VERSION = "0.4.1"
OBP_WHEEL = f"obp-{OBP_VERSION}-py3-none-any.whl"
#: sha256 of the wheel PyPI serves (files on PyPI never change); checked after every download.
OBP_WHEEL_SHA256 = "87dec9caf4283c25ab13036532e0a24566f1c7bdcad1653a8ded43b2f5ef8208"
BEHAVIOR_POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")

#: The Open Bandit Pipeline quickstart's published estimates for BTS on the Random logs of
#: campaign ``all`` (IPW, DM, DR), and the BTS policy's on-policy CTR they are compared with.
PUBLISHED: dict[str, float] = {"ips": 0.004553, "dm": 0.003545, "dr": 0.004727, "bts_ctr": 0.0042}


class ObdUnavailable(OnrampError):
    """The OBD wheel could not be downloaded, or a file expected inside it is missing."""


def default_cache_dir() -> Path:
    """``~/.cache/onramp/obd`` (under ``$XDG_CACHE_HOME`` when that is set)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onramp" / "obd"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def obd_wheel(cache_dir: str | Path | None = None, timeout_s: float = 300.0) -> Path:
    """The path of the obp 0.4.1 wheel in ``cache_dir``, downloading it with pip if absent.

    Runs ``python -m pip download obp==0.4.1 --no-deps --only-binary=:all: -d <tmp>`` (whatever
    index pip is configured for), checks the sha256, then moves the wheel into the cache
    atomically. Raises :class:`ObdUnavailable` with pip's own message when that fails.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheel = cache / OBP_WHEEL
    if wheel.is_file():
        return wheel
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ObdUnavailable(f"cannot create the OBD cache directory {cache}: {exc}") from None
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"obp=={OBP_VERSION}", "--no-deps"]
        cmd += ["--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ObdUnavailable(
                f"downloading obp=={OBP_VERSION} from PyPI took over {timeout_s:.0f} s "
                f"(is the package index reachable?)",
                command=" ".join(cmd),
            ) from None
        got = Path(tmp) / OBP_WHEEL
        if done.returncode != 0 or not got.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ObdUnavailable(
                f"could not download obp=={OBP_VERSION} (the Open Bandit Dataset sample) with "
                f"pip (exit {done.returncode}): " + " | ".join(tail),
                command=" ".join(cmd),
            )
        digest = _sha256(got)
        if digest != OBP_WHEEL_SHA256:
            raise ObdUnavailable(
                f"{OBP_WHEEL} has sha256 {digest}, expected {OBP_WHEEL_SHA256}: not the wheel on PyPI"
            )
        os.replace(got, wheel)
    return wheel


def _read_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    except KeyError:
        raise ObdUnavailable(f"{member} is missing from {wheel}", path=str(wheel)) from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ObdUnavailable(
            f"{wheel} is not a readable wheel ({exc}); delete it to download it again",
            path=str(wheel),
        ) from None


def load_bts_prior(
    campaign: str = "all", cache_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, beta)``: the Beta prior of ZOZOTOWN's production BTS, one entry per item."""
    _check_choice("campaign", campaign, CAMPAIGNS)
    raw = _read_member(obd_wheel(cache_dir), "obp/policy/conf/prior_bts.yaml")
    conf = yaml.safe_load(raw)
    try:
        entry = conf[campaign]
        return np.asarray(entry["alpha"], dtype=float), np.asarray(entry["beta"], dtype=float)
    except (KeyError, TypeError):
        raise ObdUnavailable(
            f"prior_bts.yaml has no alpha/beta for campaign {campaign!r}"
        ) from None


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FieldError(field, f"expected one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class ObdLogs:
    """One OBD log (``behavior_policy`` x ``campaign``), preprocessed like obp's loader.

    ``data`` is the raw table sorted by time; arrays have one row per impression: ``action``
    (item id), ``position`` (0..len_list-1), ``reward`` (click), ``pscore`` (the logging
    policy's propensity of that item at that position), ``context`` (one-hot user features,
    first level dropped); ``action_context`` has one row per item.
    """

    behavior_policy: str
    campaign: str
    data: pd.DataFrame
    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    context: np.ndarray
    action_context: np.ndarray
    n_actions: int
    len_list: int

    @property
    def n_rounds(self) -> int:
        """Number of logged impressions."""
        return int(self.action.shape[0])

    def bandit_log(self) -> BanditLog:
        """The log as :class:`training.ope.BanditLog` (with positions)."""
        return BanditLog(self.action, self.reward, self.pscore, self.position)

    def split(self, train_fraction: float = 0.7) -> tuple[ObdLogs, ObdLogs]:
        """Time-ordered split: the first ``train_fraction`` of rows, and the rest."""
        if not 0 < train_fraction < 1:
            raise FieldError("train_fraction", f"must be in (0, 1), got {train_fraction}")
        cut = int(self.n_rounds * train_fraction)
        return self._rows(slice(0, cut)), self._rows(slice(cut, None))

    def _rows(self, rows: slice) -> ObdLogs:
        return ObdLogs(
            self.behavior_policy,
            self.campaign,
            self.data.iloc[rows],
            self.action[rows],
            self.position[rows],
            self.reward[rows],
            self.pscore[rows],
            self.context[rows],
            self.action_context,
            self.n_actions,
            self.len_list,
        )


def load_obd(
    behavior_policy: str = "random", campaign: str = "all", cache_dir: str | Path | None = None
) -> ObdLogs:
    """Read one OBD log from the obp wheel (downloaded into ``cache_dir`` on first use)."""
    _check_choice("behavior_policy", behavior_policy, BEHAVIOR_POLICIES)
    _check_choice("campaign", campaign, CAMPAIGNS)
    wheel = obd_wheel(cache_dir)
    base = f"obp/dataset/obd/{behavior_policy}/{campaign}"
    data = pd.read_csv(io.BytesIO(_read_member(wheel, f"{base}/{campaign}.csv")), index_col=0)
    items = pd.read_csv(io.BytesIO(_read_member(wheel, f"{base}/item_context.csv")), index_col=0)
    need = {"timestamp", "item_id", "position", "click", "propensity_score"}
    if missing := need - set(data.columns):
        raise ObdUnavailable(f"{base}/{campaign}.csv lacks columns {sorted(missing)}")
    # obp sorts with pandas' default (quicksort): keep it, so ties fall in the same order
    data = data.sort_values("timestamp")
    position = np.unique(data["position"].to_numpy(), return_inverse=True)[1].astype(np.int64)
    user = data.loc[:, data.columns.str.contains("user_feature")]
    context = pd.get_dummies(user, drop_first=True).to_numpy(dtype=float)
    cats = items.drop(columns="item_feature_0").apply(lambda c: pd.factorize(c, sort=True)[0])
    action_context = pd.concat([cats, items["item_feature_0"]], axis=1).to_numpy(dtype=float)
    action = data["item_id"].to_numpy(dtype=np.int64)
    return ObdLogs(
        behavior_policy=behavior_policy,
        campaign=campaign,
        data=data,
        action=action,
        position=position,
        reward=data["click"].to_numpy(dtype=float),
        pscore=data["propensity_score"].to_numpy(dtype=float),
        context=context,
        action_context=action_context,
        n_actions=int(action.max()) + 1,
        len_list=int(position.max()) + 1,
    )


def bts_action_dist(
    alpha: np.ndarray,
    beta: np.ndarray,
    len_list: int = 3,
    n_sim: int = 100_000,
    random_state: int = 12345,
    chunk: int = 10_000,
) -> np.ndarray:
    """``[n_actions, len_list]``: how often BTS (no data yet, prior ``alpha``/``beta``) ranks each
    item at each position, over ``n_sim`` Monte Carlo draws.

    Each draw samples one Beta per item from ``numpy.random.RandomState(random_state)`` and ranks
    the items by it, highest first: the same stream of draws as obp's ``BernoulliTS``
    (``select_action`` repeated by ``compute_batch_action_dist``), drawn in vectorized chunks.
    """
    alpha, beta = np.asarray(alpha, dtype=float), np.asarray(beta, dtype=float)
    if alpha.shape != beta.shape or alpha.ndim != 1:
        raise FieldError("beta", f"expected the shape of alpha {alpha.shape}, got {beta.shape}")
    if (alpha <= 0).any() or (beta <= 0).any():
        raise FieldError("alpha", "Beta parameters must be > 0")
    n_actions = alpha.shape[0]
    if not 1 <= len_list <= n_actions:
        raise FieldError("len_list", f"must be in [1, {n_actions}], got {len_list}")
    rs = np.random.RandomState(random_state)
    counts = np.zeros((n_actions, len_list))
    done = 0
    while done < n_sim:
        c = min(chunk, n_sim - done)
        draws = rs.beta(alpha, beta, size=(c, n_actions))
        top = np.argsort(draws, axis=1)[:, ::-1][:, :len_list]
        for pos in range(len_list):
            counts[:, pos] += np.bincount(top[:, pos], minlength=n_actions)
        done += c
    return counts / n_sim


def logistic_outcome_model(
    train: ObdLogs,
    predict_context: np.ndarray | None = None,
    n_folds: int = 3,
    random_state: int = 12345,
    C: float = 100.0,
    max_iter: int = 1000,
) -> np.ndarray:
    """``q[row, item, position]``: click probability from a logistic regression per position on
    user features + the item's features (obp's ``RegressionModel``, ``fitting_method='normal'``).

    With ``predict_context=None`` it predicts ``train``'s own rows by ``n_folds``-fold
    cross-fitting (each row predicted by models that did not see it; folds shuffled with
    ``random_state``); otherwise it fits on all of ``train`` and predicts ``predict_context``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    def fit_predict(rows: np.ndarray, context: np.ndarray) -> np.ndarray:
        out = np.zeros((context.shape[0], train.n_actions, train.len_list))
        every_item = np.repeat(np.arange(train.n_actions)[None, :], context.shape[0], axis=0)
        x_all = np.c_[
            np.repeat(context, train.n_actions, axis=0),
            train.action_context[every_item.reshape(-1)],
        ]
        for pos in range(train.len_list):
            at = rows[train.position[rows] == pos]
            if at.size == 0:
                raise FieldError("position", f"no training rows at position {pos}")
            x = np.c_[train.context[at], train.action_context[train.action[at]]]
            model = LogisticRegression(C=C, max_iter=max_iter, random_state=random_state)
            model.fit(x, train.reward[at])
            out[:, :, pos] = model.predict_proba(x_all)[:, 1].reshape(context.shape[0], -1)
        return out

    every = np.arange(train.n_rounds)
    if predict_context is not None:
        return fit_predict(every, predict_context)
    if n_folds == 1:
        return fit_predict(every, train.context)
    q = np.zeros((train.n_rounds, train.n_actions, train.len_list))
    for fit_rows, test_rows in KFold(n_folds, shuffle=True, random_state=random_state).split(
        train.context
    ):
        q[test_rows] = fit_predict(fit_rows, train.context[test_rows])
    return q


@dataclass(frozen=True)
class QuickstartResult:
    """The reproduction: our estimates of BTS on the Random logs beside the published ones."""

    campaign: str
    estimates: dict[str, Estimate]
    published: dict[str, float]
    random_ctr: float
    bts_ctr: float
    n_rounds: int
    n_sim: int

    def relative_errors(self) -> dict[str, float]:
        """``|ours - published| / published`` for each published estimator."""
        return {
            k: abs(self.estimates[k].value - v) / v
            for k, v in self.published.items()
            if k in self.estimates
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "campaign": self.campaign,
            "estimates": {k: e.to_json() for k, e in self.estimates.items()},
            "published": self.published,
            "relative_errors": self.relative_errors(),
            "random_ctr": self.random_ctr,
            "bts_ctr": self.bts_ctr,
            "n_rounds": self.n_rounds,
            "n_sim": self.n_sim,
        }


def reproduce_quickstart(
    campaign: str = "all",
    cache_dir: str | Path | None = None,
    n_sim: int = 100_000,
    n_bootstrap: int = 1000,
    seed: int = 12345,
) -> QuickstartResult:
    """Evaluate production BTS on the Random logs of ``campaign`` (see the module docstring)."""
    logs = load_obd("random", campaign, cache_dir)
    alpha, beta = load_bts_prior(campaign, cache_dir)
    if alpha.shape[0] != logs.n_actions:
        raise ObdUnavailable(
            f"the BTS prior has {alpha.shape[0]} items but the {campaign} logs have "
            f"{logs.n_actions}"
        )
    dist = bts_action_dist(alpha, beta, logs.len_list, n_sim, random_state=12345)
    action_dist = np.broadcast_to(dist, (logs.n_rounds, *dist.shape))
    q = logistic_outcome_model(logs, n_folds=3, random_state=12345)
    estimates = evaluate(logs.bandit_log(), action_dist, q, n_bootstrap=n_bootstrap, seed=seed)
    bts = load_obd("bts", campaign, cache_dir)
    published = dict(PUBLISHED) if campaign == "all" else {}
    published.pop("bts_ctr", None)
    return QuickstartResult(
        campaign=campaign,
        estimates=estimates,
        published=published,
        random_ctr=float(logs.reward.mean()),
        bts_ctr=float(bts.reward.mean()),
        n_rounds=logs.n_rounds,
        n_sim=n_sim,
    )
