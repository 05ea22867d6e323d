"""The decision service without HTTP: arms stay sticky when the split changes, a batch decides
each request on its own, the decision log never takes more than its bound, and an answer is a
logged decision, a refusal that names the field, or a 503 while the log is behind."""

import asyncio
import datetime as dt
import threading
import time
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from ray_app.catalog import IneligibleCandidates, UnknownSlot
from ray_app.config import DecideSettings, Settings
from ray_app.decide import Arms, Decider, DecideRequest, parse_decide
from ray_app.decide.batcher import DecisionBatcher
from ray_app.decide.log import DecisionLog
from ray_app.decide.request import user_hash, verify_identity
from ray_app.decide.service import DecisionService
from ray_app.kafka.memory import InMemoryBroker, InMemoryProducer
from ray_app.telemetry.tracing import NoopTracing

T0 = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)


def test_changing_the_split_keeps_users_already_assigned():
    before = DecideSettings(arms={"control": 0.5, "treatment": 0.5})
    after = DecideSettings(
        arms={"control": 0.9, "treatment": 0.1},
        earlier_splits=[{"since": "2026-01-01T00:00:00Z", "arms": before.arms}],
        arms_since="2026-04-01T00:00:00Z",
    )
    users = [f"u{i}" for i in range(4000)]
    old = {u: Arms(before).assign(u, {"firstSeen": T0}) for u in users}
    # users first seen before the change keep their arm
    assert {u: Arms(after).assign(u, {"firstSeen": T0}) for u in users} == old
    # new users follow the new split (about 10% treatment)
    new = [Arms(after).assign(u, None) for u in users]
    assert 0.07 < new.count("treatment") / len(new) < 0.13
    # ...and so do users first seen since the change, once the stream has their profile (the
    # last earlier split used to stay in force for ever: their arm flipped with the profile)
    since = int(dt.datetime(2026, 4, 2, tzinfo=dt.UTC).timestamp() * 1000)
    assert [Arms(after).assign(u, {"firstSeen": since}) for u in users] == new
    # ...and with reassign, everyone does
    again = Arms(after.model_copy(update={"reassign": True}))
    assert [again.assign(u, {"firstSeen": T0}) for u in users] == new


def test_earlier_splits_need_the_current_splits_start():
    split = {"since": "2026-01-01T00:00:00Z", "arms": {"control": 0.5, "treatment": 0.5}}
    with pytest.raises(ValidationError, match=r"decide\.arms_since is required"):
        DecideSettings(earlier_splits=[split])
    with pytest.raises(ValidationError, match="must be after the start of every earlier split"):
        DecideSettings(earlier_splits=[split], arms_since="2025-12-31T00:00:00")
    assert DecideSettings(earlier_splits=[split], arms_since="2026-01-02").arms_since is not None


def test_a_batch_decides_each_request_on_its_own():
    d = Decider.from_settings(Settings())
    done = {"stepsCompleted": ["welcome", "role"], "firstSeen": T0, "lastReceived": T0}
    out = d.decide_many(
        [
            (DecideRequest(user_id="a", slot="next_step"), None, None),
            (DecideRequest(user_id="b", slot="nope"), None, None),
            (DecideRequest(user_id="c", slot="next_step", candidates=["role"]), done, None),
            (DecideRequest(user_id="d", slot="next_step"), done, None),
        ],
        now_ms=T0 + 5000,
    )
    assert isinstance(out[1], UnknownSlot) and out[1].field == "slot"
    assert isinstance(out[2], IneligibleCandidates) and out[2].field == "candidates[0]"
    assert out[0].chosen == "welcome" and out[0].cold_start
    assert out[3].chosen in out[3].candidates
    if out[3].arm == "control":
        assert out[3].chosen == "team_size"
    assert "role" not in out[3].candidates and out[3].profile_age_ms == 5000
    rec = out[3].record()
    assert rec["schema"] == "onramp.decision/2" and rec["features"]["size"] == d.schema.dim


