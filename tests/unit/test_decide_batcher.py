"""The decision batcher without Serve: the requests that arrive together share one profile lookup
and one decide, a slow or absent stream makes cold starts (not errors), a catalog refusal stays
with its request, a failed profile lookup fails every request of its batch, none left hanging,
and a request whose decision fails fails alone."""

import asyncio
import datetime as dt
from typing import Any

import pytest

from ray_app.catalog import UnknownAction, UnknownSlot
from ray_app.config import Settings
from ray_app.decide import Decider, DecideRequest, Decision
from ray_app.decide.batcher import DecisionBatcher
from ray_app.stream.reader import StreamUnavailable

T0 = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)


class FakeProfiles:
    """A profile source: ``profiles`` by user key; records each lookup; ``delay_s`` before it
    answers; ``fail`` raised instead of answering."""

    def __init__(
        self,
        profiles: dict[str, dict[str, Any]] | None = None,
        delay_s: float = 0.0,
        fail: Exception | None = None,
    ) -> None:
        self.profiles = profiles or {}
        self.delay_s = delay_s
        self.fail = fail
        self.lookups: list[list[str]] = []

    async def get_many(self, user_keys: list[str]) -> dict[str, dict[str, Any] | None]:
        self.lookups.append(list(user_keys))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        return {k: self.profiles.get(k) for k in user_keys}


def _batcher(profiles: FakeProfiles, deadline_s: float = 1.0) -> DecisionBatcher:
    enriched: list[dict[str, Any]] = []

    def enrich(profile: dict[str, Any]) -> dict[str, Any]:
        enriched.append(profile)
        return {"found": False}

    batcher = DecisionBatcher(
        Decider.from_settings(Settings()), profiles, enrich, deadline_s, clock_ms=lambda: T0
    )
    batcher.enriched = enriched  # type: ignore[attr-defined]
    return batcher


def _req(user: str, slot: str = "next_step") -> DecideRequest:
    return DecideRequest(user_id=user, slot=slot, decision_id=f"d-{user}")


async def _decide_all(
    batcher: DecisionBatcher, requests: list[DecideRequest], return_exceptions: bool = False
) -> list[Any]:
    return await asyncio.gather(
        *(batcher.decide(r) for r in requests), return_exceptions=return_exceptions
    )


def test_requests_that_arrive_together_share_one_lookup():
    known = {"stepsCompleted": ["welcome"], "firstSeen": T0, "lastReceived": T0, "userId": "u1"}
    profiles = FakeProfiles({"u1": known})
    batcher = _batcher(profiles)
    results = asyncio.run(_decide_all(batcher, [_req("u1"), _req("u2"), _req("u3")]))
    assert profiles.lookups == [["u1", "u2", "u3"]]
    assert all(isinstance(r, Decision) for r in results)
    assert [r.decision_id for r in results] == ["d-u1", "d-u2", "d-u3"]
    assert [r.cold_reason for r in results] == [None, "unknown_user", "unknown_user"]
    assert all(r.at_ms == T0 for r in results)
    # an unknown user is enriched from a stand-in profile
    assert batcher.enriched[1] == {"userId": "u2", "traits": {}}  # type: ignore[attr-defined]


def test_requests_during_a_batch_form_the_next_one():
    profiles = FakeProfiles(delay_s=0.05)
    batcher = _batcher(profiles)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(batcher.decide(_req("u1")))
        await asyncio.sleep(0.01)  # the first batch is waiting for its profiles
        later = [asyncio.ensure_future(batcher.decide(_req(u))) for u in ("u2", "u3")]
        return await asyncio.gather(first, *later)

    results = asyncio.run(scenario())
    assert profiles.lookups == [["u1"], ["u2", "u3"]]
    assert all(isinstance(r, Decision) for r in results)


