"""Poison records: whatever a record of onramp.events or onramp.decisions holds, it becomes one
DLQ record with a reason, and the partition moves on. The state core is driven directly; the
worker with the in-memory Kafka twin (its DLQ records, and no checkpoint ahead of Kafka's
acknowledgement of its side outputs). The same runs against the real broker and Ray in
tests/integration/test_stream_poison.py."""

import base64
import json
import threading
import time

import pytest

from ray_app.kafka.client import Record
from ray_app.kafka.memory import InMemoryBroker, InMemoryConsumer, InMemoryProducer
from ray_app.state import SessionShard
from ray_app.stream import worker as worker_module
from ray_app.stream.checkpoint import CheckpointStore
from ray_app.stream.reader import NOT_HELD
from ray_app.stream.worker import StreamWorker
from ray_app.telemetry.stream import stream_metrics_text
from tests.conftest import make_settings
from tests.unit.test_state import T0, iso
from validation.batch import BatchValidator

KEY = b"test-checkpoint-key-0123456789ab"


def good(mid: str, t: int = 0, user: str = "u1") -> bytes:
    return json.dumps(
        {
            "messageId": mid,
            "type": "track",
            "event": "Clicked",
            "userKey": user,
            "timestamp": iso(T0 + t),
            "receivedAt": iso(T0 + t + 20),
        }
    ).encode()


def event_with(**fields) -> bytes:
    d = json.loads(good("bad"))
    d.update(fields)
    return json.dumps(d).encode()


#: (value, reason, field) of every malformed event record
BAD_EVENTS = [
    (None, "invalid_json", None),  # a tombstone
    (b"\xff\xfe\x00garbage", "invalid_utf8", None),
    (b"not json", "invalid_json", None),
    (b"[1, 2, 3]", "not_an_object", None),
    (b"null", "not_an_object", None),
    (b'"a string"', "not_an_object", None),
    (b'{"messageId": 1e999}', "invalid_json", None),
    (b'{"n": 123456789012345678901234567890}', "missing_field", "type"),  # a float to orjson
    (event_with(type=5), "invalid_field", "type"),
    (event_with(userKey={"a": 1}), "invalid_field", "userKey"),
    (event_with(messageId=None), "missing_field", "messageId"),
    (event_with(timestamp=12345), "invalid_timestamp", "timestamp"),
    (event_with(timestamp="0001-01-01T00:00:00+14:00"), None, None),  # any reason, no crash
    (event_with(seq="x", sessionId="s"), "invalid_onramp_context", "seq"),
    (event_with(properties="str"), "invalid_field", "traits/properties"),
    (event_with(type="identify", traits=[1]), "invalid_field", "traits/properties"),
    (event_with(sessionId=["s"]), "invalid_field", "sessionId"),
    (event_with(context={"traits": "x"}, messageId="ctx"), "applied", None),  # ignored, fine
]


def decision(**fields) -> bytes:
    d = {"decisionId": "d1", "userKey": "u1", "slot": "next_step", "chosen": "role",
         "actionIndex": 1, "propensity": 0.5, "features": [0.0], "arm": "treatment",
         "modelVersion": 3, "timestamp": iso(T0), "candidates": ["role", "goals"],
         "ranked": [{"action": "role"}, {"action": "goals"}]}  # fmt: skip
    d.update(fields)
    return json.dumps(d).encode()