def test_nothing_eligible_is_an_answer_without_a_choice():
    d = Decider.from_settings(Settings())
    steps = ["welcome", "role", "team_size", "goals", "integrations", "invite_teammates",
             "first_project"]  # fmt: skip
    [dec] = d.decide_many(
        [(DecideRequest(user_id="z", slot="next_step"), {"stepsCompleted": steps}, None)], T0
    )
    assert (dec.chosen, dec.propensity, dec.ranked) == (None, None, [])


def test_request_validation_names_the_field():
    with pytest.raises(ValidationError, match="userId or anonymousId"):
        DecideRequest(slot="next_step")
    with pytest.raises(ValidationError) as exc:
        DecideRequest.model_validate({"userId": "u", "slot": "next_step", "candidates": []})
    assert exc.value.errors()[0]["loc"] == ("candidates",)


def test_the_log_refuses_past_its_bound_and_counts_failures():
    broker = InMemoryBroker(partitions=2)
    log = DecisionLog(lambda: InMemoryProducer(broker), "d", max_pending=3)
    broker.available = False  # an outage: nothing is acknowledged
    assert log.offer([(b"u", {"decisionId": str(i)}) for i in range(3)])
    assert not log.offer([(b"u", {"decisionId": "4"})])  # would pass the bound
    assert _counts(log) == {"pending": 3, "acked": 0, "failed": 0}
    broker.recover()
    _until(lambda: _counts(log) == {"pending": 0, "acked": 3, "failed": 0})
    assert log.offer([(b"u", {"decisionId": "5"})])
    log.close()
    assert len(broker.records("d")) == 4
    assert not log.offer([(b"u", {"decisionId": "6"})])  # closed: refused, not lost


def _counts(log: DecisionLog) -> dict[str, int]:
    return {k: v for k, v in log.stats().items() if k not in ("pendingBytes", "down")}


def test_the_log_is_bounded_in_bytes_too():
    """A record whose request context was as large as allowed is a hundred kilobytes: 20,000 of
    them pending while Kafka is slow would be gigabytes. The log refuses past its bytes as past
    its count (a 503 for that decision), and takes a record of any size when nothing waits."""
    broker = InMemoryBroker(partitions=1)
    log = DecisionLog(
        lambda: InMemoryProducer(broker), "d", max_pending=100, max_pending_bytes=4_000
    )
    broker.available = False
    big = "x" * 3_000
    assert log.offer([(b"u", {"decisionId": "1", "context": big})])
    assert not log.offer([(b"u", {"decisionId": "2", "context": big})])
    assert log.stats()["pendingBytes"] > 3_000
    broker.recover()
    _until(lambda: log.stats()["pending"] == 0)
    assert log.stats()["pendingBytes"] == 0
    assert log.offer([(b"u", {"decisionId": "3", "context": "y" * 10_000})])  # alone: taken
    log.close()


