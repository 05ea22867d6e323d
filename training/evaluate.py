"""``onramp evaluate`` / ``python -m training.evaluate``: off-policy evaluation from the shell.

Three modes:

* ``--obd``: the Open Bandit Pipeline quickstart reproduced (:func:`training.obd.reproduce_quickstart`);
* ``--obd-policy``: Onramp's scorer trained on the old Random logs of OBD by the Ray Train job
  (:func:`training.train.train_obd`, as ``onramp train --obd``) and evaluated on the newer ones
  (:func:`training.obd_policy.evaluate_onramp_on_obd`);
* ``--logs FILE ...``: Onramp's own decision and reward logs (JSON lines of ``onramp.decisions``
  and ``onramp.rewards`` records): the logged policy, the uniform random policy and, with
  ``--model``, the greedy policy of a model file, each with IPS/SNIPS (and DM/DR with a model).

Each prints a table, writes a PNG of the estimated values with their CI bars (``--plot``), and
prints a JSON summary as its last line.

>>> recs = [{"schema": "onramp.reward/1", "decisionId": f"d{i}", "userKey": "u", "slot": "s",
...          "action": "ab"[i % 2], "actionIndex": i % 2, "arm": "t", "propensity": 0.5,
...          "features": [1.0], "reward": float(i % 2), "outcome": "timeout",
...          "decidedAtMs": i, "outcomeAtMs": None, "modelVersion": 0} for i in range(4)]
>>> for r in recs[1::2]: r["outcome"] = "completed"
>>> table = onramp_log_from_records(recs, {"s": ["a", "b"]})
>>> res = evaluate_onramp_logs(table, n_bootstrap=50)
>>> res["logged"]["ips"].value, res["uniform"]["ips"].value
(0.5, 0.5)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ray_app.cli.common import (
    EXIT_STATUS_HELP,
    common_options,
    count,
    guarded,
    plot_path,
    positive,
    refuse_outside,
    seconds_or_zero,
    seed,
    setup_logging,
)
from ray_app.cli.output import dumps, working
from ray_app.config import Settings, load_settings
from ray_app.errors import FieldError
from ray_app.experiments import Experiment
from ray_app.records import (
    DECISION_SCHEMAS,
    REWARD_SCHEMA,
    REWARD_SCHEMAS,
    RecordError,
    RewardRecord,
)
from training.data import candidates_problem, decision_time, pending_horizon
from training.ope import BanditLog, Estimate, evaluate

__all__ = [
    "OnrampLog",
    "evaluate_onramp_logs",
    "main",
    "onramp_log_from_records",
    "plot_estimates",
    "print_obd_policy_report",
    "read_jsonl",
]


def read_jsonl(paths: Iterable[str | Path], topics: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every JSON object of the given JSON-lines files or folders (blank lines skipped); an
    archive root (``onramp archive``'s ``--out``, with a folder per topic) is read in the
    folders of ``topics`` it has.

    A line that is not a JSON object raises :class:`FieldError` naming ``file:line``.
    """
    from ray_app.experiments.report import read_json_lines
    from ray_app.storage import Storage

    out: list[dict[str, Any]] = []
    for path in paths:
        store = Storage(str(path), field="logs")  # a local path or a URI (s3://, file://)
        have = set(store.subdirs("")) if store.exists() and not store.is_file() else set()
        folders = [t for t in topics if t in have]
        if folders:
            for t in folders:
                out += read_json_lines(path, t)
        else:
            out += read_json_lines(path)
    return out


@dataclass(frozen=True)
class OnrampLog:
    """Onramp's reward records as arrays over one action space (all slots side by side).

    Action ``j`` of slot ``s`` has the global index ``offset[s] + j``; ``allowed[i, a]`` is true
    for the actions row ``i`` could have been shown (its logged candidates, else its slot's).
    """

    log: BanditLog
    features: np.ndarray
    slots: list[str]
    slot_of_row: np.ndarray
    slot_actions: dict[str, list[str]]
    offset: dict[str, int]
    allowed: np.ndarray
    skipped: int
    #: Reward records left out, by reason: ``duplicate`` (a second reward of a decision: the
    #: topics are written at least once), ``action`` (its action is not the slot's action at its
    #: ``actionIndex``), ``candidates`` (actions the slot does not have, or not the served one).
    invalid: dict[str, int] = field(default_factory=dict)
    #: Rewards of the arms that serve the static flow (control, holdout) left out: it shows one action with propensity
    #: 1, so its rows never show what another policy would choose (no positivity); the
    #: estimates are for the users of the exploring arms, a random share of all by the split.
    control: int = 0

    @property
    def n_actions(self) -> int:
        """Size of the global action space."""
        return int(self.allowed.shape[1])