#: (value, reason, field) of every malformed decision record
BAD_DECISIONS = [
    (None, "invalid_json", None),
    (b"\xc3\x28", "invalid_utf8", None),
    (b"{not json", "invalid_json", None),
    (b'["d1"]', "not_an_object", None),
    (decision(ranked="role"), "invalid_field", "ranked"),
    (decision(ranked=[1, 2]), "invalid_field", "ranked"),
    (decision(ranked={"action": "role"}), "invalid_field", "ranked"),
    (decision(modelVersion="v3"), "invalid_field", "modelVersion"),
    (decision(modelVersion=2.5), "invalid_field", "modelVersion"),
    (decision(propensity="0.5"), "invalid_field", "propensity"),
    # its reward's dense list would not fit in memory: refused here, not when its outcome comes
    (decision(features={"size": 10**12, "indices": [], "values": []}), "invalid_field", "features"),
    (decision(propensity=0), "invalid_field", "propensity"),
    (decision(actionIndex=1.5), "invalid_field", "actionIndex"),
    (decision(features="x"), "invalid_field", "features"),
    (decision(decisionId=5), "invalid_field", "decisionId"),
    (decision(userKey=["u1"]), "invalid_field", "userKey"),
    (decision(timestamp=5), "invalid_timestamp", "timestamp"),
    (decision(timestamp="99999-01-01"), "invalid_timestamp", "timestamp"),
    (decision(candidates="role"), "invalid_field", "candidates"),
    (decision(arm=3), "invalid_field", "arm"),
    (decision(slot=None), "missing_field", "slot"),
]


def test_every_malformed_event_is_rejected_alone_with_its_reason():
    shard = SessionShard(0, checks=BatchValidator())
    records = []
    for n, (value, _, _) in enumerate(BAD_EVENTS):
        records += [(b"u1", good(f"g{n}", n)), (b"u1", value)]
    result = shard.process(records)
    rejected = {index: exc for index, _, _, exc in result.rejected}
    for n, (value, reason, field) in enumerate(BAD_EVENTS):
        index = 2 * n + 1
        if reason == "applied":
            assert index not in rejected
            continue
        assert index in rejected, value
        if reason is not None:
            assert (rejected[index].reason.value, rejected[index].field) == (reason, field), value
    assert shard.profile("u1")["counts"]["track:Clicked"] == len(BAD_EVENTS) + 1
    s = shard.stats
    assert s.records == s.applied + s.duplicates + s.late + s.rejected + shard.buffered


def test_every_malformed_decision_is_rejected_alone_with_its_reason():
    shard = SessionShard(0)
    records = [(b"u1", value) for value, _, _ in BAD_DECISIONS] + [(b"u1", decision())]
    result = shard.process_decisions(records, next_offset=len(records))
    got = [(exc.reason.value, exc.field) for _, _, _, exc in result.rejected]
    assert got == [(reason, field) for _, reason, field in BAD_DECISIONS]
    assert list(shard.rewards.pending) == ["d1"] and shard.decision_offset == len(records)
    assert sum(shard.decisions_rejected.values()) == len(BAD_DECISIONS)


def test_an_exception_inside_apply_rejects_that_record_only_and_replays_the_same(monkeypatch):
    from ray_app.state import shard as shard_module

    real = shard_module.apply

    def apply(profile, event, hits=None, origin=None):
        if event.message_id == "boom":
            profile.counts["half-applied"] = 1  # a partial change before the failure
            raise TypeError("unhashable thing")
        return real(profile, event, hits, origin)

    monkeypatch.setattr(shard_module, "apply", apply)
    records = [(b"u1", good("a", 0)), (b"u1", good("boom", 1)), (b"u1", good("c", 2))]
    shard = SessionShard(0)
    base = shard.snapshot()
    result = shard.process(records)
    ((index, _, value, exc),) = result.rejected
    assert (index, value, exc.reason.value) == (1, records[1][1], "unprocessable")
    assert "TypeError: unhashable thing" in exc.message and "'boom'" in exc.message
    assert result.applied == 2 and shard.stats.rejected == 1
    # the half-applied change is in the delta, so a restore equals the live shard
    restored = SessionShard.restore(base, [shard.snapshot_delta()])
    assert restored.profiles_as_dicts() == shard.profiles_as_dicts()
    replayed = SessionShard(0)
    replayed.process(records)
    assert replayed.profiles_as_dicts() == shard.profiles_as_dicts()


# -- the worker, over the in-memory Kafka twin ---------------------------------------------


def _worker(tmp_path, partitions=(0,), prefix="poison", **env):
    settings = make_settings(ONRAMP_KAFKA__TOPIC_PREFIX=prefix, ONRAMP_KAFKA__PARTITIONS="2", **env)
    return StreamWorker(
        "w0", settings, "in-memory", list(partitions), str(tmp_path / "ckpt"), KEY
    ), settings