def _until(check, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_offering_a_decision_never_waits_for_the_producer():
    # a producer that takes 2 s to build (metadata, a reconnect): the request path must not wait
    broker = InMemoryBroker(partitions=1)
    release = threading.Event()

    def slow_factory():
        release.wait(5)
        return InMemoryProducer(broker)

    log = DecisionLog(slow_factory, "d", max_pending=10)
    started = time.perf_counter()
    assert log.offer([(b"u", {"decisionId": "1"})])
    assert time.perf_counter() - started < 0.5
    assert log.stats()["pending"] == 1
    release.set()
    _until(lambda: log.stats()["acked"] == 1)
    log.close()


def test_while_the_producer_cannot_be_built_decisions_are_refused_until_it_is():
    """Kafka unreachable when the replica starts: the records offered before the first attempt
    fail, counted; from then on every offer is refused (the route answers 503) rather than
    served and lost, and the sender tries to build the producer again on its own. Before, each
    record failed at once and gave its place in the bound back, so every decision was served
    with a 200 and none was logged."""
    broker = InMemoryBroker(partitions=1)
    reachable = threading.Event()
    attempts = []

    def factory():
        attempts.append(1)
        if not reachable.is_set():
            raise ConnectionError("no broker")
        return InMemoryProducer(broker)

    results = []
    log = DecisionLog(factory, "d", max_pending=2, on_result=lambda ok, bad: results.append(bad))
    assert log.offer([(b"u", {"decisionId": "1"}), (b"u", {"decisionId": "2"})])
    _until(lambda: _counts(log) == {"pending": 0, "acked": 0, "failed": 2})
    assert sum(results) == 2 and log.stats()["down"] == 1
    assert not any(log.offer([(b"u", {"decisionId": f"x{i}"})]) for i in range(100))
    _until(lambda: len(attempts) >= 2)  # retried with nothing offered
    reachable.set()
    _until(lambda: log.stats()["down"] == 0)
    assert log.offer([(b"u", {"decisionId": "3"})])
    _until(lambda: _counts(log) == {"pending": 0, "acked": 1, "failed": 2})
    log.close()
    assert [orjson.loads(r.value)["decisionId"] for r in broker.records("d")] == ["3"]


def test_close_sends_everything_offered_before_it_and_builds_nothing_after():
    broker = InMemoryBroker(partitions=1)
    built = []

    def factory():
        built.append(1)
        time.sleep(0.3)  # a slow connect: close() comes while the sender is still building
        return InMemoryProducer(broker)

    log = DecisionLog(factory, "d", max_pending=100)
    assert log.offer([(b"u", {"decisionId": str(i)}) for i in range(20)])
    log.close(timeout_s=5)
    assert _counts(log) == {"pending": 0, "acked": 20, "failed": 0}
    assert len(broker.records("d")) == 20 and built == [1]
    assert not log.offer([(b"u", {"decisionId": "late"})])
    time.sleep(0.1)
    assert built == [1]  # nothing rebuilt a producer after the close


def test_a_record_that_cannot_be_encoded_queues_nothing_of_its_batch():
    broker = InMemoryBroker(partitions=1)
    log = DecisionLog(lambda: InMemoryProducer(broker), "d", max_pending=10)
    with pytest.raises(TypeError):
        log.offer([(b"u", {"decisionId": "1"}), (b"u", {"decisionId": object()})])
    assert log.stats()["pending"] == 0
    log.close()
    assert broker.records("d") == []


def test_the_sender_takes_what_queued_while_it_was_busy_in_order():
    broker = InMemoryBroker(partitions=1)
    sends: list[bytes] = []

    class SlowProducer(InMemoryProducer):
        def send(self, record, callback):  # type: ignore[no-untyped-def]
            sends.append(record.value)
            time.sleep(0.002)  # a busy sender: offers pile up meanwhile
            super().send(record, callback)

    log = DecisionLog(lambda: SlowProducer(broker), "d", max_pending=1000)
    for i in range(200):
        assert log.offer([(b"u", {"decisionId": str(i)})])
    log.close(timeout_s=5)
    assert _counts(log) == {"pending": 0, "acked": 200, "failed": 0}
    assert [orjson.loads(v)["decisionId"] for v in sends] == [str(i) for i in range(200)]


class _Hooks:
    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, bool]] = []
        self.unavailable: list[str] = []

    def decision(self, slot: str, arm: str, cold: bool, seconds: float) -> None:
        self.decisions.append((slot, arm, cold))

    def kafka_unavailable(self, cause: str) -> None:
        self.unavailable.append(cause)


def _service(log: DecisionLog, hooks: _Hooks) -> DecisionService:
    class NoProfiles:
        async def get_many(self, user_keys):  # type: ignore[no-untyped-def]
            return {}

    batcher = DecisionBatcher(Decider.from_settings(Settings()), NoProfiles(), clock_ms=lambda: T0)
    return DecisionService(batcher, log, hooks, NoopTracing(), retry_after_s=7)