def onramp_log_from_records(
    records: Sequence[Mapping[str, Any]],
    slot_actions: Mapping[str, Sequence[str]],
    dim: int | None = None,
    censor_ms: int = 0,
) -> OnrampLog:
    """Join decision and reward records (by decision id; the first reward of an id wins) into an
    :class:`OnrampLog`. ``slot_actions`` (slot -> action ids in head order) fixes the action
    space, e.g. a catalog's or a model bundle's. Records of other schemas are skipped (counted),
    and so are the control arm's (:attr:`OnrampLog.control`). A reward record that cannot be
    used is left out and counted in :attr:`OnrampLog.invalid` by reason, as training counts
    them (``invalid:<field>``, ``unknown_slot``, ``action``, ``candidates``), never raised.

    ``dim``: the features a model takes (rows logged with another length, under another feature
    schema, are left out as ``feature_schema``); None keeps no features (the model-free policies
    need none, and an archive that spans a feature-schema change stays readable).

    ``censor_ms``: where a decision record made within this long of the newest has no reward
    yet, the rewards of that stretch are left out (``recent``, :func:`~training.data.pending_horizon`):
    a decision without an outcome is rewarded 0 only once its attribution window and the
    allowed lateness have passed, so that stretch holds its decisions' quick outcomes and not yet
    their timeouts, and would inflate every estimate. Without decision records nothing tells.
    """
    decisions: dict[str, Mapping[str, Any]] = {}
    rewards: dict[str, Mapping[str, Any]] = {}
    skipped = 0
    invalid: dict[str, int] = {}

    def leave_out(reason: str) -> None:
        invalid[reason] = invalid.get(reason, 0) + 1

    for rec in records:
        schema = rec.get("schema", REWARD_SCHEMA if "reward" in rec else None)
        did = str(rec.get("decisionId"))
        if schema in DECISION_SCHEMAS:
            decisions.setdefault(did, rec)
        elif schema in REWARD_SCHEMAS:
            if did in rewards:
                leave_out("duplicate")
            rewards.setdefault(did, rec)
        else:
            skipped += 1
    if not rewards:
        raise FieldError("logs", "no reward records (schema onramp.reward/1 or /2) to evaluate")
    slots = list(slot_actions)
    offset, total = {}, 0
    for s in slots:
        offset[s] = total
        total += len(slot_actions[s])
    rows = []
    control = 0
    for did, rec in rewards.items():
        if Experiment.serves_control(str(rec.get("arm"))):  # control and holdout alike
            control += 1
            continue
        d = decisions.get(did)
        if (
            rec.get("candidates") is None
            and d is not None
            and isinstance(d.get("candidates"), list)
        ):
            rec = {**rec, "candidates": d["candidates"]}
        try:
            r = RewardRecord.from_json(rec, slot_actions)
        except RecordError as exc:
            leave_out(f"invalid:{getattr(exc, 'field', None) or 'record'}")
            continue
        if r.slot not in offset:
            leave_out("unknown_slot")  # a slot the catalog no longer has
            continue
        ids = slot_actions[r.slot]
        if r.action_index >= len(ids) or ids[r.action_index] != r.action:
            leave_out("action")  # a reward credited to another action than the one shown
            continue
        if candidates_problem(r.candidates, ids, r.action) is not None:
            leave_out("candidates")  # its propensity was of a choice among other actions
            continue
        if dim is not None and len(r.features) != dim:
            leave_out("feature_schema")  # logged under a feature schema the model does not take
            continue
        rows.append(r)
    times = [t for d in decisions.values() if (t := decision_time(d)) is not None]
    horizon = pending_horizon(times, rewards, censor_ms)
    if horizon is not None and rows:
        kept = [r for r in rows if r.decided_at_ms <= horizon]
        if len(kept) != len(rows):
            invalid["recent"] = len(rows) - len(kept)
        rows = kept
    if not rows:
        why = f" (left out: {dict(sorted(invalid.items()))})" if invalid else ""
        if "recent" in invalid:
            why += (
                "; 'recent': decisions within the attribution window and the allowed lateness "
                "of the newest, whose timeouts are not written yet (--censor-s 0 keeps them)"
            )
        raise FieldError(
            "logs",
            f"no reward records of an exploring arm to evaluate ({control} of the control arm, "
            f"whose static flow shows one action with propensity 1, are left out){why}",
        )
    allowed = np.zeros((len(rows), total), dtype=bool)
    for i, r in enumerate(rows):
        ids = slot_actions[r.slot]
        cands = r.candidates or ids
        for c in cands:
            if c in ids:
                allowed[i, offset[r.slot] + ids.index(c)] = True
        allowed[i, offset[r.slot] + r.action_index] = True
    log = BanditLog(
        action=[offset[r.slot] + r.action_index for r in rows],
        reward=[r.reward for r in rows],
        pscore=[r.propensity for r in rows],
    )
    features = (
        np.asarray([r.features for r in rows], dtype=np.float32)
        if dim is not None
        else np.zeros((len(rows), 0), dtype=np.float32)
    )
    return OnrampLog(
        log=log,
        features=features,
        slots=slots,
        slot_of_row=np.asarray([slots.index(r.slot) for r in rows]),
        slot_actions={s: list(v) for s, v in slot_actions.items()},
        offset=offset,
        allowed=allowed,
        skipped=skipped,
        invalid=invalid,
        control=control,
    )