@pytest.mark.parametrize(
    ("profiles", "reason"),
    [
        (FakeProfiles(delay_s=0.5), "deadline"),
        (FakeProfiles(fail=StreamUnavailable("no workers")), "stream_unavailable"),
    ],
)
def test_no_profiles_in_time_is_a_cold_start(profiles, reason):
    batcher = _batcher(profiles, deadline_s=0.02)
    [result] = asyncio.run(_decide_all(batcher, [_req("u1")]))
    assert isinstance(result, Decision)
    assert (result.cold_start, result.cold_reason, result.chosen) == (True, reason, "welcome")


@pytest.mark.parametrize(
    "profiles",
    [FakeProfiles(delay_s=0.5), FakeProfiles(fail=StreamUnavailable("no workers"))],
)
def test_candidates_of_a_profile_that_could_not_be_read_are_taken_as_sent(profiles):
    # a returning user's candidates were checked against no profile at all: "goals: requires
    # welcome", a 422 blaming the client for a server-side outage
    batcher = _batcher(profiles, deadline_s=0.02)
    asks = DecideRequest(user_id="u1", slot="next_step", candidates=["goals", "integrations"])
    [result] = asyncio.run(_decide_all(batcher, [asks]))
    assert isinstance(result, Decision), result
    assert result.cold_start and result.chosen in ("goals", "integrations")
    # what is not an action of the slot is still the client's error
    wrong = DecideRequest(user_id="u1", slot="next_step", candidates=["nope"])
    [refused] = asyncio.run(_decide_all(_batcher(profiles, deadline_s=0.02), [wrong]))
    assert isinstance(refused, UnknownAction)


def test_a_catalog_refusal_stays_with_its_request():
    batcher = _batcher(FakeProfiles())
    good, bad = asyncio.run(_decide_all(batcher, [_req("u1"), _req("u2", slot="nxt")]))
    assert isinstance(good, Decision)
    assert isinstance(bad, UnknownSlot) and bad.field == "slot"


def test_a_failed_batch_fails_each_request_and_the_next_batch_runs():
    profiles = FakeProfiles(fail=RuntimeError("boom"))
    batcher = _batcher(profiles)

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            *(batcher.decide(_req(u)) for u in ("u1", "u2")), return_exceptions=True
        )

    results = asyncio.run(scenario())
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    profiles.fail = None
    [again] = asyncio.run(_decide_all(batcher, [_req("u3")]))
    assert isinstance(again, Decision)


def test_a_second_batch_looks_up_while_the_first_waits_and_a_third_waits_its_turn():
    profiles = FakeProfiles(delay_s=0.05)
    batcher = DecisionBatcher(
        Decider.from_settings(Settings()),
        profiles,
        deadline_s=1.0,
        clock_ms=lambda: T0,
        max_inflight=2,
        linger_s=0.0,
    )

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(batcher.decide(_req("u1")))]
        await asyncio.sleep(0.01)  # batch 1 waits for its profiles
        tasks.append(asyncio.ensure_future(batcher.decide(_req("u2"))))
        await asyncio.sleep(0.01)  # batch 2 waits too: two in flight
        tasks += [asyncio.ensure_future(batcher.decide(_req(u))) for u in ("u3", "u4")]
        await asyncio.sleep(0.01)
        looked_up_meanwhile = list(profiles.lookups)
        return [looked_up_meanwhile, await asyncio.gather(*tasks)]

    meanwhile, results = asyncio.run(scenario())
    assert meanwhile == [["u1"], ["u2"]]  # the third waits for a free turn...
    assert profiles.lookups == [["u1"], ["u2"], ["u3", "u4"]]  # ...and takes all that queued
    assert [r.decision_id for r in results] == ["d-u1", "d-u2", "d-u3", "d-u4"]


def test_one_batch_in_flight_when_asked_and_batches_of_at_most_max_batch():
    profiles = FakeProfiles(delay_s=0.02)
    batcher = DecisionBatcher(
        Decider.from_settings(Settings()), profiles, max_batch=2, max_inflight=1
    )
    users = [f"u{i}" for i in range(5)]
    results = asyncio.run(_decide_all(batcher, [_req(u) for u in users]))
    assert profiles.lookups == [["u0", "u1"], ["u2", "u3"], ["u4"]]
    assert [r.decision_id for r in results] == [f"d-{u}" for u in users]