def test_the_service_answers_logs_and_counts_each_decision():
    broker = InMemoryBroker(partitions=1)
    log = DecisionLog(lambda: InMemoryProducer(broker), "d", max_pending=10)
    hooks = _Hooks()
    service = _service(log, hooks)
    body = b'{"userId": "u1", "slot": "next_step", "decisionId": "d1"}'
    status, raw, headers = asyncio.run(service.answer(parse_decide(body)))
    log.close()
    answer = orjson.loads(raw)
    assert (status, headers) == (200, {})
    [record] = [orjson.loads(r.value) for r in broker.records("d")]
    assert record["decisionId"] == answer["decisionId"] == "d1"
    assert list(answer) == list(record)[1 : len(answer) + 1]  # the answer's keys lead the record
    assert hooks.decisions == [("next_step", answer["arm"], True)]


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [
        (b"{nope", 400, "invalid_json", None),
        (b'{"userId": "u1"}', 400, "invalid_request", "slot"),
        (b'{"userId": "u1", "slot": "nxt"}', 422, "unknown_slot", "slot"),
        (b'{"userId": "u1", "slot": "next_step", "candidates": ["dance"]}', 422,
         "unknown_action", "candidates[0]"),
    ],
)  # fmt: skip
def test_the_service_refuses_with_the_field_and_logs_nothing(body, status, error, field):
    broker = InMemoryBroker(partitions=1)
    log = DecisionLog(lambda: InMemoryProducer(broker), "d", max_pending=10)
    hooks = _Hooks()
    got, raw, headers = asyncio.run(_service(log, hooks).answer(parse_decide(body)))
    log.close()
    assert (got, headers) == (status, {})
    assert orjson.loads(raw)["error"] == error and orjson.loads(raw)["field"] == field
    assert broker.records("d") == [] and hooks.decisions == []


def test_the_service_answers_503_with_retry_after_when_the_log_is_behind():
    broker = InMemoryBroker(partitions=1)
    broker.available = False
    log = DecisionLog(lambda: InMemoryProducer(broker), "d", max_pending=1)
    hooks = _Hooks()
    service = _service(log, hooks)
    ask = b'{"userId": "u1", "slot": "next_step"}'
    assert asyncio.run(service.answer(parse_decide(ask)))[0] == 200
    status, raw, headers = asyncio.run(service.answer(parse_decide(ask)))
    assert (status, headers) == (503, {"Retry-After": "7"})
    assert orjson.loads(raw) == {
        "error": "decision_log_backlog",
        "field": None,
        "message": "the decision log is not keeping up",
    }
    assert hooks.unavailable == ["decision_log"] and len(hooks.decisions) == 1
    broker.recover()
    log.close()


def test_each_model_arm_explores_as_its_own_model_file_says():
    """``treatment`` and ``treatment_b`` serve files from two learners, each publishing its own
    gamma: a treatment decision is drawn with treatment's, whatever treatment_b swapped in last
    (one policy used to be shared, set by whichever arm swapped last)."""
    import dataclasses

    settings = Settings(decide={"arms": {"control": 0.1, "treatment": 0.5, "treatment_b": 0.4}})
    done = {"stepsCompleted": ["welcome"], "firstSeen": T0, "lastReceived": T0}

    def decide(gamma_b: float) -> dict[str, float | None]:
        d = Decider.from_settings(settings)
        cold = d.bundles["treatment"]
        mature = dataclasses.replace(cold, version=5, metadata={**cold.metadata, "gamma": 400.0})
        young = dataclasses.replace(cold, version=2, metadata={**cold.metadata, "gamma": gamma_b})
        assert d.swap("treatment", mature) and d.swap("treatment_b", young)
        requests = [
            (DecideRequest(user_id=f"u{i}", slot="next_step", decision_id=f"d{i}"), done, None)
            for i in range(40)
        ]
        out = d.decide_many(requests, now_ms=T0 + 1000)
        return {x.user_key: x.propensity for x in out if x.arm == "treatment"}

    treated = decide(12.0)
    assert treated and treated == decide(400.0)


def test_an_arm_no_replica_serves_is_refused_by_the_settings():
    """Only control, treatment and treatment_b have something to serve them; another arm name
    used to pass and then fail every decision batch holding one of its users (a 500)."""
    with pytest.raises(ValidationError, match=r"decide.arms.treatment_c: unknown arm"):
        DecideSettings(arms={"control": 0.5, "treatment_c": 0.5})
    with pytest.raises(ValidationError, match=r"decide.earlier_splits\[0\].arms.b: unknown arm"):
        DecideSettings(
            earlier_splits=[{"since": "2026-01-01", "arms": {"control": 0.5, "b": 0.5}}],
            arms_since="2026-02-01",
        )