def _logged_dist(t: OnrampLog) -> np.ndarray:
    """A distribution with the logged propensity on the logged action (the rest spread over the
    other allowed actions): IPS weights of 1, i.e. the logging policy evaluated on-policy."""
    n = t.log.n
    dist = np.zeros((n, t.n_actions))
    rows = np.arange(n)
    others = t.allowed.copy()
    others[rows, t.log.action] = False
    k = others.sum(axis=1)
    rest = np.where(k > 0, (1.0 - t.log.pscore) / np.maximum(k, 1), 0.0)
    dist[others] = np.repeat(rest, k)
    dist[rows, t.log.action] = np.where(k > 0, t.log.pscore, 1.0)
    return dist


def _model_scores(t: OnrampLog, bundle: Any, heads: Mapping[str, int]) -> np.ndarray:
    """Logits ``[n, n_actions]`` of a model bundle (``-inf`` outside each row's slot);
    ``heads`` maps a slot to its head (the catalog's slot index)."""
    from ray_app.model.scorer import score_batch

    if bundle.scorer.dim != t.features.shape[1]:
        raise FieldError(
            "model",
            f"the model takes {bundle.scorer.dim} features, the logs carry {t.features.shape[1]}",
        )
    out = np.full((t.log.n, t.n_actions), -np.inf)
    for k, slot in enumerate(t.slots):
        rows = np.flatnonzero(t.slot_of_row == k)
        if rows.size == 0:
            continue
        lo = t.offset[slot]
        scores = score_batch(bundle, t.features[rows], heads[slot])
        out[rows, lo : lo + len(t.slot_actions[slot])] = scores
    return out


def evaluate_onramp_logs(
    t: OnrampLog,
    bundle: Any = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    heads: Mapping[str, int] | None = None,
) -> dict[str, dict[str, Estimate]]:
    """Estimates per policy: ``logged`` and ``uniform`` (IPS, SNIPS), ``greedy`` with a model, and
    DM/DR for the model-free policies too when a model gives the outcome estimates. ``heads``
    (slot -> head index of the bundle's scorer) defaults to the order of ``t.slots``."""
    n = t.log.n
    uniform = t.allowed / t.allowed.sum(axis=1, keepdims=True)
    policies: dict[str, np.ndarray] = {"logged": _logged_dist(t), "uniform": uniform}
    q = None
    if bundle is not None:
        logits = _model_scores(t, bundle, heads or {s: i for i, s in enumerate(t.slots)})
        masked = np.where(t.allowed, logits, -np.inf)
        greedy = np.zeros((n, t.n_actions))
        greedy[np.arange(n), masked.argmax(axis=1)] = 1.0
        policies["greedy"] = greedy
        q = np.where(
            np.isfinite(logits),
            1.0 / (1.0 + np.exp(-np.where(np.isfinite(logits), logits, 0.0))),
            0.0,
        )
    out: dict[str, dict[str, Estimate]] = {}
    for name, dist in policies.items():
        names = ["ips", "snips"] if q is None or name == "logged" else ["ips", "snips", "dm", "dr"]
        out[name] = evaluate(t.log, dist, q, names, n_bootstrap=n_bootstrap, seed=seed)  # type: ignore[arg-type]
    return out