def _produce(broker, settings, topic, values):
    """Append raw values (None: a tombstone) to partition 0 of ``topic``, as a broken producer
    would."""
    part = broker.topics.setdefault(topic, [[] for _ in range(broker.partitions)])[0]
    for v in values:
        part.append(Record(topic, 0, len(part), b"u1", v))


def test_the_worker_writes_each_poison_record_to_the_dlq_and_moves_on(twin, tmp_path):
    w, settings = _worker(tmp_path)
    t = settings.topics
    events = []
    for n, (value, _, _) in enumerate(BAD_EVENTS):
        events += [good(f"g{n}", n), value]
    events.append(b"x" * 20_000 + "é".encode() * 10_000)  # 40 KB, not JSON: truncated raw text
    events.append(b"\xff" * 40_000)  # 40 KB, not UTF-8: truncated base64
    _produce(twin, settings, t.events, events)
    _produce(twin, settings, t.decisions, [v for v, _, _ in BAD_DECISIONS] + [decision()])
    w._process(w._consumer.poll(max_records=100_000))
    assert w.checkpoint() == 1 and w.error is None
    assert w.next_offset[0] == len(events)
    ck = CheckpointStore(tmp_path / "ckpt", KEY).load(0)
    assert ck.next_offset == len(events)
    assert twin.committed[(t.events, 0)] == len(events)

    dlq = [json.loads(r.value) for r in twin.records(t.dlq)]
    by_origin = {(d["origin"]["topic"], d["origin"]["offset"]): d for d in dlq}
    expected_events = {2 * n + 1 for n, (_, r, _) in enumerate(BAD_EVENTS) if r != "applied"}
    expected_events |= {len(events) - 2, len(events) - 1}
    assert {o for (topic, o) in by_origin if topic == t.events} == expected_events
    assert {o for (topic, o) in by_origin if topic == t.decisions} == set(range(len(BAD_DECISIONS)))
    assert len(dlq) == len(expected_events) + len(BAD_DECISIONS)  # one each
    for d in dlq:
        assert d["schema"] == "onramp.dlq/1" and d["reason"] and d["message"]
        assert d["origin"]["partition"] == 0 and d["origin"]["stage"] == "stream"
    tomb = by_origin[(t.events, 1)]
    assert tomb["tombstone"] is True and tomb["rawSize"] == 0 and "tombstone" in tomb["message"]
    binary = by_origin[(t.events, 3)]
    assert base64.b64decode(binary["rawBase64"]) == BAD_EVENTS[1][0]
    assert binary["reason"] == "invalid_utf8"
    big_text = by_origin[(t.events, len(events) - 2)]
    assert big_text["rawTruncated"] and big_text["rawSize"] == 40_000
    assert len(big_text["rawText"].encode()) <= 32 * 1024
    big_binary = by_origin[(t.events, len(events) - 1)]
    assert len(big_binary["rawBase64"]) == 32 * 1024  # 24 KB of it, base64: the record's bound
    assert big_binary["rawTruncated"] and big_binary["rawSize"] > 32 * 1024
    ranked = by_origin[(t.decisions, 4)]
    assert (ranked["reason"], ranked["field"]) == ("invalid_field", "ranked")

    status = w.status()
    part = status["partitions"]["0"]
    assert part["applied"] == len(BAD_EVENTS) + 1 and part["pendingDecisions"] == 1
    assert sum(part["decisionsRejectedByReason"].values()) == len(BAD_DECISIONS)
    text = stream_metrics_text([status])
    assert 'onramp_stream_decisions_rejected_total{partition="0",reason="invalid_field"}' in text
    w.stop()