def test_a_profile_read_past_its_deadline_keeps_the_users_arm():
    """A stitched user (their arm is their first id's) whose profile read misses its deadline
    is decided in the arm the last read put them in, not by a hash of the id asking (which put
    about half of them in the other arm for that decision, logged so)."""
    d = Decider.from_settings(Settings())
    users = [(f"user-{i}", f"anon-{i}") for i in range(200)]
    read = [
        (DecideRequest(user_id=u, slot="next_step"), {"assignmentKey": a, "firstSeen": T0}, None)
        for u, a in users
    ]
    arms = [x.arm for x in d.decide_many(read, now_ms=T0 + 1000)]
    unread = [(DecideRequest(user_id=u, slot="next_step"), None, None) for u, _ in users]
    for reason in ("deadline", "stream_unavailable"):
        out = d.decide_many(unread, now_ms=T0 + 2000, cold_reasons=[reason] * len(unread))
        assert [x.arm for x in out] == arms
        assert all(x.cold_reason == reason for x in out)
    # a user with no events yet is new: the current split, by the id asking
    fresh = d.decide_many([(DecideRequest(user_id="new", slot="next_step"), None, None)], T0)
    assert fresh[0].arm == d.arms.assign("new", None)


def test_a_request_retried_with_its_decision_id_gets_the_answer_it_got():
    """A decisionId is an idempotency key. A retry after the user completed a step (the
    profile changed) was decided again: two answers under one id were served and logged, and
    the reward join kept the first, crediting the second answer's outcome to the first's
    action. A retry now gets the same answer, logged once; another id is a new decision."""
    broker = InMemoryBroker(partitions=1)
    log = DecisionLog(lambda: InMemoryProducer(broker), "d", max_pending=10)
    profile: dict = {"stepsCompleted": [], "firstSeen": T0, "lastReceived": T0}

    class Profiles:
        async def get_many(self, user_keys):  # type: ignore[no-untyped-def]
            return {k: dict(profile) for k in user_keys}

    settings = Settings.model_validate({"decide": {"arms": {"control": 1.0}}})
    batcher = DecisionBatcher(Decider.from_settings(settings), Profiles(), clock_ms=lambda: T0)
    service = DecisionService(batcher, log, _Hooks(), NoopTracing(), retry_after_s=7)

    def ask(decision_id: str) -> dict:
        body = {"userId": "u1", "slot": "next_step", "decisionId": decision_id}
        status, raw, _ = asyncio.run(service.answer(parse_decide(orjson.dumps(body))))
        assert status == 200
        return orjson.loads(raw)

    first = ask("checkout-1")
    assert first["chosen"] == "welcome"
    profile["stepsCompleted"] = ["welcome"]  # completed before the retry
    assert ask("checkout-1") == first
    assert ask("checkout-2")["chosen"] != "welcome"  # a new id: decided from the profile now
    log.close()
    assert [orjson.loads(r.value)["decisionId"] for r in broker.records("d")] == [
        "checkout-1",
        "checkout-2",
    ]


def _retry_service(profile: dict, delay_s: float = 0.0) -> tuple[DecisionService, InMemoryBroker]:
    """A service over one profile for every id (control only: the choice follows the profile),
    its profile reads taking ``delay_s``."""
    broker = InMemoryBroker(partitions=1)
    log = DecisionLog(lambda: InMemoryProducer(broker), "d", max_pending=100)

    class Profiles:
        async def get_many(self, user_keys):  # type: ignore[no-untyped-def]
            got = {k: dict(profile, userKey=k) for k in user_keys}  # read before the wait
            await asyncio.sleep(delay_s)
            return got

    settings = Settings.model_validate({"decide": {"arms": {"control": 1.0}}})
    batcher = DecisionBatcher(Decider.from_settings(settings), Profiles(), clock_ms=lambda: T0)
    return DecisionService(batcher, log, _Hooks(), NoopTracing(), retry_after_s=7), broker