def plot_estimates(
    results: Mapping[str, Mapping[str, Estimate]],
    path: str | Path,
    title: str,
    references: Mapping[str, float] | None = None,
) -> Path:
    """A PNG: one group of bars per policy, one bar per estimator, 95% CI as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(results)
    estimators = sorted(
        {e for r in results.values() for e in r}, key=["ips", "snips", "dm", "dr"].index
    )
    width = 0.8 / max(len(estimators), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(policies) + 2), 4.2))
    for j, est in enumerate(estimators):
        xs, ys, lo, hi = [], [], [], []
        for i, pol in enumerate(policies):
            if est in results[pol] and np.isfinite(results[pol][est].value):  # NaN: undefined
                e = results[pol][est]
                xs.append(i + (j - (len(estimators) - 1) / 2) * width)
                ys.append(e.value)
                lo.append(max(e.value - e.ci_low, 0.0))
                hi.append(max(e.ci_high - e.value, 0.0))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=est.upper())
    for k, (name, value) in enumerate((references or {}).items()):
        ax.axhline(
            value, linestyle="--", color=f"C{len(estimators) + k}", linewidth=1,
            label=f"{name} {value:.4f}",
        )  # fmt: skip
    ax.set_xticks(range(len(policies)), policies)
    ax.set_ylabel("estimated policy value (mean reward)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _fmt(e: Estimate) -> str:
    return f"{e.value:.6f}  [{e.ci_low:.6f}, {e.ci_high:.6f}]"


def _print_table(results: Mapping[str, Mapping[str, Estimate]]) -> None:
    print(f"{'policy':<16}{'estimator':<10}{'value':>10}  95% CI")
    for pol, ests in results.items():
        for name, e in ests.items():
            print(f"{pol:<16}{name:<10}{_fmt(e)}")


def print_obd_policy_report(rep: Any) -> None:
    """The table of an :class:`~training.obd_policy.ObdPolicyReport` on stdout: per policy and
    estimator the estimated CTR with its 95% CI (the logged policies' on-policy CTR too), then
    the outcome model's held-out quality and each policy's effective sample size."""
    results = {**rep.policies, **{k: {"on_policy": e} for k, e in rep.on_policy.items()}}
    _print_table(results)
    h = rep.heldout
    print(
        f"outcome model on the {rep.n_test} held-out rows ({h['clicks']:.0f} clicks): "
        f"AUC {h['auc']:.3f}, log loss {h['logloss']:.5f} (constant CTR: "
        f"{h['baseline_logloss']:.5f}); effective sample size per policy: "
        + ", ".join(f"{k} {v:.0f}" for k, v in rep.effective_sample_size.items())
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="onramp evaluate",
        description="Off-policy evaluation (IPS, SNIPS, DM, DR with bootstrap CIs) of policies on "
        "logged bandit data: the Open Bandit Dataset sample or Onramp's own decision logs.",
        epilog="examples:\n"
        "  onramp evaluate --obd                      # reproduce the OBP quickstart (BTS on Random)\n"
        "  onramp evaluate --obd-policy --epochs 3    # Onramp's scorer on held-out OBD logs\n"
        "  (--obd-policy trains with the Ray Train job, as `onramp train --obd`)\n"
        "  onramp evaluate --logs rewards.jsonl decisions.jsonl --model model.bin\n"
        "The OBD sample is fetched once (pip download obp==0.4.1 --no-deps) into --cache-dir.\n"
        "The last line printed is a JSON summary.\n\n" + EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options()],
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--obd", action="store_true", help="reproduce the Open Bandit Pipeline quickstart"
    )
    mode.add_argument(
        "--obd-policy", action="store_true", help="train Onramp's scorer on OBD Random logs (first "
        "70%% by time) with the Ray Train job (as `onramp train --obd`) and evaluate it on the "
        "rest beside the logged Random and BTS policies",
    )  # fmt: skip
    mode.add_argument("--logs", nargs="+", metavar="FILE", help="Onramp decision/reward JSON lines")
    p.add_argument(
        "--campaign", default="all", choices=["all", "men", "women"], help="OBD campaign"
    )
    p.add_argument("--cache-dir", metavar="DIR", help="OBD cache (default ~/.cache/onramp/obd)")
    p.add_argument(
        "--n-bootstrap", type=count, default=1000, help="bootstrap resamples (default 1000)"
    )
    p.add_argument("--seed", type=seed, default=12345, help="seed of the bootstrap and training")
    p.add_argument("--n-sim", type=count, default=100_000, help="--obd: BTS Monte Carlo draws")
    p.add_argument("--epochs", type=count, default=3, help="--obd-policy: training epochs")
    p.add_argument("--workers", type=count, default=2, help="--obd-policy: Ray Train workers")
    p.add_argument("--gpu", action="store_true", help="--obd-policy: one GPU per worker")
    p.add_argument(
        "--temperature", type=positive, default=0.1, help="--obd-policy: softmax temperature"
    )
    p.add_argument(
        "--model", metavar="FILE", help="--logs: a model bundle for the greedy policy and DM/DR"
    )
    p.add_argument("--catalog", metavar="FILE", help="--logs: catalog (default: the packaged one)")
    p.add_argument(
        "--censor-s",
        type=seconds_or_zero,
        metavar="SECONDS",
        help="--logs: where a decision record made within this long of the newest has no "
        "reward yet, leave out the rewards of that stretch: its timeouts (reward 0) are not "
        "written yet, so it holds only quick outcomes (default: stream.attribution_window_s + "
        "stream.allowed_lateness_ms; 0: keep all)",
    )
    p.add_argument(
        "--plot",
        metavar="PNG",
        type=plot_path,
        default="ope.png",
        help="where to write the plot (default ope.png; .pdf, .svg, ... by the suffix)",
    )
    return p


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quickstart(args: argparse.Namespace) -> Any:
    """:func:`training.obd.reproduce_quickstart`'s steps, each announced with its duration (a
    line every 15 s off a terminal): the reproduction takes minutes."""
    import training.obd as obd

    name = f"OBD {args.campaign}"
    with working(f"{name}: loading the Random logs and the BTS prior (fetched once)"):
        logs = obd.load_obd("random", args.campaign, args.cache_dir)
        alpha, beta = obd.load_bts_prior(args.campaign, args.cache_dir)
        bts = obd.load_obd("bts", args.campaign, args.cache_dir)
    if alpha.shape[0] != logs.n_actions:
        raise obd.ObdUnavailable(
            f"the BTS prior has {alpha.shape[0]} items but the {args.campaign} logs have "
            f"{logs.n_actions}"
        )
    with working(f"{name}: BTS action distribution ({args.n_sim:,} Monte Carlo draws)"):
        dist = obd.bts_action_dist(alpha, beta, logs.len_list, args.n_sim, random_state=12345)
    with working(f"{name}: outcome model (logistic, 3 folds on {logs.n_rounds:,} rounds)"):
        q = obd.logistic_outcome_model(logs, n_folds=3, random_state=12345)
    action_dist = np.broadcast_to(dist, (logs.n_rounds, *dist.shape))
    with working(f"{name}: IPS/DM/DR with {args.n_bootstrap:,} bootstrap resamples"):
        estimates = evaluate(
            logs.bandit_log(), action_dist, q, n_bootstrap=args.n_bootstrap, seed=args.seed
        )
    published = dict(obd.PUBLISHED) if args.campaign == "all" else {}
    published.pop("bts_ctr", None)
    return obd.QuickstartResult(
        campaign=args.campaign, estimates=estimates, published=published,
        random_ctr=float(logs.reward.mean()), bts_ctr=float(bts.reward.mean()),
        n_rounds=logs.n_rounds, n_sim=args.n_sim,
    )  # fmt: skip


def _run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.obd:
        res = _quickstart(args)
        results = {"bts_on_random": res.estimates}
        _print_table(results)
        errs = res.relative_errors()
        for k, v in res.published.items():
            print(
                f"published {k:<6}{v:.6f}  ours {res.estimates[k].value:.6f}  rel.err {errs[k]:.2%}"
            )
        print(f"on-policy CTR: random {res.random_ctr:.6f}, bts {res.bts_ctr:.6f}")
        plot = plot_estimates(
            results, args.plot, f"BTS (production prior) on OBD Random/{args.campaign}",
            {"BTS on-policy": res.bts_ctr, "Random on-policy": res.random_ctr},
        )  # fmt: skip
        return {"mode": "obd", "plot": str(plot), **res.to_json()}
    if args.obd_policy:
        from training.train import TrainOptions, train_obd

        _progress("OBD policy: training Onramp's scorer with Ray Train on the first 70% of the "
                  "Random logs ...")  # fmt: skip
        opts = TrainOptions(
            obd=True, campaign=args.campaign, cache_dir=args.cache_dir, epochs=args.epochs,
            seed=args.seed, temperature=args.temperature, n_bootstrap=args.n_bootstrap,
            workers=args.workers, gpu=args.gpu, verbose=bool(getattr(args, "verbose", False)),
        )  # fmt: skip
        trained = train_obd(opts, settings)
        rep = trained.report
        print_obd_policy_report(rep)
        plot = plot_estimates(
            rep.policies, args.plot, f"CTR on held-out OBD Random/{args.campaign} (last 30%)",
            {f"{k} on-policy": e.value for k, e in rep.on_policy.items()},
        )  # fmt: skip
        training = {k: v for k, v in trained.summary.items() if k not in ("report", "mode")}
        return {"mode": "obd-policy", "plot": str(plot), **rep.to_json(), "training": training}
    from ray_app.catalog import load_catalog

    catalog = load_catalog(args.catalog or settings.decide.catalog_path)
    bundle = None
    # the catalog's slot order is the scorer's head order (a bundle is checked against it)
    slot_actions: dict[str, list[str]] = {n: list(s.action_ids) for n, s in catalog.slots.items()}
    heads = {n: s.index for n, s in catalog.slots.items()}
    if args.model:
        from ray_app.features import FeatureSchema
        from ray_app.model import ModelBundle

        try:
            data = Path(args.model).read_bytes()
        except OSError as exc:
            raise FieldError("model", f"cannot read {args.model}: {exc.strerror or exc}") from None
        bundle = ModelBundle.from_bytes(data, FeatureSchema.from_catalog(catalog), catalog, False)
    topics = (settings.topics.decisions, settings.topics.rewards)
    lateness_ms = settings.stream.allowed_lateness_ms
    censor_ms = (
        int(settings.stream.attribution_window_s * 1000) + lateness_ms
        if args.censor_s is None
        else int(args.censor_s * 1000)
    )
    table = onramp_log_from_records(
        read_jsonl(args.logs, topics),
        slot_actions,
        dim=bundle.scorer.dim if bundle is not None else None,
        censor_ms=censor_ms,
    )
    results = evaluate_onramp_logs(table, bundle, args.n_bootstrap, args.seed, heads)
    _print_table(results)
    plot = plot_estimates(results, args.plot, f"policies on {table.log.n} logged decisions")
    return {
        "mode": "logs",
        "n": table.log.n,
        "skipped_records": table.skipped,
        "invalid_records": table.invalid,
        "control_records_left_out": table.control,
        "censor_s": censor_ms / 1000,
        "plot": str(plot),
        "policies": {p: {k: e.to_json() for k, e in r.items()} for p, r in results.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training.evaluate`` and ``onramp evaluate``: the exit statuses
    of every ``onramp`` command (0 ok, 1 runtime error, 2 usage or configuration, 130 Ctrl-C)."""
    parser = _parser()
    args = parser.parse_args(argv)
    obd, policy, logs = args.obd, args.obd_policy, args.logs is not None
    refuse_outside(
        parser,
        args,
        {
            "--n-sim": ("--obd", obd),
            **dict.fromkeys(
                ("--epochs", "--workers", "--gpu", "--temperature"), ("--obd-policy", policy)
            ),
            **dict.fromkeys(("--campaign", "--cache-dir"), ("--obd and --obd-policy", not logs)),
            **dict.fromkeys(("--model", "--catalog", "--censor-s"), ("--logs", logs)),
        },
    )
    setup_logging(args)

    def run() -> int:
        settings = load_settings(args.config)
        summary = _run(args, settings)
        print(f"plot: {summary['plot']}", file=sys.stderr)
        print(dumps(summary))  # the last line: strict JSON (NaN as null)
        return 0

    return guarded("onramp evaluate", run)


if __name__ == "__main__":
    sys.exit(main())