def test_no_checkpoint_covers_side_outputs_kafka_has_not_acknowledged(twin, tmp_path, monkeypatch):
    monkeypatch.setattr(worker_module, "_ACK_TIMEOUT_S", 0.2)
    w, settings = _worker(tmp_path)
    t = settings.topics
    _produce(twin, settings, t.events, [good("a"), b"not json"])
    w._process(w._consumer.poll())
    assert w.checkpoint() == 1  # offsets 0..1, DLQ record acknowledged
    _produce(twin, settings, t.events, [good("b", 5), b"[1]", good("c", 6)])
    twin.available = False  # Kafka stops acknowledging
    with pytest.raises(TimeoutError):
        w._process(w._consumer.poll())
    assert w.next_offset[0] == 5  # the state moved on...
    assert w.checkpoint() == 0 and w.checkpoints_skipped == 1  # ...the checkpoint did not
    store = CheckpointStore(tmp_path / "ckpt", KEY)
    assert store.load(0).next_offset == 2 and twin.committed[(t.events, 0)] == 2
    w.stop()  # Kafka still down: its final checkpoint is skipped too
    assert store.load(0).next_offset == 2 and w.checkpoints_skipped == 2
    assert w.status()["checkpointsSkipped"] == 2
    assert 'onramp_stream_checkpoints_skipped_total{worker="w0"} 2' in stream_metrics_text(
        [w.status()]
    )

    # a worker whose owed outputs go through on stop checkpoints them
    w2, _ = _worker(tmp_path)
    twin.available = True
    _produce(twin, settings, t.events, [b"null"])
    twin.available = False
    with pytest.raises(TimeoutError):
        w2._process(w2._consumer.poll())
    twin.available = True
    w2.stop()  # retries the owed DLQ records, then checkpoints
    assert store.load(0).next_offset == 6
    dlq = [json.loads(r.value)["origin"]["offset"] for r in twin.records(t.dlq)]
    assert 5 in dlq


def test_status_says_how_long_the_loop_has_waited_on_kafka(twin, tmp_path, monkeypatch):
    """A worker blocked on Kafka's acknowledgements takes nothing and its lag reads stale:
    status and /metrics say it is waiting, and for how long."""
    monkeypatch.setattr(worker_module, "_ACK_TIMEOUT_S", 1.0)
    w, settings = _worker(tmp_path)
    _produce(twin, settings, settings.topics.events, [b"not json"])  # a DLQ record to send
    twin.available = False
    raised: list[BaseException] = []

    def process() -> None:
        try:
            w._process(w._consumer.poll())
        except BaseException as exc:
            raised.append(exc)

    blocked = threading.Thread(target=process)
    blocked.start()
    time.sleep(0.5)
    waited = w.status()["waitingOnKafkaS"]
    assert 0.3 <= waited <= 1.0
    text = stream_metrics_text([w.status()])
    assert "onramp_stream_waiting_on_kafka_seconds 0." in text
    blocked.join()
    assert [type(e) for e in raised] == [TimeoutError]  # gave up after _ACK_TIMEOUT_S
    assert w.status()["waitingOnKafkaS"] == 0.0


def test_a_refused_checkpoint_stops_only_its_partition(twin, tmp_path):
    ckpt = tmp_path / "ckpt"
    store = CheckpointStore(ckpt, KEY)
    store.save(1, SessionShard(1).snapshot(), next_offset=0)
    data = bytearray((ckpt / "partition-0001.ckpt").read_bytes())
    data[-3] ^= 0xFF
    (ckpt / "partition-0001.ckpt").write_bytes(bytes(data))
    w, settings = _worker(tmp_path, partitions=(0, 1))
    assert w.partitions == [0] and list(w.refused) == [1]
    assert "signature does not verify" in w.refused[1] and "partition-0001.ckpt" in w.refused[1]
    status = w.status()
    assert list(status["partitions"]) == ["0"] and "1" in status["refused"]
    assert "onramp_stream_checkpoint_refused_partitions 1" in stream_metrics_text([status])
    _produce(twin, settings, settings.topics.events, [good("a")])
    w._process(w._consumer.poll())
    assert w.status()["partitions"]["0"]["applied"] == 1
    # its users are not read (a decision's cold start for stream_unavailable), not unknown
    assert w.profile(1, "u1") == {NOT_HELD: 1}
    w.stop()
    assert (ckpt / "partition-0001.ckpt").read_bytes() == bytes(data)  # left as it was