def test_a_retry_sent_while_the_first_request_is_decided_gets_its_answer():
    """A client that timed out and retried while its first request waited for the profile got
    a second decision (from the profile as it changed meanwhile), and both were logged."""
    profile: dict = {"stepsCompleted": [], "firstSeen": T0, "lastReceived": T0}
    service, broker = _retry_service(profile, delay_s=0.01)
    body = orjson.dumps({"userId": "u1", "slot": "next_step", "decisionId": "k-2"})

    async def both() -> list:
        first = asyncio.ensure_future(service.answer(parse_decide(body)))
        await asyncio.sleep(0.002)  # the first has read the profile; then it changes
        profile["stepsCompleted"] = ["welcome"]
        retry = await service.answer(parse_decide(body))
        return [await first, retry]

    first, retry = asyncio.run(both())
    assert first == retry and first[0] == 200
    service.decision_log.close()
    assert len(broker.records("d")) == 1


def test_a_decision_id_sent_again_with_other_candidates_is_refused():
    """The answer of a retry was served for a request with other candidates: a chosen action
    outside the candidates asked for."""
    service, _ = _retry_service({"stepsCompleted": [], "firstSeen": T0, "lastReceived": T0})

    def ask(**fields: Any) -> tuple[int, dict]:
        body = {"userId": "u1", "slot": "next_step", "decisionId": "d-1", **fields}
        status, raw, _ = asyncio.run(service.answer(parse_decide(orjson.dumps(body))))
        return status, orjson.loads(raw)

    assert ask()[0] == 200
    status, body = ask(candidates=["team_size"])
    assert (status, body["error"], body["field"]) == (409, "decision_id_reused", "decisionId")
    assert ask(context={"device": "mobile"})[0] == 409
    assert ask()[0] == 200  # the request itself again: its answer


def test_an_anonymous_id_that_is_a_signed_in_users_id_reads_no_profile_when_verifying():
    """With identity verification on, a browser sent a signed-in user's id as its anonymousId
    and was answered from that user's profile (user ids and anonymous ids share one key
    space): no userHash needed. Such a request is now decided as an unknown user's, as is one
    whose anonymous id was merged into a signed-in user's; an anonymous visitor's own profile
    still counts, and so does everything without identity verification."""
    secret = "a-long-enough-secret"
    done = {"stepsCompleted": ["welcome"], "firstSeen": T0, "lastReceived": T0}
    service, _ = _retry_service(done)

    def ask(body: dict, secret: str | None = secret) -> dict:
        req = verify_identity(parse_decide(orjson.dumps(body)), secret)
        status, raw, _ = asyncio.run(service.answer(req))
        assert status == 200
        return orjson.loads(raw)

    signed_in = {**done, "userId": "u1"}
    service.batcher.profiles.get_many = _profiles({"u1": signed_in, "a1": signed_in})
    for body in ({"anonymousId": "u1", "slot": "next_step"},  # another's user id
                 {"anonymousId": "a1", "slot": "next_step"}):  # merged into it  # fmt: skip
        answer = ask(body)
        assert (answer["chosen"], answer["coldReason"]) == ("welcome", "unknown_user")
    assert ask({"anonymousId": "u1", "slot": "next_step"}, secret=None)["chosen"] != "welcome"
    hashed = user_hash(secret, "u1")
    assert ask({"userId": "u1", "userHash": hashed, "slot": "next_step"})["chosen"] != "welcome"
    visitor = {**done, "userId": None}
    service.batcher.profiles.get_many = _profiles({"v1": {**visitor, "userKey": "v1"}})
    assert ask({"anonymousId": "v1", "slot": "next_step"})["chosen"] != "welcome"


def _profiles(by_key: dict) -> Any:
    """A ``get_many`` answering the profiles of ``by_key`` (the key of a merged id -> the
    survivor's profile, as the stream's reader answers)."""

    async def get_many(user_keys):  # type: ignore[no-untyped-def]
        return {k: dict(by_key[k]) for k in user_keys if k in by_key}

    return get_many