def test_a_batch_that_may_not_be_alone_lingers_to_fill():
    profiles = FakeProfiles(delay_s=0.05)
    batcher = DecisionBatcher(
        Decider.from_settings(Settings()), profiles, max_inflight=2, linger_s=0.02
    )

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.decide(_req("u1")))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.decide(_req("u2")))
        await asyncio.sleep(0.005)  # within the linger: u3 joins u2's batch
        third = asyncio.ensure_future(batcher.decide(_req("u3")))
        await asyncio.gather(first, second, third)

    asyncio.run(scenario())
    assert profiles.lookups == [["u1"], ["u2", "u3"]]


def test_batch_settings_are_checked():
    with pytest.raises(ValueError, match="max_inflight"):
        DecisionBatcher(Decider.from_settings(Settings()), FakeProfiles(), max_inflight=0)


def test_the_reader_remembers_partitions_as_kafka_places_keys(monkeypatch):
    from ray_app.kafka.client import partition_for
    from ray_app.stream import reader

    r = reader.ProfileReader("onramp")
    keys = [f"u{i}" for i in range(300)]
    assert [r._partition(k, 8) for k in keys] == [partition_for(k.encode(), 8) for k in keys]
    assert [r._partition(k, 8) for k in keys] == [partition_for(k.encode(), 8) for k in keys]
    # another partition count (a topic grown): forgotten and computed again
    assert [r._partition(k, 12) for k in keys] == [partition_for(k.encode(), 12) for k in keys]
    monkeypatch.setattr(reader, "_PARTITION_CACHE", 10)
    for k in keys:
        r._partition(k, 12)
    assert len(r._partitions) <= 10


def test_a_user_of_a_partition_not_being_consumed_is_unread_not_unknown():
    """A worker asked for a partition it does not hold (moved, or its checkpoint refused)
    answered as for a user never seen: a new user's arm and eligibility for a known one."""
    from ray_app.stream.reader import NOT_HELD

    profiles = FakeProfiles({"u1": {NOT_HELD: 3}})
    [result] = asyncio.run(_decide_all(_batcher(profiles), [_req("u1")]))
    assert isinstance(result, Decision)
    assert (result.cold_start, result.cold_reason) == (True, "stream_unavailable")


def test_the_reader_asks_for_the_routes_again_when_a_partition_moved(monkeypatch):
    from ray_app.stream import reader

    class Worker:
        def __init__(self, held: bool) -> None:
            self.held = held

    r = reader.ProfileReader("onramp")
    routes = [([0], [Worker(False)], [None]), ([0], [Worker(True)], [None])]
    loads: list[int] = []

    async def load():
        loads.append(1)
        r._routes = routes[min(len(loads), 2) - 1]
        return r._routes

    async def ask(worker, address, keys):
        return [{"userKey": k} if worker.held else {reader.NOT_HELD: p} for p, k in keys]

    monkeypatch.setattr(r, "_load", load)
    monkeypatch.setattr(r, "_ask", ask)
    monkeypatch.setattr(r, "_partition", lambda key, n: 0)
    assert asyncio.run(r.get("u1")) == {"userKey": "u1"} and len(loads) == 2
    routes[1] = routes[0]  # still not held after the refresh: unavailable, not unknown
    r._routes = None
    with pytest.raises(reader.StreamUnavailable, match="partition 0 of 'u1' is not being"):
        asyncio.run(r.get("u1"))
    # a partition fresh routes left without a worker (a refused checkpoint) is not a reason
    # to ask the supervisor again on every read for a while
    asked = len(loads)
    for _ in range(5):
        with pytest.raises(reader.StreamUnavailable):
            asyncio.run(r.get("u1"))
    assert len(loads) == asked
    monkeypatch.setattr(reader.time, "monotonic", lambda: 1e12)  # much later: asked again
    with pytest.raises(reader.StreamUnavailable):
        asyncio.run(r.get("u1"))
    assert len(loads) == asked + 1