def test_a_batch_validation_that_raises_rejects_only_the_event_that_makes_it_raise(monkeypatch):
    real = BatchValidator.failures_columns

    def failures_columns(self, cols, quality):
        if "screen" in cols["kind"]:
            raise TypeError("pandera choked")
        return real(self, cols, quality)

    monkeypatch.setattr(BatchValidator, "failures_columns", failures_columns)
    shard = SessionShard(0, checks=BatchValidator())
    screen = event_with(type="screen", messageId="scr")
    result = shard.process([(b"u1", good("a", 0)), (b"u1", screen), (b"u1", good("c", 1))])
    ((index, _, _, exc),) = result.rejected
    assert (index, exc.reason.value) == (1, "unprocessable") and "pandera choked" in exc.message
    assert result.applied == 2
    assert shard.rates["u1"][1] == 2  # the failed attempt counted nobody twice


def test_records_fetched_again_are_not_applied_twice_and_skipped_offsets_are_fetched_again(
    twin, tmp_path
):
    """A client that hands over records before the next offset again (a re-fetch) must not
    count or apply them twice; a fetch that skips offsets is not believed: the partition is read
    again from the first offset skipped, and what comes back is applied."""
    w, settings = _worker(tmp_path)
    t = settings.topics
    _produce(twin, settings, t.events, [good(f"m{n}", n) for n in range(10)])
    w._process(w._consumer.poll(max_records=100))
    assert w.next_offset[0] == 10 and w.shards[0].stats.records == 10
    w._consumer.assign_at({(t.events, 0): 4})  # the client goes back six records
    _produce(twin, settings, t.events, [good(f"m{n}", n) for n in range(10, 12)])
    w._process(w._consumer.poll(max_records=100))
    part = w.status()["partitions"]["0"]
    assert part["records"] == 12 and part["duplicates"] == 0 and part["applied"] == 12
    assert part["redelivered"] == 6 and part["offsetGaps"] == 0 and part["nextOffset"] == 12
    _produce(twin, settings, t.events, [good(f"m{n}", n) for n in range(12, 17)])
    w._consumer.assign_at({(t.events, 0): 14})  # a fetch hands over 14.. when 12 was next
    w._process(w._consumer.poll(max_records=100))
    part = w.status()["partitions"]["0"]
    assert part["nextOffset"] == 12 and part["fetchedAgain"] == 1  # 14..16 held back
    w._process(w._consumer.poll(max_records=100))  # read again from 12
    part = w.status()["partitions"]["0"]
    assert part["nextOffset"] == 17 and part["records"] == 17 and part["applied"] == 17
    assert part["offsetGaps"] == 0 and part["redelivered"] == 6
    assert "onramp_stream_fetched_again_total" in stream_metrics_text([w.status()])


class _Holed(InMemoryConsumer):
    """A client of a partition with a hole every fetch shows (compaction, transaction markers)."""

    hole = range(3, 5)

    def poll(self, timeout_s=0.5, max_records=5000):
        return [r for r in super().poll(timeout_s, max_records) if r.offset not in self.hole]


