"""The console's aggregation without Ray, Kafka or Serve: the experiment rows equal what
``onramp report`` builds from the same records (in any order, with copies), the funnel, the
timeline, the user log, the health figures, the model history, the API's keys and routes, and the
replica's feed."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from ray_app.catalog import load_catalog
from ray_app.console.api import ConsoleApi, catalog_panel
from ray_app.console.cohorts import Cohorts
from ray_app.console.feed import ConsoleFeed, ConsoleUnavailable
from ray_app.console.health import HealthWindow, figures, quantile
from ray_app.console.models import ModelHistory
from ray_app.console.state import ConsoleState
from ray_app.console.timeline import Timeline
from ray_app.console.userlog import UserLog
from ray_app.experiments.report import analyze, users_from_logs

T0 = 1_767_225_600_000
SHARES = {"control": 0.5, "treatment": 0.5}


def _logs(users: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Decision and reward records of ``users`` users, a few decisions each."""
    rng = random.Random(seed)
    decisions, rewards = [], []
    for u in range(users):
        arm = "control" if rng.random() < 0.5 else "treatment"
        for k in range(rng.randint(1, 4)):
            did = f"d{u}-{k}"
            action = rng.choice(["role", "goals", "team_size"])
            at = T0 + u * 1_000 + k * 100
            decisions.append(
                {"decisionId": did, "userKey": f"u{u}", "arm": arm, "experiment": "onboarding",
                 "slot": "next_step", "chosen": action, "propensity": 0.5, "modelVersion": 2,
                 "timestamp": pd.Timestamp(at, unit="ms", tz="UTC").isoformat()}
            )  # fmt: skip
            if rng.random() < 0.9:  # some decisions are still waiting for their outcome
                good = rng.random() < (0.4 if arm == "control" else 0.5)
                outcome = (
                    ("converted" if rng.random() < 0.2 else "completed") if good else "abandoned"
                )
                rewards.append(
                    {"decisionId": did, "userKey": f"u{u}", "arm": arm, "action": action,
                     "reward": float(good), "outcome": outcome, "decidedAtMs": at,
                     "outcomeAtMs": at + 500, "modelVersion": 2}
                )  # fmt: skip
    return decisions, rewards