def test_an_unverified_visitor_is_enriched_from_no_crm_row():
    """With identity verification on, a browser could send a track with a customer's CRM user
    id (or account) as its anonymousId, then decide unverified with that anonymousId: its
    anonymous profile's key named the customer's CRM row, whose columns (a plan) shaped the
    features and, through eligibility, showed in the answer. An unverified request's CRM
    lookup names nobody; a verified one's names its user."""
    visitor = {"userKey": "crm-user-42", "traits": {"accountId": "acct-7"}, "groupId": "acct-7"}
    batcher = _batcher(FakeProfiles({"crm-user-42": visitor}))
    unverified = DecideRequest(anonymous_id="crm-user-42", slot="next_step", decision_id="d1")
    unverified._anonymous_only = True
    asyncio.run(batcher.decide(unverified))
    assert batcher.enriched == [{"traits": {}}]  # type: ignore[attr-defined]
    verified = DecideRequest(anonymous_id="crm-user-42", slot="next_step", decision_id="d2")
    asyncio.run(batcher.decide(verified))
    assert batcher.enriched[-1]["userKey"] == "crm-user-42"  # type: ignore[attr-defined]


def test_a_request_that_fails_its_decision_fails_alone():
    """A request whose decision raises (a bug, a value the model cannot take) failed its whole
    batch: up to 256 answers of 500, control's included. The batch is now decided again one
    request at a time, and only that request fails."""
    batcher = _batcher(FakeProfiles())
    decide_many = batcher.decider.decide_many

    def fragile(items, **kw):  # type: ignore[no-untyped-def]
        if any(r.user_key == "poison" for r, _, _ in items):
            raise ValueError("cannot decide for poison")
        return decide_many(items, **kw)

    batcher.decider.decide_many = fragile  # type: ignore[method-assign]
    results = asyncio.run(
        _decide_all(batcher, [_req("u1"), _req("poison"), _req("u2")], return_exceptions=True)
    )
    assert [type(r).__name__ for r in results] == ["Decision", "ValueError", "Decision"]
    assert [r.user_key for r in results if isinstance(r, Decision)] == ["u1", "u2"]


def test_a_negative_policy_seed_is_refused_at_load():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="seed"):
        Settings.model_validate({"decide": {"seed": -1}})


def test_a_decision_id_reused_across_users_does_not_repeat_one_draw():
    """The policy's draw depended on the decision id alone: a client reusing an id
    (``"page-1"``) for every user gave all of them the same draw, and one who picked ids could
    steer any user's draw. It is now the user's, the slot's and the id's; a retry of the same
    request still draws the same."""
    from ray_app.catalog import load_catalog
    from ray_app.config import DecideSettings
    from ray_app.decide import Arms
    from ray_app.model.policy import Policy

    decider = Decider(
        load_catalog(),
        Arms(DecideSettings(arms={"control": 0.0, "treatment": 1.0})),
        Policy("epsilon_greedy", epsilon=1.0),  # uniform over the eligible steps: the draw alone
    )
    profile = {"stepsCompleted": ["welcome"], "firstSeen": T0, "lastReceived": T0}
    items = [
        (DecideRequest(user_id=f"u{i}", slot="next_step", decision_id="page-1"),
         {**profile, "userKey": f"u{i}"}, None)
        for i in range(40)
    ]  # fmt: skip
    first = decider.decide_many(items, now_ms=T0)
    assert len({d.chosen for d in first}) > 1  # one id, forty users: not one draw
    again = decider.decide_many(items, now_ms=T0)
    assert [d.chosen for d in again] == [d.chosen for d in first]
    assert len({round(d.propensity, 6) for d in first}) == 1  # uniform: one propensity