def test_offsets_every_fetch_skips_are_taken_as_a_hole_only_after_fetching_again(
    twin, tmp_path, monkeypatch
):
    """By default a skip is fetched again for half a second (3 times at least) before it is a
    hole; with ``stream.skip_refetch_s`` 0 (topics written with transactions), after once."""
    monkeypatch.setattr(worker_module, "make_consumer", lambda *a, **k: _Holed(twin))
    w, settings = _worker(tmp_path)
    _produce(twin, settings, settings.topics.events, [good(f"m{n}", n) for n in range(8)])
    assert w.settings.stream.skip_refetch_s == 0.5  # the default
    for _ in range(6):  # fetched again and again, but not yet for skip_refetch_s
        w._process(w._consumer.poll(max_records=100))
    part = w.status()["partitions"]["0"]
    assert part["nextOffset"] == 3 and part["offsetGaps"] == 0 and part["fetchedAgain"] == 6
    time.sleep(0.5)
    w._process(w._consumer.poll(max_records=100))  # the same skip again, long enough: a hole
    part = w.status()["partitions"]["0"]
    assert part["offsetGaps"] == 2 and part["nextOffset"] == 8 and part["records"] == 6
    assert part["fetchedAgain"] == 6 and part["applied"] == 6
    _produce(twin, settings, settings.topics.events, [good(f"m{n}", n) for n in range(8, 10)])
    w._process(w._consumer.poll(max_records=100))  # and the partition goes on as before
    part = w.status()["partitions"]["0"]
    assert part["nextOffset"] == 10 and part["offsetGaps"] == 2 and part["fetchedAgain"] == 6
    w.stop()

    w, settings = _worker(tmp_path / "txn", prefix="holed", ONRAMP_STREAM__SKIP_REFETCH_S="0")
    _produce(twin, settings, settings.topics.events, [good(f"m{n}", n) for n in range(8)])
    w._process(w._consumer.poll(max_records=100))
    w._process(w._consumer.poll(max_records=100))  # one fetch again, then it is a hole
    part = w.status()["partitions"]["0"]
    assert part["nextOffset"] == 8 and part["offsetGaps"] == 2 and part["fetchedAgain"] == 1
    w.stop()


def test_a_worker_whose_checkpoints_fail_still_closes_on_stop(tmp_path):
    """The writer's failure stops the loop and is raised again by stop()'s final checkpoint;
    the Kafka clients and the profile socket are closed all the same (stop() used to leave
    them open, and an in-process rescale stopped partway)."""
    from ray_app.kafka.client import OutRecord

    key = b"k" * 32

    class FailingStore(CheckpointStore):
        def save(self, *args):  # type: ignore[no-untyped-def]
            raise OSError("disk full")

    broker = InMemoryBroker(partitions=1)
    settings = make_settings(
        None, ONRAMP_KAFKA__PARTITIONS="1", ONRAMP_STREAM__CHECKPOINT_INTERVAL_S="0.05"
    )
    w = StreamWorker("w0", settings, "x", [0], str(tmp_path), key,
                     consumer=InMemoryConsumer(broker), producer=InMemoryProducer(broker),
                     store=FailingStore(tmp_path, key))  # fmt: skip
    w.start()
    InMemoryProducer(broker).send_all(
        [OutRecord(settings.topics.events, good("a"), key=b"u1")]
    ).result(5)
    deadline = time.monotonic() + 10
    while w.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.error is not None and "disk full" in w.error
    with pytest.raises(OSError, match="disk full"):
        w.stop()
    assert w._profile_server is None or w._profile_server._closed


def test_freshness_from_a_collector_clock_ahead_counts_as_no_time(twin, tmp_path):
    """A negative freshness (the collector's host clock ahead of the worker's) falls in the
    lowest bucket and must not lower the histogram's sum (a sum that goes down is read as a
    counter reset)."""
    w, _ = _worker(tmp_path)
    w._observe(-250.0)
    w._observe(40.0)
    assert w.freshness_sum_ms == 40.0 and sum(w.freshness) == 2


def test_a_repeated_offset_and_a_gap_in_one_fetch_are_not_taken_as_contiguous():
    """[10, 11, 11, 13] has as many records as offsets 10..13: the contiguity check took it
    whole, so 11 went in twice and 12 was skipped without a word."""
    import types
    from collections import namedtuple

    rec = namedtuple("rec", "topic partition offset")
    asked: list[tuple] = []
    fake = types.SimpleNamespace(
        redelivered={}, offset_gaps={}, worker_id="w",
        _fetch_again=lambda *a: asked.append(a) or True,
    )  # fmt: skip
    recs = [rec("t", 0, o) for o in (10, 11, 11, 13)]
    kept = StreamWorker._in_order(fake, 0, recs, 10, "events")  # type: ignore[arg-type]
    assert [r.offset for r in kept] == [10, 11]  # the rest after 12 is fetched again
    assert asked == [(0, "events", "t", 12, 13)] and fake.redelivered == {0: 1}
    whole = [rec("t", 0, o) for o in range(10, 14)]
    assert StreamWorker._in_order(fake, 0, whole, 10, "events") == whole  # type: ignore[arg-type]