def _fed(decisions: list[dict[str, Any]], rewards: list[dict[str, Any]], seed: int) -> Cohorts:
    """Cohorts fed both topics interleaved in a random order, with a copy of some records."""
    rng = random.Random(seed)
    records = [("d", d) for d in decisions] + [("r", r) for r in rewards]
    records += rng.sample(records, len(records) // 10)  # at-least-once copies
    rng.shuffle(records)  # a reward may come before its decision
    c = Cohorts()
    for kind, rec in records:
        (c.decision if kind == "d" else c.reward)(rec)
    return c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cohorts_give_the_reports_rows_and_numbers_whatever_the_order(seed: int) -> None:
    decisions, rewards = _logs(400, seed)
    want = users_from_logs(decisions, rewards)["onboarding"]
    got = _fed(decisions, rewards, seed).frame("onboarding")
    key = ["user"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True),
        want.sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    _assert_close(analyze(got, SHARES), analyze(want, SHARES))


def _signed_up(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same decisions where every other user made their first decision anonymously and
    the rest after signing up: those carry the anonymous id in ``mergedFrom``, as the stream
    writes them once it merged the two ids."""
    out, seen = [], set()
    for d in decisions:
        u = d["userKey"]
        d = dict(d)
        if int(u[1:]) % 2 == 0 and u not in seen:
            d["userKey"] = f"anon-{u}"
        elif int(u[1:]) % 2 == 0:
            d["mergedFrom"] = [f"anon-{u}"]
        seen.add(u)
        out.append(d)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_a_user_merged_after_sign_up_is_one_user_in_the_console_and_the_report(
    seed: int,
) -> None:
    decisions, rewards = _logs(300, seed)
    merged = _signed_up(decisions)
    want = users_from_logs(merged, rewards)["onboarding"]
    # one row a person: the anonymous id of a user who decided again after signing up is theirs
    assert len(want) == 300
    never_again = {d["userKey"] for d in merged} - {
        m for d in merged for m in d.get("mergedFrom", [])
    }
    assert set(want["user"]) == never_again  # anonymous only who never decided after signing up
    plain = users_from_logs(decisions, rewards)["onboarding"]
    pd.testing.assert_frame_equal(  # the same counts as had the ids never been apart
        want.drop(columns="user").sort_values(["first_ms"]).reset_index(drop=True),
        plain.drop(columns="user").sort_values(["first_ms"]).reset_index(drop=True),
    )
    got = _fed(merged, rewards, seed).frame("onboarding")
    pd.testing.assert_frame_equal(
        got.sort_values("first_ms").reset_index(drop=True),
        want.sort_values("first_ms").reset_index(drop=True),
        check_dtype=False,
    )
    _assert_close(analyze(got, SHARES), analyze(want, SHARES))
    assert _fed(merged, rewards, seed).stats()["users"] == 300


def test_cohorts_put_a_user_in_the_arm_of_their_earliest_decision_whatever_the_order() -> None:
    decisions = [
        {"decisionId": "d2", "userKey": "u", "arm": "treatment", "chosen": "a", "timestamp": 5000},
        {"decisionId": "d1", "userKey": "u", "arm": "control", "chosen": "a", "timestamp": 1000},
    ]
    c = Cohorts()
    for d in decisions:
        c.decision(d)
    [want] = users_from_logs(decisions, []).values()
    got = c.frame("default")
    assert got.iloc[0]["arm"] == want.iloc[0]["arm"] == "control"


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 0, 2), (2, 1, 0), (2, 0, 1)])
def test_a_merged_persons_decisions_of_one_time_give_one_arm_whatever_the_order(
    order: tuple[int, ...],
) -> None:
    """Two ids of one person decided in the same millisecond, in different arms, and were
    merged: both the console and the report put the person in the arm of the decision with the
    smaller id. Before, each took the one it read first, and the report reads decisions in
    file order, the console in the order its feed reads the partitions: on the console's
    integration test they disagreed by one user in about one run in four."""
    decisions = [
        {"decisionId": "d2", "userKey": "A", "arm": "treatment", "experiment": "e",
         "chosen": "a", "timestamp": 1_000},
        {"decisionId": "d1", "userKey": "B", "arm": "control", "experiment": "e",
         "chosen": "a", "timestamp": 1_000},
        {"decisionId": "d3", "userKey": "B", "arm": "control", "experiment": "e",
         "chosen": "a", "timestamp": 2_000, "mergedFrom": ["A"]},
    ]  # fmt: skip
    read = [decisions[i] for i in order]
    c = Cohorts(["a"])
    for d in read:
        c.decision(d)
    [want] = users_from_logs(read, []).values()
    got = c.frame("e")
    assert list(want["arm"]) == list(got["arm"]) == ["control"]
    assert c.funnel()["control"]["users"] == 1


def _tangled_logs(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A few ids deciding at a few times (many in one millisecond), in either arm, merged into
    each other by ``mergedFrom`` and forwarded copies, with copies of decisions, and rewards
    for some of them."""
    keys = [f"k{i}" for i in range(rng.randint(2, 8))]
    decisions, rewards = [], []
    for n in range(rng.randint(1, 15)):
        user = rng.choice(keys)
        d: dict[str, Any] = {
            "decisionId": f"d{n}", "userKey": user, "arm": rng.choice(["control", "treatment"]),
            "experiment": "e", "chosen": "a", "timestamp": rng.randint(0, 5),
        }  # fmt: skip
        if rng.random() < 0.3:
            others = [k for k in keys if k != user]
            d["mergedFrom"] = rng.sample(others, k=min(rng.randint(1, 2), len(others)))
        decisions.append(d)
        if rng.random() < 0.2:
            decisions.append({**d, "mergedFrom": [], "hops": 1, "forwardedFrom": rng.choice(keys)})
        if rng.random() < 0.2:
            decisions.append(dict(d))
        if rng.random() < 0.7:
            rewards.append({"decisionId": f"d{n}", "reward": float(rng.random() < 0.5),
                            "outcome": "completed", "action": rng.choice("xyz")})  # fmt: skip
    return decisions, rewards


def test_cohorts_and_the_report_count_the_same_on_tangled_logs_read_in_any_order() -> None:
    """The console's counts per person equal the report's on logs of chained merges, forwarded
    copies, copies and ties, read in a random order (the person's name may differ on merges
    that go round in circles; the counts may not)."""
    for seed in range(300):
        rng = random.Random(seed)
        decisions, rewards = _tangled_logs(rng)
        want = users_from_logs(decisions, rewards)["e"]
        records = [("d", d) for d in decisions] + [("r", r) for r in rewards]
        rng.shuffle(records)
        c = Cohorts()
        for kind, rec in records:
            (c.decision if kind == "d" else c.reward)(rec)
        got = c.frame("e")
        rows = [sorted(map(tuple, f.drop(columns="user").to_numpy().tolist())) for f in (got, want)]
        assert rows[0] == rows[1], f"seed {seed}"


def _assert_close(a: Any, b: Any, where: str = "") -> None:
    """Equal, floats to 1e-12 (sums over rows in another order round differently)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), where
    else:
        assert a == b, where


def test_cohorts_frame_keeps_the_users_first_seen_since() -> None:
    decisions, rewards = _logs(100)
    c = _fed(decisions, rewards, 0)
    since = T0 + 50_000
    assert set(c.frame("onboarding", since)["user"]) == {f"u{u}" for u in range(50, 100)}


def test_funnel_counts_steps_done_before_the_first_decision_and_ignores_copies() -> None:
    c = Cohorts(["welcome", "role"])
    c.step_completed("u1", "welcome")  # before any decision: no arm yet
    c.step_completed("u1", "welcome")
    assert c.funnel() == {}
    c.decision({"decisionId": "d1", "userKey": "u1", "arm": "treatment", "chosen": "role",
                "timestamp": T0})  # fmt: skip
    c.step_completed("u1", "role")
    c.onboarding_completed("u1")
    c.onboarding_completed("u1")
    c.decision({"decisionId": "d2", "userKey": "u2", "arm": "treatment", "chosen": "role",
                "timestamp": T0})  # fmt: skip
    assert c.funnel() == {
        "treatment": {
            "users": 2,
            "steps": {"welcome": 1, "role": 1},
            "after": {"role": 1},
            "completed": 1,
        }
    }


def test_state_funnel_panel_in_catalog_order_with_drop_off() -> None:
    s = ConsoleState(SHARES, steps=["welcome", "role", "goals"], clock=lambda: T0 / 1000)
    for u in range(4):
        s.feed("decisions", orjson.dumps({"decisionId": f"d{u}", "userKey": f"u{u}",
               "arm": "control", "chosen": "role", "timestamp": T0}))  # fmt: skip
        s.feed("events", orjson.dumps({"type": "track", "event": "Step Completed",
               "userKey": f"u{u}", "stepId": "welcome"}))  # fmt: skip
    s.feed("events", orjson.dumps({"type": "track", "event": "Step Completed",
           "userKey": "u0", "stepId": "role"}))  # fmt: skip
    s.feed("events", b'{"type":"track","event":"Step Viewed","userKey":"u1","stepId":"goals"}')
    s.feed("decisions", orjson.dumps({"decisionId": "d9", "userKey": "u9", "arm": "control",
           "chosen": "goals", "timestamp": T0}))  # fmt: skip
    s.feed(
        "events",
        orjson.dumps(
            {"type": "track", "event": "Step Completed", "userKey": "u9", "stepId": "goals"}
        ),
    )  # fmt: skip (goals without role: personalized)
    rows = s.funnel(0)["arms"]["control"]["steps"]
    assert [(r["step"], r["users"], r["rate"], round(r["dropOff"], 9)) for r in rows] == [
        ("welcome", 4, 0.8, 0.2),  # u9 has a decision but no welcome
        ("role", 1, 0.2, 0.75),
        ("goals", 1, 0.2, 1.0),  # u0 did role, not goals: u9's goals does not hide that
    ]
    assert s.counts["events"] == 6  # the Step Viewed was skipped without decoding


def test_state_experiment_panels_per_range_and_cached() -> None:
    decisions, rewards = _logs(300)
    now = [(T0 + 300_000) / 1000]
    s = ConsoleState(SHARES, clock=lambda: now[0])
    for d in decisions:
        s.feed("decisions", orjson.dumps(d))
    for r in rewards:
        s.feed("rewards", orjson.dumps(r))
    panels = s.panels()
    assert {k for k in panels if k.startswith("experiments/")} == {
        "experiments/15m", "experiments/1h", "experiments/24h", "experiments/all"
    }  # fmt: skip
    everything = orjson.loads(panels["experiments/all"])["experiments"]["onboarding"]
    want = analyze(users_from_logs(decisions, rewards)["onboarding"], SHARES)
    _assert_close(everything, orjson.loads(orjson.dumps(want)))
    now[0] += 3600  # an hour on: nobody was first seen in the last 15 minutes
    s.feed("decisions", orjson.dumps({**decisions[0], "decisionId": "new"}))
    late = orjson.loads(s.panels(experiments_every_s=0)["experiments/15m"])
    assert late["experiments"]["onboarding"]["users"] == 0
    assert "error" in late["experiments"]["onboarding"]


def test_state_learning_and_user_log_count_rewards_read_before_their_decisions() -> None:
    """An aggregator reading the topics from the start meets a reward before its decision when
    the decision topic has a longer backlog: the reward counts once the decision arrives, in the
    learning panel's completion and the user's log as in the experiments (it was only there)."""
    decisions, rewards = _logs(200, seed=4)
    s = ConsoleState(SHARES, clock=lambda: (T0 + 300_000) / 1000)
    for r in rewards:
        s.feed("rewards", orjson.dumps(r))
    for d in decisions:
        s.feed("decisions", orjson.dumps(d))
    for r in rewards[:20]:
        s.feed("rewards", orjson.dumps(r))  # copies: counted once
    arms = orjson.loads(s.panels()["learning"])["completion"]["arms"]
    for arm in ("control", "treatment"):
        mine = [r for r in rewards if r["arm"] == arm]
        assert sum(n for _, n, _ in arms[arm]) == len(mine)
        assert sum(k for _, _, k in arms[arm]) == sum(r["reward"] > 0 for r in mine)
    log = s.user("u0")
    assert log is not None
    assert sum(e.get("kind") == "reward" for e in log) == sum(r["userKey"] == "u0" for r in rewards)


def test_the_user_log_shows_a_merged_persons_decisions_and_rewards_under_either_id() -> None:
    """A decision logged for the anonymous id is rewarded under the id it was merged into (the
    stream re-keys its pending decisions): the log filed the decision under one id and its
    reward under the other. Each ranked action keeps its probability, as the decision logs it."""
    t = pd.Timestamp(T0, unit="ms", tz="UTC").isoformat()
    s = ConsoleState(SHARES, clock=lambda: (T0 + 300_000) / 1000)
    first = {"decisionId": "d1", "userKey": "anon", "arm": "treatment", "experiment": "e",
             "slot": "next_step", "chosen": "role", "propensity": 0.9, "timestamp": t,
             "ranked": [{"action": "role", "score": 0.7, "probability": 0.9},
                        {"action": "goals", "score": 0.3, "probability": 0.1}]}  # fmt: skip
    later = {**first, "decisionId": "d2", "userKey": "user", "mergedFrom": ["anon"]}
    reward = {"decisionId": "d1", "userKey": "user", "arm": "treatment", "action": "role",
              "reward": 1.0, "outcome": "completed", "decidedAtMs": T0, "outcomeAtMs": T0 + 1}  # fmt: skip
    for kind, record in (("decisions", first), ("decisions", later), ("rewards", reward)):
        s.feed(kind, orjson.dumps(record))
    for asked in ("anon", "user"):
        log = s.user(asked)
        assert log is not None
        assert sorted((e["kind"], e["decisionId"]) for e in log) == [
            ("decision", "d1"), ("decision", "d2"), ("reward", "d1")
        ], asked  # fmt: skip
    [shown] = [e for e in log if e["decisionId"] == "d1" and e["kind"] == "decision"]
    assert [r["probability"] for r in shown["ranked"]] == [0.9, 0.1]


def test_state_counts_unreadable_records_and_keeps_going() -> None:
    s = ConsoleState(SHARES)
    s.feed("decisions", b"not json")
    s.feed("rewards", b"[1, 2]")
    s.feed("decisions", orjson.dumps({"decisionId": "d", "userKey": "u", "chosen": "a"}))
    s.feed("dlq", b"garbage")
    assert s.counts["unreadable"] == 2 and s.cohorts.ignored == 1
    assert s.dlq.as_dict()["unreadable"][0]["raw"] == "garbage"
    assert set(s.panels()) >= {"learning", "funnel", "health"}
    for ts in (float("inf"), float("nan"), True, "2026-13-01"):  # one time parser: the report's
        d = {"decisionId": f"d{ts}", "userKey": "u", "arm": "control", "chosen": "a"}
        assert s.cohorts.decision({**d, "timestamp": ts}) is False
    assert s.cohorts.ignored == 5


def test_timeline_stays_bounded_and_merges_to_the_points_asked() -> None:
    t = Timeline(bucket_ms=1_000, keep=100)
    for i in range(1_000):
        t.add("control", i * 1_000, float(i % 2))
    series = t.series(points=10)
    rows = series["arms"]["control"]
    assert len(rows) == 10 and series["bucketMs"] == 10_000
    assert sum(n for _, n, _ in rows) == 100 and rows[0][0] == 900_000


def test_user_log_forgets_the_least_recent_user_and_answers_in_time_order() -> None:
    log = UserLog(users=2, per_user=2)
    for user, ms in (("a", 3), ("a", 1), ("b", 1), ("a", 2), ("c", 1)):
        log.decision({"decisionId": f"{user}{ms}", "userKey": user}, ms)
    assert log.entries("b") is None  # b was seen least recently when c came
    assert [e["at"] for e in log.entries("a") or []] == [1, 2]  # at most 2, oldest first


def test_health_rates_quantiles_and_restarts() -> None:
    def text(accepted: float, le_01: float, total: float) -> str:
        return (
            "# TYPE onramp_events_accepted_total counter\n"
            f'onramp_events_accepted_total{{replica="r",source="w"}} {accepted}\n'
            "# TYPE onramp_stream_freshness_seconds histogram\n"
            f'onramp_stream_freshness_seconds_bucket{{le="0.1"}} {le_01}\n'
            f'onramp_stream_freshness_seconds_bucket{{le="+Inf"}} {total}\n'
            f"onramp_stream_freshness_seconds_count {total}\n"
        )

    w = HealthWindow(window_s=60)
    w.add(figures(text(100, 10, 10)), now=0.0)
    w.add(figures(text(300, 10, 20)), now=10.0)
    p = w.panel()
    assert p["acceptedPerS"] == 20.0 and p["acceptedTotal"] == 300
    assert p["freshnessMs"]["p50"] == 100.0  # half of all within 0.1 s
    assert p["freshnessRecentMs"]["p50"] == 100.0  # the last 10 s: all above 0.1 s
    w.add(figures(text(5, 10, 20)), now=20.0)  # a replica restarted: its counter began again
    assert w.panel()["acceptedPerS"] is None
    assert quantile([], 0.5) is None


def _bundle_bytes(version: int, metadata: dict[str, Any], at: float) -> bytes:
    from ray_app.features import FeatureSchema
    from ray_app.model import cold_start_bundle

    catalog = load_catalog()
    bundle = cold_start_bundle(FeatureSchema.from_catalog(catalog), catalog)
    bundle.version = version
    bundle.metadata = metadata
    bundle.created_at = at
    return bundle.to_bytes()


def test_model_history_tells_publishes_rollbacks_and_promotions(tmp_path: Path) -> None:
    path = tmp_path / "treatment.onramp"
    history = ModelHistory({"treatment": path, "treatment_b": None}, registry=None)
    assert not history.poll()  # no file yet
    path.write_bytes(_bundle_bytes(1, {"kind": "online", "new_rewards": 10, "new_updates": 1}, 1.0))
    assert history.poll() and not history.poll()
    path.write_bytes(_bundle_bytes(2, {"kind": "online", "rollback": "loss"}, 2.0))
    history.poll()
    path.write_bytes(_bundle_bytes(2, {"kind": "online", "promotion": 1}, 3.0))
    history.poll()
    assert [(e["version"], e["action"]) for e in history.as_list()] == [
        (2, "promoted"),
        (2, "rolled back"),
        (1, "published"),
    ]


class _Actor:
    """An aggregator stand-in: ``panels.remote()`` and ``user.remote()`` awaitables."""

    def __init__(self, panels: dict[str, bytes], delay_s: float = 0.0) -> None:
        self.calls = 0
        outer = self

        class _Method:
            def __init__(self, fn: Any) -> None:
                self.fn = fn

            def remote(self, *args: Any) -> Any:
                outer.calls += 1
                return self.fn(*args)

        async def panels_() -> dict[str, bytes]:
            await asyncio.sleep(delay_s)
            return dict(panels)

        async def user_(key: str) -> Any:
            return [{"kind": "decision", "at": 1}] if key == "u1" else None

        self.panels = _Method(panels_)
        self.user = _Method(user_)


def test_feed_answers_from_memory_and_refreshes_in_the_background() -> None:
    now = [0.0]
    actor = _Actor({"health": b"{}"}, delay_s=0.05)
    feed = ConsoleFeed(lambda: actor, refresh_s=2.0, clock=lambda: now[0])

    async def scenario() -> None:
        assert await feed.panel("health") == b"{}"  # the first poll waits for the panels
        assert actor.calls == 1
        now[0] = 5.0  # stale: answered at once, one fetch started
        started = time.perf_counter()
        assert await feed.panel("health") == b"{}"
        assert await feed.panel("health") == b"{}"
        assert time.perf_counter() - started < 0.04
        await asyncio.sleep(0.1)
        assert actor.calls == 2

    asyncio.run(scenario())


def test_feed_unavailable_until_the_aggregator_answers() -> None:
    def broken() -> Any:
        raise RuntimeError("no Ray here")

    with pytest.raises(ConsoleUnavailable):
        asyncio.run(ConsoleFeed(broken).panel("health"))


def _api(feed: ConsoleFeed | None, profile: dict[str, Any] | None = None) -> ConsoleApi:
    async def profiles(key: str) -> dict[str, Any] | None:
        return profile if key == "u1" else None

    return ConsoleApi(
        feed, {"ops": "k1"}, load_catalog(), profiles, lambda p: {"found": False, "by": None}
    )


def test_api_needs_a_read_key_on_every_route() -> None:
    api = _api(ConsoleFeed(lambda: _Actor({"health": b'{"x":1}'})))
    import base64

    basic = "Basic " + base64.b64encode(b"k1:").decode()
    for path in ("health", "catalog", "experiments", "panels", "users/u1", "nope"):
        for header in (None, "Bearer wrong", "Bearer ", "k1"):
            status, body = asyncio.run(api.answer(path, {}, header))
            assert status == 401 and b"x" not in body.replace(b"unauthorized", b"")
    assert asyncio.run(api.answer("health", {}, basic)) == (200, b'{"x":1}')


def test_api_routes() -> None:
    panels = {"experiments/1h": b'{"range":"1h"}', "learning": b"{}"}
    api = _api(ConsoleFeed(lambda: _Actor(panels)), profile={"userKey": "u1", "lastReceived": 5})
    key = "Bearer k1"
    assert asyncio.run(api.answer("experiments", {"range": "1h"}, key)) == (
        200,
        panels["experiments/1h"],
    )
    assert asyncio.run(api.answer("experiments", {"range": "2d"}, key))[0] == 400
    assert asyncio.run(api.answer("nope", {}, key))[0] == 404
    assert asyncio.run(api.answer("funnel", {}, key))[0] == 503  # not rendered yet
    status, body = asyncio.run(api.answer("users/u1", {}, key))
    user = orjson.loads(body)
    assert status == 200 and user["profile"]["userKey"] == "u1" and user["historyKept"]
    assert user["enrichment"] == {"found": False, "by": None}
    assert asyncio.run(api.answer("users/u2", {}, key))[0] == 404
    assert asyncio.run(_api(None).answer("health", {}, key))[0] == 503
    catalog = orjson.loads(asyncio.run(api.answer("catalog", {}, key))[1])
    assert catalog == orjson.loads(orjson.dumps(catalog_panel(load_catalog())))
    assert catalog["slots"][0]["staticFlow"][0] == "welcome"


def test_api_panels_route_answers_every_polled_panel_as_its_own_route_does() -> None:
    panels = {"experiments/1h": b'{"range":"1h"}', "learning": b'{"l":1}', "health": b"{}"}
    api = _api(ConsoleFeed(lambda: _Actor(panels)))
    key = "Bearer k1"

    def answer(query: dict[str, str], a: ConsoleApi = api) -> tuple[int, Any]:
        status, body = asyncio.run(a.answer("panels", query, key))
        return status, orjson.loads(body)

    status, body = answer({"range": "1h", "catalog": "1"})
    assert status == 200
    for name in ("experiments", "learning", "health", "catalog"):
        route = asyncio.run(api.answer(name, {"range": "1h"}, key))
        assert route[0] == 200 and body[name] == orjson.loads(route[1]), name
    assert "funnel" not in body and body["errors"] == {
        "funnel": "funnel: not rendered yet; retry shortly"
    }
    status, body = answer({})  # range all, not rendered; no catalog unless asked
    assert "catalog" not in body and set(body["errors"]) == {"experiments", "funnel"}
    assert answer({"range": "2d"})[0] == 400

    def broken() -> Any:
        raise RuntimeError("no Ray here")

    for feed in (None, ConsoleFeed(broken)):  # the catalog still, every panel's reason
        status, body = answer({"catalog": "1"}, _api(feed))
        assert status == 200 and body["catalog"]["slots"]
        assert set(body) == {"catalog", "errors"} and len(body["errors"]) == 4


def test_a_poll_costs_the_api_well_under_a_millisecond() -> None:
    panels = {n: b"{}" * 5_000 for n in ("experiments/all", "learning", "funnel", "health")}
    api = _api(ConsoleFeed(lambda: _Actor(panels)))
    key = "Bearer k1"

    async def polls(path: str) -> float:
        await api.answer(path, {}, key)
        started = time.perf_counter()
        for _ in range(1_000):
            await api.answer(path, {}, key)
        return (time.perf_counter() - started) / 1_000

    assert asyncio.run(polls("health")) < 0.001
    assert asyncio.run(polls("panels")) < 0.001  # all four in one answer


def test_the_funnel_stays_bounded_whatever_step_ids_and_users_clients_send(monkeypatch):
    """A stepId and a user id are whatever a client sends with the public write key: steps the
    catalog does not list are counted up to EXTRA_STEPS (each became a funnel row, without
    bound), users up to FUNNEL_USERS; past them a completion is ignored and counted."""
    from ray_app.console import cohorts as module

    c = Cohorts(steps=("welcome", "role"))
    c.step_completed("u1", "welcome")
    for i in range(module.EXTRA_STEPS + 50):
        c.step_completed("u1", f"junk-{i}")
    c.step_completed("u1", "role")  # a catalog step is always counted
    stats = c.stats()
    assert stats["funnelSteps"] == 2 + module.EXTRA_STEPS
    assert stats["funnelIgnored"] == 50
    monkeypatch.setattr(module, "FUNNEL_USERS", 3)
    for u in ("u2", "u3", "u4"):
        c.step_completed(u, "welcome")
    assert c.stats()["funnelUsers"] == 3 and c.stats()["funnelIgnored"] == 51
    for u in ("u2", "u3", "u4", "spam-1", "spam-2"):
        c.onboarding_completed(u)
    assert len(c._user_done) == 3  # completions of users past the bound are not kept either


def test_the_funnel_counts_a_merged_person_once_with_every_step_they_took() -> None:
    """A visitor who completed welcome anonymously and role after signing up is one user of
    the funnel who did both (they were two: one stuck at welcome, one who skipped it)."""
    c = Cohorts(["welcome", "role"])
    c.decision({"decisionId": "d1", "userKey": "anon", "arm": "treatment", "experiment": "e",
                "chosen": "welcome", "timestamp": 1000})  # fmt: skip
    c.step_completed("anon", "welcome")
    c.decision({"decisionId": "d2", "userKey": "u1", "arm": "treatment", "experiment": "e",
                "chosen": "role", "timestamp": 2000, "mergedFrom": ["anon"]})  # fmt: skip
    c.step_completed("u1", "role")
    c.onboarding_completed("anon")  # a late event under the old id is the same person's
    assert c.funnel()["treatment"] == {
        "users": 1,
        "steps": {"welcome": 1, "role": 1},
        "after": {"role": 1},
        "completed": 1,
    }
    # the same person seen the other way round: signed up first, merged before any step
    d = Cohorts(["welcome", "role"])
    d.step_completed("u2", "welcome")
    d.decision({"decisionId": "d3", "userKey": "anon2", "arm": "control", "experiment": "e",
                "chosen": "role", "timestamp": 1000})  # fmt: skip
    d.step_completed("anon2", "role")
    d.decision({"decisionId": "d4", "userKey": "u2", "arm": "control", "experiment": "e",
                "chosen": "role", "timestamp": 2000, "mergedFrom": ["anon2"]})  # fmt: skip
    assert d.funnel()["control"]["users"] == 1
    assert d.funnel()["control"]["after"] == {"role": 1}


@pytest.mark.parametrize("copy_first", [False, True])
def test_a_decision_forwarded_to_a_merged_ids_survivor_is_one_decision_and_a_merge(
    copy_first: bool,
) -> None:
    """The stream writes a decision again for the surviving id when it reached its partition
    after the merge (``hops``, ``forwardedFrom``): counted once, it was two decisions of two
    users, or with the copy read first, one user's decision and another user."""
    t = pd.Timestamp(T0, unit="ms", tz="UTC").isoformat()
    original = {"decisionId": "d1", "userKey": "anon", "arm": "treatment", "experiment": "e",
                "slot": "next_step", "chosen": "role", "timestamp": t}  # fmt: skip
    copy = {**original, "userKey": "user", "hops": 1, "forwardedFrom": "anon"}
    later = {**original, "decisionId": "d2", "userKey": "user"}
    rewards = [{"decisionId": "d1", "reward": 1.0, "outcome": "completed", "action": "role"},
               {"decisionId": "d2", "reward": 0.0, "outcome": "abandoned", "action": "role"}]  # fmt: skip
    decisions = [copy, original, later] if copy_first else [original, copy, later]
    [want] = users_from_logs(decisions, rewards).values()
    assert want[["user", "decisions", "positives"]].to_dict("records") == [
        {"user": "user", "decisions": 2, "positives": 1}
    ]
    c = Cohorts()
    for d in decisions:
        c.decision(d)
    for r in rewards:
        c.reward(r)
    got = c.frame("e")
    assert got[["user", "decisions", "positives"]].to_dict("records") == [
        {"user": "user", "decisions": 2, "positives": 1}
    ]


def test_the_funnel_and_the_experiments_put_a_merged_person_in_the_same_arm() -> None:
    """A known user decided first on one device (control), then anonymously on another
    (treatment), and the two were merged into the known id: the funnel took the anonymous id's
    arm, the experiments panel the earliest decision's."""
    c = Cohorts(["welcome", "role"])
    known = {"decisionId": "d1", "userKey": "B", "arm": "control", "experiment": "e",
             "chosen": "welcome", "timestamp": 1_000}  # fmt: skip
    anonymous = {
        **known,
        "decisionId": "d2",
        "userKey": "A",
        "arm": "treatment",
        "timestamp": 2_000,
    }
    merged = {**known, "decisionId": "d3", "timestamp": 3_000, "mergedFrom": ["A"]}
    for d in (anonymous, known, merged):  # read out of order across partitions
        c.decision(d)
    [row] = c.frame("e").to_dict("records")
    funnel = c.funnel()
    assert row["arm"] == "control"
    assert funnel["control"]["users"] == 1 and funnel.get("treatment", {}).get("users", 0) == 0


def test_the_last_15_minutes_move_with_the_clock_when_no_record_comes() -> None:
    """The experiment panels were reused while no new record came, however long: two hours
    after the last decision, "the last 15 minutes" still showed its users and its asOf."""
    clock = [T0 / 1000]
    state = ConsoleState(SHARES, clock=lambda: clock[0])
    decisions, rewards = _logs(40)
    for d in decisions:
        state.feed("decisions", orjson.dumps(d))
    for r in rewards:
        state.feed("rewards", orjson.dumps(r))
    clock[0] = T0 / 1000 + 41 * 1_000  # right after the last user
    before = orjson.loads(state.panels()["experiments/15m"])
    clock[0] += 2 * 3600
    after = orjson.loads(state.panels()["experiments/15m"])
    assert before != after


def test_a_step_the_catalog_does_not_list_has_no_drop_off() -> None:
    """It read 100% drop-off whoever completed it: it has no step before it."""
    state = ConsoleState(SHARES, steps=["welcome", "role"])
    for u in range(10):
        d = {"decisionId": f"d{u}", "userKey": f"u{u}", "arm": "control", "chosen": "welcome",
             "experiment": "onboarding", "timestamp": T0 + u}  # fmt: skip
        state.feed("decisions", orjson.dumps(d))
        for step in ("welcome", "role", "checklist_done"):
            event = {"type": "track", "event": "Step Completed", "userKey": f"u{u}",
                     "stepId": step}  # fmt: skip
            state.feed("events", orjson.dumps(event))
    rows = {r["step"]: r for r in state.funnel(time.time())["arms"]["control"]["steps"]}
    assert rows["checklist_done"]["users"] == 10 and rows["checklist_done"]["dropOff"] is None
    assert rows["role"]["dropOff"] == 0.0


def test_the_aggregator_goes_on_after_a_failure_from_the_next_offsets(monkeypatch) -> None:
    """One error from Kafka (or a refresh that raised) ended the aggregator's loop for good: the
    console showed its last figures for ever, and nothing restarted it."""
    import types

    import ray_app.console.service as service
    import ray_app.kafka.client as client
    from tests.conftest import make_settings

    agg = service.ConsoleAggregator(make_settings(None), "stand-in")
    topic = agg.settings.topics.decisions
    decisions, _ = _logs(30)
    records = [
        types.SimpleNamespace(topic=topic, partition=0, offset=i, value=orjson.dumps(d),
                              timestamp_ms=None)
        for i, d in enumerate(decisions)
    ]  # fmt: skip
    made: list[dict] = []

    class Flaky:
        def __init__(self, *_: Any, **__: Any) -> None:
            self.at: dict = {}
            made.append(self.at)

        def assign_at(self, offsets: dict) -> None:
            self.at.update(offsets)

        def poll(self, timeout_s: float = 0.2, max_records: int = 5_000) -> list:
            start = self.at[(topic, 0)]
            if len(made) == 1 and start >= 10:
                raise RuntimeError("consume failed once")
            batch = records[start : start + 10]
            self.at[(topic, 0)] = start + len(batch)
            return batch

        def close(self) -> None:
            pass

    monkeypatch.setattr(client, "make_consumer", Flaky)
    monkeypatch.setattr(service, "_MAX_PAUSE_S", 0.01)
    monkeypatch.setattr(service.ConsoleAggregator, "refresh", lambda self: None)
    agg._stop.wait = lambda timeout=None: agg._stop.is_set()  # type: ignore[method-assign]
    agg.start()
    deadline = time.monotonic() + 10
    while agg.state.counts.get("decisions", 0) < len(records) and time.monotonic() < deadline:
        time.sleep(0.01)
    agg.stop()
    assert agg.failures == 1 and "consume failed once" in (agg.error or "")
    assert agg.state.counts["decisions"] == len(records)  # each once: from the next offset
    assert len(made) == 2 and made[1][(topic, 0)] == len(records)


def test_a_user_lookup_does_not_wait_on_a_worker_that_does_not_answer(monkeypatch) -> None:
    """The console's lookup awaited the profile read without a bound (/v1/profiles bounds it
    at 10 s): a stuck stream worker held the request until Ray failed the call."""
    import ray_app.console.api as console_api

    monkeypatch.setattr(console_api, "_PROFILE_READ_S", 0.05)
    api = _api(ConsoleFeed(lambda: _Actor({})))

    async def stuck(key: str) -> dict[str, Any] | None:
        await asyncio.sleep(60)
        return None

    api.profiles = stuck
    started = time.monotonic()
    status, body = asyncio.run(api.answer("users/u1", {}, "Bearer k1"))
    assert time.monotonic() - started < 5
    assert status in (200, 404) and b"the profile read took over" in body


def test_experiment_rows_and_merges_stay_bounded_whatever_ids_clients_mint(monkeypatch):
    """A decide key is public and an anonymousId is whatever a browser sends: every distinct id
    with a decision got a row for ever, and every merge an alias (158 MB at 200,000 ids)."""
    from ray_app.console import cohorts as module

    monkeypatch.setattr(module, "EXPERIMENT_USERS", 3)
    monkeypatch.setattr(module, "MERGES", 1)
    c = Cohorts()
    for i in range(5):
        c.decision({"decisionId": f"d{i}", "userKey": f"u{i}", "arm": "control",
                    "chosen": "a", "experiment": "e", "timestamp": T0 + i})  # fmt: skip
    c.decision({"decisionId": "d9", "userKey": "u0", "arm": "control", "chosen": "a",
                "experiment": "e", "timestamp": T0 + 9})  # a known user still counts  # fmt: skip
    assert len(c.frame("e")) == 3 and c.stats()["usersIgnored"] == 2
    c._merge("u1", "u0")
    c._merge("u2", "u0")
    assert c.stats()["mergesIgnored"] == 1 and len(c._alias) == 1
