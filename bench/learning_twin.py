"""The learning loop without Kafka, Ray or HTTP: for tuning the learner over many seeds.

``bench/learning.py`` runs the real system and takes about 5 minutes for one seed, and one seed
says little: the share of the oracle's gain it reports moves by +-0.05 from run to run. This twin
runs the same pieces in one process with a simulated clock, about 20 s per seed:

* the same world, users and responses (``--world``, :mod:`ray_app.sim.worlds`; the default is
  the same as ``bench/learning.py``'s), beside the same Vowpal Wabbit baselines on the same
  users (``bench/vw_baseline.py``);
* the same profiles: each user's sign-up calls (``identify``, with traits top level or in
  ``context.traits`` as the world says, then ``welcome`` viewed and completed) go through the
  collector's own parsing (:func:`~ray_app.collect.parse.parse_request`), the stream's decoder
  and ``apply`` into a :class:`~ray_app.state.profile.Profile`, featurized by the serving
  :class:`~ray_app.features.FeatureSchema` at the decision time, whose hashing has each
  run's own seed (``--hash-seed``: which tokens share a bucket moves a world's curve by a few
  hundredths, and a mean over world seeds under one hash seed is one draw of it; ``--hash-seed
  0`` is the shipped hashing);
* the shipped settings: the :class:`~ray_app.learn.learner.OnlineLearner` is configured from
  ``load_settings(env={})`` by the learner service's own code, and the policy as the decision
  replicas build it (``decide.policy``, ``decide.epsilon``, raised by the learner's published
  epsilon); a flag overrides one setting only when given;
* the learner fed every ``--learn-every`` seconds (its poll) with the rewards due by then; a
  published model reaches the decisions ``decide.model_poll_s`` later (the replicas' poll);
* rewards arriving as the stream emits them: an explicit outcome (``Step Completed`` and
  ``Step Abandoned`` alike) ``--outcome-delay`` seconds after it happens (the worlds' users
  always complete or abandon, so nobody waits for the end of an attribution window);
* 90% treatment / 10% control (``--treatment-share``, the experiment's split);
* the drift at ``--drift-at`` (``--drift``), found by the learner service's own reward-rate
  detector (:class:`~ray_app.learn.drift.RewardRateDrift` under the shipped ``learn.drift_*``
  settings, fed the rewards as the learner gets them; an alert boosts as in the service), or
  signalled ``--drift-detect-s`` after the drift when that is given.

Not modelled: cold starts (profile reads past their deadline), Kafka and HTTP latency, CPU
contention. So its figures are for comparing learner settings, not a substitute for
``bench/learning.py``, which is the end-to-end figure.

    .venv/bin/python bench/learning_twin.py                          # 4 seeds on teams
    .venv/bin/python bench/learning_twin.py --world campus --seeds 1 2
    .venv/bin/python bench/learning_twin.py --weight-decay 0 --seeds 1   # one setting changed
    # a second run from the first one's model file (a restarted `onramp up`), and a model
    # file from another world
    .venv/bin/python bench/learning_twin.py --users 5000 --drift none --save-model /tmp/teams
    .venv/bin/python bench/learning_twin.py --users 4000 --drift none --start-model /tmp/teams
    .venv/bin/python bench/learning_twin.py --users 4000 --drift none --start-model /tmp/teams \
        --world campus

The last line is JSON: per seed and on average, the curve per 1,000 users (the share of the
oracle's gain over the static flow of the treatment arm, the control arm and the VW runs, from
expected probabilities; on average also ``treatment_se``, the standard error of the treatment
arm's mean over the seeds), the guardrail figure (the longest run of treatment users below the
control arm after user 2,000), the share captured before the drift (``value``, with
``value_se``: each user valued by their own cell's expected probabilities, as the curve),
Vowpal Wabbit's on the same users (``baseline_value``) and the users to recover after it. A difference between two settings smaller than
about twice the standard error is noise: over 8 seeds it is 0.02-0.03 of the oracle's gain.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import heapq
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, git_rev, machine
from bench.learning import (
    BLOCK,
    last_rate,
    learning_summary,
    make_world,
    users_to_recover,
    world_args,
)

_WRITE_KEY = "twin-write-key"
_AUTH = "Basic " + base64.b64encode(f"{_WRITE_KEY}:".encode()).decode()

#: LearnerConfig fields a flag may override (``None``: the shipped setting).
_LEARNER_FLAGS = ("epsilon", "lr", "weight_decay", "replay_steps", "warmup_rewards", "gamma_scale")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    world_args(ap, users=12_000, drift_at=7_000)
    ap.add_argument("--window", type=int, default=2_000, help="users per pre-drift rate")
    ap.add_argument("--rate", type=float, default=40.0, help="users per second")
    ap.add_argument("--treatment-share", type=float, default=0.9)
    ap.add_argument("--no-vw", action="store_true", help="skip the Vowpal Wabbit baselines")
    ap.add_argument(
        "--hash-seed",
        type=hash_seed_arg,
        default="run",
        metavar="run|N",
        help="the feature hashing's seed (catalog features.hash_seed): 'run' (the default) "
        "gives each run its world seed, so that a mean over seeds is also a mean over which "
        "tokens collide; N gives every run seed N (0: the shipped hashing)",
    )
    ap.add_argument(
        "--threshold-weight",
        type=float,
        default=None,
        metavar="W",
        help="the value of a number's thresholds (catalog features.threshold_weight, in (0, 1]; "
        "default: the shipped catalog's)",
    )
    ap.add_argument(
        "--cross-weight",
        type=float,
        default=None,
        metavar="W",
        help="the value of each cross of two traits (catalog features.cross_weight, in [1, 8]; "
        "default: the shipped catalog's, 2; 1 is every release's before it)",
    )
    ap.add_argument(
        "--save-model",
        metavar="PREFIX",
        default=None,
        help="write each seed's last published model file to PREFIX-SEED.onramp (what the "
        "learner service keeps at decide.model_path)",
    )
    ap.add_argument(
        "--start-model",
        metavar="PREFIX",
        default=None,
        help="start each seed's learner and replicas from PREFIX-SEED.onramp, by the learner "
        "service's own start-up (ray_app.learn.startup), as a restarted `onramp up` on the "
        "embedded broker does (its learner state's reward offsets mean nothing to a new broker); "
        "a file saved in another --world is a model from another world",
    )
    shipped = ap.add_argument_group("settings (default: the shipped ones)")
    shipped.add_argument("--epsilon", type=float, default=None, help="decide.epsilon")
    shipped.add_argument("--policy", default=None, help="decide.policy")
    shipped.add_argument("--lr", type=float, default=None, help="learn.lr")
    shipped.add_argument("--gamma-scale", type=float, default=None, help="learn.gamma_scale")
    shipped.add_argument("--weight-decay", type=float, default=None, help="learn.weight_decay")
    shipped.add_argument("--replay-steps", type=int, default=None, help="learn.replay_steps")
    shipped.add_argument(
        "--warmup-rewards", type=int, default=None, help="learn.warmup_rewards (0: no warm-up)"
    )
    shipped.add_argument("--model-poll-s", type=float, default=None, help="decide.model_poll_s")
    shipped.add_argument(
        "--set",
        dest="learner_set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any LearnerConfig field (VALUE as JSON, else text), e.g. --set batch_size=32 "
        "--set publish_interval_s=1; repeatable",
    )
    sim = ap.add_argument_group("the simulated system")
    sim.add_argument(
        "--learn-every", type=float, default=0.2, help="seconds between learn calls (its poll)"
    )
    sim.add_argument(
        "--outcome-delay",
        type=float,
        default=1.0,
        help="seconds from an explicit outcome (completed or abandoned) to its reward",
    )
    sim.add_argument(
        "--abandon-delay",
        type=float,
        default=0.0,
        help="seconds more for an abandonment (a product that reports a step abandoned when "
        "its screen times out, not when the user leaves)",
    )
    sim.add_argument("--time-scale", type=float, default=0.02, help="as bench/learning.py")
    sim.add_argument(
        "--drift-detect-s",
        type=float,
        default=None,
        help="signal the drift this long after it instead of running the shipped detector",
    )
    return ap


def hash_seed_arg(text: str) -> str | int:
    """``--hash-seed``: ``run`` or an integer in [0, 2**32).

    >>> hash_seed_arg("run"), hash_seed_arg("0")
    ('run', 0)
    """
    if text == "run":
        return text
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 1 << 32:
        raise argparse.ArgumentTypeError(
            f"expected 'run' or an integer in [0, 2**32), got {text!r}"
        )
    return seed


def twin_catalog(
    hash_seed: int, threshold_weight: float | None = None, cross_weight: float | None = None
) -> Any:
    """The shipped catalog, its features hashed with ``hash_seed``, a number's thresholds worth
    ``threshold_weight`` and each cross ``cross_weight`` (0, and None: the shipped catalog's).

    >>> twin_catalog(0).features is None, twin_catalog(3).features["hash_seed"]
    (True, 3)
    >>> twin_catalog(0, 0.5).features["threshold_weight"]
    0.5
    >>> twin_catalog(0, None, 1).features["cross_weight"]
    1.0
    """
    from ray_app.catalog import Catalog, load_catalog
    from ray_app.features import Hashing

    catalog = load_catalog()
    features = dict(catalog.features or {})
    if hash_seed:
        features["hash_seed"] = hash_seed
    if threshold_weight is not None and threshold_weight != 1.0:  # 1: the shipped weight
        features["threshold_weight"] = threshold_weight
    if cross_weight is not None and cross_weight != Hashing.cross_weight:  # the shipped weight
        features["cross_weight"] = float(cross_weight)
    if features == (catalog.features or {}):
        return catalog
    return Catalog.from_dict({**catalog.as_dict(), "features": features}, source="twin")


def learner_sets(pairs: list[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` pairs -> LearnerConfig overrides (VALUE parsed as JSON when it is
    JSON, else kept as text); ``SystemExit`` for a field LearnerConfig does not have.

    >>> learner_sets(["batch_size=32", "optimizer=sgd", 'treatment_arms=["a"]'])
    {'batch_size': 32, 'optimizer': 'sgd', 'treatment_arms': ('a',)}
    """
    from ray_app.learn import LearnerConfig

    fields = {f.name for f in dataclasses.fields(LearnerConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with a LearnerConfig field")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The learner flags given (``None``: not given) and the ``--set`` pairs."""
    return {
        **{k: getattr(args, k) for k in _LEARNER_FLAGS},
        **learner_sets(getattr(args, "learner_set", None) or []),
    }


def cell_diagnostics(
    truth: Any, outcomes: list[Any], start: int, stop: int, top: int = 5
) -> dict[str, Any]:
    """Where the treatment arm of users ``start`` to ``stop - 1`` lost against the oracle:
    the share of decisions that explored (served another action than the model's top one),
    the expected completions that exploring cost (``lost_to_exploration``: the top action's
    completion probability less the served one's, summed; the rest of ``lost_completions`` is
    the top action not being the oracle's), the share whose top action was the oracle's, and
    the ``top`` cells (hidden segments, for reporting only) that lost the most expected
    completions, with their users and the share of their top actions that were the oracle's.
    A cell whose favourite the model never found shows a share near 0; one it found, near 1
    less the exploration. For each such cell also: the oracle's action (``best``), its true
    completion rate, the model's mean predicted rate of it (``best_rated``, the logits
    without the exploration bonus; ``None`` where no decision was rated) and the share of the
    cell's users it was served to (``best_served``), and the same true and predicted rates of
    the action the model ranked first most often there (``top``): a favourite that wins only in
    that pair of traits is underrated by the sum of its two traits' effects elsewhere, and
    shown too rarely to be corrected."""
    slot_name = "next_step"
    slot = truth.catalog.slot(slot_name)
    cells: dict[str, list[float]] = {}
    # per cell: action -> [times rated, summed rating], times served, times ranked first
    rated: dict[str, dict[str, list[float]]] = {}
    served_n: dict[str, Counter[str]] = {}
    first_n: dict[str, Counter[str]] = {}
    explored = hits = n = 0
    explore_lost = 0.0
    for o in outcomes:
        if o.arm != "treatment" or not start <= o.index < stop or o.cold_start:
            continue
        el = truth.eligible(o.segment, slot_name)
        best_index = truth.oracle_choice(o.segment, slot_name, el, o.drifted)
        best = slot.actions[best_index].id
        served = truth.p_complete(o.segment, slot_name, o.action, o.drifted)
        lost = truth.p_complete(o.segment, slot_name, best_index, o.drifted) - served
        if o.greedy is not None:  # what serving another action than the top one cost
            explore_lost += truth.p_complete(o.segment, slot_name, o.greedy, o.drifted) - served
        c = cells.setdefault(o.segment, [0, 0.0, 0])
        c[0] += 1
        c[1] += lost
        c[2] += o.greedy == best
        served_n.setdefault(o.segment, Counter())[o.action] += 1
        if o.greedy is not None:
            first_n.setdefault(o.segment, Counter())[o.greedy] += 1
        for a, r in (o.rated or {}).items():
            acc = rated.setdefault(o.segment, {}).setdefault(a, [0, 0.0])
            acc[0] += 1
            acc[1] += r
        n += 1
        explored += o.greedy is not None and o.action != o.greedy
        hits += o.greedy == best
    worst = sorted(cells.items(), key=lambda kv: -kv[1][1])[:top]

    def rates(cell: str, action: str, drifted: bool) -> dict[str, Any]:
        got = rated.get(cell, {}).get(action)
        return {
            "true": round(truth.p_complete(cell, slot_name, action, drifted), 3),
            "rated": round(got[1] / got[0], 3) if got else None,
        }

    def pair(cell: str, users: float) -> dict[str, Any]:
        drifted = any(o.drifted for o in outcomes if o.segment == cell and start <= o.index < stop)
        el = truth.eligible(cell, slot_name)
        best = slot.actions[truth.oracle_choice(cell, slot_name, el, drifted)].id
        b = rates(cell, best, drifted)
        out = {"best": best, "best_true": b["true"], "best_rated": b["rated"],
               "best_served": round(served_n.get(cell, Counter())[best] / users, 2)}  # fmt: skip
        firsts = first_n.get(cell)
        if firsts:
            first = firsts.most_common(1)[0][0]
            t = rates(cell, first, drifted)
            out.update(top=first, top_true=t["true"], top_rated=t["rated"])
        return out

    return {
        "users": n,
        "explored": round(explored / n, 3) if n else None,
        "greedy_is_oracle": round(hits / n, 3) if n else None,
        "lost_completions": round(sum(c[1] for c in cells.values()), 1),
        "lost_to_exploration": round(explore_lost, 1),
        "worst_cells": [
            {
                "cell": k,
                "users": int(c[0]),
                "lost": round(c[1], 1),
                "greedy_is_oracle": round(c[2] / c[0], 2),
                **pair(k, c[0]),
            }
            for k, c in worst
        ],
    }


def learner_config(overrides: dict[str, Any] | None = None) -> Any:
    """The :class:`~ray_app.learn.learner.LearnerConfig` of the shipped settings, built by the
    learner service's own :func:`~ray_app.learn.service.learner_config` from
    ``load_settings(env={})``, with ``overrides`` (``None`` values ignored).

    >>> from ray_app.config import load_settings
    >>> learner_config().epsilon == load_settings(env={}).decide.epsilon
    True
    """
    from ray_app.config import load_settings
    from ray_app.learn.service import learner_config as shipped

    config = shipped(load_settings(env={}))
    return dataclasses.replace(
        config, **{k: v for k, v in (overrides or {}).items() if v is not None}
    )


def _iso(ms: int) -> str:
    from ray_app.collect.parse import iso_ms

    return iso_ms(ms)


def signup_events(user: Any, i: int, signup_ms: int) -> list[Any]:
    """User ``i``'s sign-up as the stream sees it: the wire calls of ``bench/learning.py``
    (``identify``, ``welcome`` viewed and completed) through the collector's parsing and the
    stream's decoder."""
    from ray_app.collect.parse import parse_request
    from ray_app.sim.live import identify_call
    from ray_app.state.event import decode_event

    at = _iso(signup_ms)
    session = f"s-{user.user_id}"

    def step(name: str, seq: int) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": user.user_id,
            "event": name,
            "messageId": f"m{i}-{seq + 1}",
            "timestamp": at,
            "properties": {},
            "context": {"onramp": {"sessionId": session, "seq": seq, "stepId": "welcome"}},
        }

    batch = [identify_call(user, f"m{i}-0", at), step("Step Viewed", 0), step("Step Completed", 1)]
    parsed = parse_request(
        "batch",
        json.dumps({"batch": batch}).encode(),
        content_encoding=None,
        authorization=_AUTH,
        write_keys={"twin": _WRITE_KEY},
        received_at=dt.datetime.fromtimestamp(signup_ms / 1000, dt.UTC),
    )
    if parsed.rejections:
        raise RuntimeError(f"the collector refused a sign-up: {parsed.rejections}")
    return [decode_event(record) for _, record in parsed.events]


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One run of the twin; ``args`` missing an option take the parser's default."""
    import torch

    from bench.vw_baseline import run_all
    from ray_app.config import load_settings
    from ray_app.decide import policy_for
    from ray_app.enrich import DEFAULTS
    from ray_app.features import FeatureSchema
    from ray_app.learn.drift import RewardRateDrift
    from ray_app.learn.learner import OnlineLearner
    from ray_app.learn.startup import restore_learner
    from ray_app.model import ModelBundle, Policy, cold_start_bundle, explore_scores, score_batch
    from ray_app.records import RewardRecord
    from ray_app.sim.live import Outcome
    from ray_app.state.profile import Profile, apply

    args = argparse.Namespace(**{**vars(parser().parse_args([])), **vars(args)})
    torch.set_num_threads(1)
    shipped = load_settings(env={})
    d = shipped.decide
    model_poll_s = d.model_poll_s if args.model_poll_s is None else args.model_poll_s
    catalog = twin_catalog(
        seed if args.hash_seed == "run" else args.hash_seed,
        args.threshold_weight,
        args.cross_weight,
    )
    schema = FeatureSchema.from_catalog(catalog)
    config = learner_config(_overrides(args))
    if args.start_model:
        model_file = Path(f"{args.start_model}-{seed}.onramp")
        no_state = model_file.with_suffix(".no-learner-state")
        learner = restore_learner(no_state, model_file, schema, catalog, config)
        if not model_file.exists() or learner.counters["refused_at_start"]:
            raise SystemExit(f"--start-model: {model_file} is missing or was refused (see above)")
        bundle = ModelBundle.from_bytes(model_file.read_bytes(), schema, catalog, False)
    else:
        bundle = cold_start_bundle(schema, catalog, hidden=config.hidden)
        learner = OnlineLearner(bundle, config, clock=lambda: 0.0)
    policy = Policy(
        kind=args.policy or d.policy,
        epsilon=config.epsilon,
        gamma=d.gamma,
        temperature=d.temperature,
        seed=d.seed,
    )
    if args.start_model:
        policy = policy_for(policy, bundle.metadata)  # the replicas serve the file
    served = last_published = bundle
    published: list[tuple[float, Any]] = []  # (reaches the replicas at, bundle)
    truth = make_world(args, seed)
    slot = catalog.slot("next_step")
    enrichment = {"found": False, **DEFAULTS}
    rng = random.Random(seed)
    due: list[tuple[float, int, RewardRecord]] = []
    outcomes: list[Outcome] = []
    last_learn = 0.0
    told = args.drift == "none" or args.drift_detect_s is None
    t0 = 1_800_000_000_000  # event time of user 0's sign-up (ms)
    now_s = [0.0]  # the simulated clock, which the detector reads as its wall clock
    # the learner service's own reward-rate detector, unless the drift is signalled at a delay
    detector = (
        RewardRateDrift.from_settings(shipped.learn, clock_ms=lambda: t0 + now_s[0] * 1000)
        if args.drift_detect_s is None
        else None
    )
    alerts: list[float] = []
    for i in range(args.users):
        t = now_s[0] = i / args.rate
        if not told and i >= args.drift_at and t >= args.drift_at / args.rate + args.drift_detect_s:
            learner.drift(now=t)
            told = True
        if t - last_learn >= args.learn_every:
            ready = []
            while due and due[0][0] <= t:
                ready.append(heapq.heappop(due)[2])
            if ready:
                learner.learn(ready, now=t)
                for _kind, detail in detector.update(ready) if detector else ():
                    if detector.answered(detail):  # type: ignore[union-attr]
                        continue  # as the service does
                    learner.drift(now=t, since_ms=detail.get("sinceMs"))  # as the service does
                    detector.reacted(True, learner.version + 1)  # type: ignore[union-attr]
                    alerts.append(round(t * args.rate))
            fresh = learner.maybe_publish(now=t)
            if fresh is not None and detector and fresh.metadata.get("rollback") == "below_control":
                detector.reacted(False, fresh.version)  # as the service does
            if fresh is not None:
                published.append((t + model_poll_s, fresh))
                last_published = fresh
            last_learn = t
        while published and published[0][0] <= t:
            served = published.pop(0)[1]
            policy = policy_for(policy, served.metadata)  # as the replicas take it
        user = truth.user(i)
        signup = t0 + int(t * 1000)
        profile = Profile(user.user_id)
        for event in signup_events(user, i, signup):
            apply(profile, event)
        think = rng.uniform(0.7, 1.3)  # the welcome screen's think time
        decided = signup + int(1000 * think)
        x = schema.featurize(profile.as_dict(), enrichment, None, decided)
        eligible = catalog.eligible("next_step", profile.as_dict(), enrichment)
        arm = "treatment" if rng.random() < args.treatment_share else "control"
        did = f"d{seed}-{i}"
        greedy: str | None = None
        rated: dict[str, float] | None = None
        if arm == "control":
            action, p = truth.static_choice("next_step", eligible), 1.0
        else:
            scores = explore_scores(served, x, slot.index)[0]
            choice = policy.choose(scores, eligible, did)
            action, p = choice.chosen, choice.propensity
            greedy = slot.actions[choice.ranking[0]].id
            logits = score_batch(served, x, slot.index)[0]
            rated = {
                slot.actions[a].id: 1.0 / (1.0 + math.exp(-float(logits[a]))) for a in eligible
            }
        done, seconds = truth.simulate_response(user, "next_step", action, rng)
        react = min(seconds * args.time_scale, 10.0) + (0.0 if done else args.abandon_delay)
        record = RewardRecord(
            did,
            user.user_id,
            "next_step",
            slot.actions[action].id,
            action,
            arm,
            float(p),
            x.tolist(),
            float(done),
            "completed" if done else "abandoned",
            decided,
            decided + int(1000 * react),
            served.version,
            [slot.actions[a].id for a in eligible],
        )
        heapq.heappush(due, (t + think + react + args.outcome_delay, i, record))
        outcomes.append(
            Outcome(i, user.segment, arm, slot.actions[action].id, done, False,
                    served.version, truth.drifted(user), t, greedy=greedy, rated=rated)
        )  # fmt: skip

    if args.save_model:
        Path(f"{args.save_model}-{seed}.onramp").write_bytes(last_published.to_bytes())
    vw = {} if args.no_vw else run_all(truth, args.users, seed)
    summary = learning_summary(truth, outcomes, vw, args)
    drift_at = args.users if args.drift == "none" else args.drift_at
    static = truth.expected_rate("static")
    rate = last_rate([o for o in outcomes if o.index < drift_at], "treatment", args.window) or 0.0
    captured = (rate - static) / (truth.expected_rate("oracle") - static)
    post = [o for o in outcomes if o.index >= drift_at]
    recovery = (
        None
        if not post
        else users_to_recover(
            post,
            drift_at,
            captured,
            truth.expected_rate("static", drifted=True),
            truth.expected_rate("oracle", drifted=True),
            500,
        )
    )
    return {
        "seed": seed,
        "captured_measured": round(captured, 3),
        "treatment_rate_before_drift": round(rate, 4),
        "users_to_recover_after_drift": recovery,
        "rollbacks": learner.counters["rollbacks"],
        "drift_alerts_at_users": alerts,
        "drift_settle_ms": None if detector is None else detector.settle,
        "learner_counters": dict(learner.counters),
        "cells_before_drift": cell_diagnostics(
            truth, outcomes, max(drift_at - args.window, 0), drift_at
        ),
        **summary,
    }


def _mean_of(xs: list[Any]) -> float | None:
    """The mean of ``xs`` to 3 digits; ``None`` if any is missing."""
    return None if not xs or None in xs else round(statistics.mean(xs), 3)


def _mean_curve(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seeds' curves averaged point by point (``None`` where a seed has no value), with the
    standard error of the treatment arm's mean (``treatment_se``; ``None`` for one seed): the
    runs are noisy enough that a difference of two settings smaller than about twice it says
    nothing.

    >>> _mean_curve([{"curve": [{"users": 1000, "treatment": t}]} for t in (0.5, 0.7)])
    [{'users': 1000, 'treatment': 0.6, 'treatment_se': 0.1}]
    """
    out = []
    for points in zip(*(r["curve"] for r in runs), strict=True):
        row: dict[str, Any] = {"users": points[0]["users"]}
        for key in points[0]:
            if key != "users":
                xs = [p[key] for p in points if p[key] is not None]
                row[key] = round(statistics.mean(xs), 4) if xs else None
                if key == "treatment":
                    row["treatment_se"] = _standard_error(xs)
        out.append(row)
    return out


def _standard_error(xs: list[float]) -> float | None:
    """The standard error of the mean of ``xs`` (``None`` for fewer than two)."""
    if len(xs) < 2:
        return None
    return round(statistics.stdev(xs) / len(xs) ** 0.5, 4)


def main() -> None:
    args = parser().parse_args()
    started = time.monotonic()
    runs = []
    for seed in args.seeds:
        runs.append(one_seed(args, seed))
        brief = {k: v for k, v in runs[-1].items() if k not in ("curve", "milestones")}
        print(brief, file=sys.stderr, flush=True)
    truth = make_world(args, args.seeds[0])
    static = truth.expected_rate("static")
    recoveries = [r["users_to_recover_after_drift"] for r in runs]
    # each run valued as the curve is: each user by their own cell's expected probabilities
    captured = [r["captured_expected_before_drift"] for r in runs]
    vw_captured = [r["vw_captured_expected_same_users"].get("vw_cubic") for r in runs]
    value, vw_value = _mean_of(captured), _mean_of(vw_captured)
    curve = _mean_curve(runs)
    at = {p["users"]: p for p in curve}
    emit(
        {
            "benchmark": "learning_twin",
            "world": args.world,
            "drift": args.drift,
            "figure": "mean share of the oracle's gain over the static flow captured by the "
            f"treatment arm over its last {args.window} users before the drift "
            f"({len(runs)} seeds, in-process twin, shipped settings)",
            "value": value,
            "value_se": None if value is None else _standard_error(captured),
            "baseline": "Vowpal Wabbit (--cb_explore_adf --squarecb -q UA --cubic UUA) learning "
            "online from the same users with immediate rewards: the mean of its shares on the "
            "same users (None with --no-vw)",
            "baseline_value": vw_value,
            "ratio": None if value is None or not vw_value else round(value / vw_value, 3),
            "min_captured": None if value is None else min(captured),
            "static_rate_expected": round(static, 4),
            "curve": curve,
            "milestones": {
                str(m): {k: v for k, v in at[m].items() if k != "users"}
                for m in (2_000, 6_000, 10_000, 20_000)
                if m in at
            },
            "longest_treatment_below_control_users": max(
                r["longest_treatment_below_control_users"] for r in runs
            ),
            "guardrail_ok": all(r["guardrail_ok"] for r in runs),
            "recovered_within_5000": sum(1 for u in recoveries if u is not None and u <= 5000),
            "block_users": BLOCK,
            "settings": {
                "learner": dataclasses.asdict(learner_config(_overrides(args))),
                **{
                    k: v
                    for k, v in vars(args).items()
                    if k not in ("seeds", "learner_set", *_LEARNER_FLAGS)
                },
            },
            "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
            "seconds": round(time.monotonic() - started, 1),
            "kafka_client": "none (in-process twin)",
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
