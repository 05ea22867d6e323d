"""Exactly-once state under chaos: 100k+ events, workers killed 5 times and rescaled once,
against the real broker and real Ray actors. Every simulated user opens the sign-up page
anonymously and then identifies, so about 5,000 identity merges cross partitions meanwhile."""

import datetime as dt
import json
import random
import time
from collections import Counter

import pytest

from ray_app.config import SimSettings
from ray_app.kafka import OutRecord, ensure_topics, make_consumer, make_producer
from ray_app.kafka.client import partition_for
from ray_app.sim import TrafficPlan
from ray_app.state import SessionShard
from ray_app.stream import StreamSupervisor, state_config
from tests.conftest import make_settings
from validation.batch import BatchValidator

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4


def _records(users: int, seed: int):
    """Simulator traffic (5% duplicates, 10% out of order) normalized by the collector's parser,
    plus malformed records, events that fail batch validation and late events injected the way
    a broken producer would."""
    plan = TrafficPlan.build(
        SimSettings(
            users=users,
            seed=seed,
            duplicate_share=0.05,
            out_of_order_share=0.10,
            malformed_share=0.0,
        )
    )
    out = plan.normalized(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    rng = random.Random(seed)
    injected_malformed = injected_late = 0
    injected_invalid = 0
    for n in range(200):  # decodable, but failing batch validation (pandera): unknown step ids
        key, value = rng.choice(out)
        d = json.loads(value)
        d["messageId"], d["stepId"] = f"invalid-{n}", "no_such_step"
        out.insert(rng.randrange(len(out)), (key, json.dumps(d).encode()))
        injected_invalid += 1
    for _ in range(300):  # malformed records straight into the topic
        garbage = rng.choice(
            [
                b"not json",
                b"[1,2]",
                b'{"type":"track","userKey":"x"}',
                b'{"messageId":"m","type":"track","userKey":"x","timestamp":"nope","receivedAt":"nope"}',
            ]
        )
        out.insert(rng.randrange(len(out)), (b"x", garbage))
        injected_malformed += 1
    early = out[: len(out) // 10]
    for n in range(300):  # old events resent much later with new ids: behind the watermark
        key, value = rng.choice(early)
        d = json.loads(value)
        if "messageId" not in d or d.get("stepId") == "no_such_step":
            continue
        d["messageId"] = f"late-{n}"
        out.insert(rng.randrange(len(out) * 8 // 10, len(out)), (key, json.dumps(d).encode()))
        injected_late += 1
    return plan, out, injected_malformed + injected_invalid, injected_late


def _first_forwards_late(recs: list[tuple[int, bytes, bytes]], late: set[int]) -> int:
    """How many forwarded events were late on their first arrival in this partition (in
    offset order; a later copy of the same forward is a replay's)."""
    seen: set[str] = set()
    n = 0
    for index, (_, _, value) in enumerate(recs):
        if b'"type":"onramp.forward"' not in value:
            continue
        mid = json.loads(value)["messageId"]
        if mid not in seen:
            seen.add(mid)
            n += index in late
    return n


def _stall_report(
    sup: StreamSupervisor,
    broker_bootstrap: str,
    settings,
    topic: str,
    delivered: list[tuple[int, int]],
) -> str:
    """Where the records stand when the workers fall short: per worker, each partition's next
    offset, measured lag and record count, the checkpoint it was restored from and any error;
    then what a fresh consumer reads from each partition's next offset on (records there that
    the worker has not taken: a worker that does not ask, if the fresh consumer gets them; a
    broker that does not answer at that offset, if it gets none though the topic has more);
    and whether every offset the broker acknowledged to the test's producer (``delivered``) is
    unique and served from 0 (if not, the broker lost records it had acknowledged)."""
    lines = [f"restarts {sup.restarts}, generation {sup.generation}"]
    try:
        statuses = sup.status()
    except Exception as exc:
        return "\n".join([*lines, f"status failed: {exc!r}"])
    next_offsets: dict[int, int] = {}
    for st in statuses:
        lines.append(
            f"worker {st['worker']}: error={st['error']!r} refused={st['refused']} "
            f"waitingOnKafkaS={st['waitingOnKafkaS']} "
            f"restoredFrom={st['restoredFrom']} checkpoints={st['checkpoints']}"
        )
        for p, part in sorted(st["partitions"].items()):
            next_offsets[int(p)] = part["nextOffset"]
            lines.append(
                f"  partition {p}: nextOffset={part['nextOffset']} lag={part['lag']} "
                f"records={part['records']} buffered={part['buffered']} "
                f"redelivered={part['redelivered']} offsetGaps={part['offsetGaps']} "
                f"fetchedAgain={part['fetchedAgain']}"
            )
    for label, start in (("from the next offsets", next_offsets), ("from 0", None)):
        consumer = make_consumer(broker_bootstrap, settings.kafka)
        try:
            if start is None:
                consumer.assign([(topic, p) for p in range(PARTITIONS)])
            else:
                consumer.assign_at({(topic, p): o for p, o in start.items()})
            got: dict[int, list[int]] = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for r in consumer.poll(0.5, 10_000):
                    got.setdefault(r.partition, []).append(r.offset)
            seen: object = {
                p: (len(o), min(o), max(o), consumer.highwater(topic, p))
                for p, o in sorted(got.items())
            }
            if start is None:
                served = {(p, o) for p, offsets in got.items() for o in offsets}
                acked = set(delivered)
                lines.append(
                    f"acknowledged to the producer: {len(delivered)} records, "
                    f"{len(delivered) - len(acked)} offsets acknowledged twice, "
                    f"{len(acked - served)} not served from 0, by partition "
                    f"{dict(sorted(Counter(p for p, _ in acked - served).items()))}"
                )
        except Exception as exc:  # the report must not hide the failure it explains
            seen = repr(exc)
        finally:
            consumer.close()
        lines.append(f"a fresh consumer {label}: partition -> (records, first, last, end) {seen}")
    return "\n".join(lines)


def test_chaos_kills_and_rescale_keep_state_exact(broker, ray_session, tmp_path):
    import ray

    settings = make_settings(
        broker.bootstrap,
        ONRAMP_KAFKA__TOPIC_PREFIX="chaos",
        ONRAMP_KAFKA__PARTITIONS=str(PARTITIONS),
        ONRAMP_STREAM__CHECKPOINT_EVERY_RECORDS="3000",
        ONRAMP_STREAM__CHECKPOINT_INTERVAL_S="0.3",
        ONRAMP_STREAM__POLL_MAX_RECORDS="1000",
    )
    ensure_topics(broker.bootstrap, settings.kafka)
    plan, records, injected_rejects, injected_late = _records(users=5000, seed=21)
    produced = len(records)
    assert produced >= 100_000
    topic = settings.topics.events
    producer = make_producer(
        broker.bootstrap, settings.kafka.model_copy(update={"client": "confluent"})
    )

    sup = StreamSupervisor(
        settings, broker.bootstrap, workers=2, checkpoint_uri=str(tmp_path / "ckpt")
    ).start()
    rng = random.Random(7)
    kills = 0
    delivered: list[tuple[int, int]] = []  # (partition, offset) the broker acknowledged

    def kill_one():
        before = sup.restarts
        ray.kill(sup.workers[rng.randrange(sup.n_workers)])
        deadline = time.monotonic() + 60
        while sup.restarts == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sup.restarts == before + 1, "the supervisor did not restart the killed worker"

    try:
        size = produced // 6 + 1
        waves = [records[i : i + size] for i in range(0, produced, size)]
        for n, wave in enumerate(waves):
            acked = producer.send_all([OutRecord(topic, v, key=k) for k, v in wave])
            delivered += [(d.partition, d.offset) for d in acked.result(timeout=120)]
            time.sleep(rng.uniform(0.2, 0.8))  # let the workers get into the wave, then strike
            if n == 3:
                sup.rescale(3)
            else:
                kill_one()
                kills += 1
        # as long as the records taken keep growing: on a loaded machine (the whole suite on 2
        # cores) the five restarts take 20-25 s each and the drain runs at a fraction of its
        # speed, which is slow, not wrong. A stall is longer without a record taken than a
        # worker's own way out: it waits up to 60 s on Kafka's acknowledgements, then fails
        # and is restarted (an unplanned restart fails the restart count below)
        totals = sup.wait_for(produced, timeout_s=600, stall_s=150)
        if totals.get("records") != produced:
            report = _stall_report(sup, broker.bootstrap, settings, topic, delivered)
            pytest.fail(f"{produced} records produced, totals {totals}\n{report}")
        assert kills == 5 and sup.generation == 1
        assert sup.restarts == 5, "a worker failed on its own (its error is in the log above)"

        # reconciliation: every record is exactly one thing; a forwarded event (an anonymous
        # id's event taken after its merge) is taken again in the survivor's partition
        assert (
            produced
            == totals["applied"]
            + totals["duplicates"]
            + totals["late"]
            + totals["rejected"]
            + totals["buffered"]
            + totals["forwarded"]
            - totals["relayed"]
        )
        assert totals["rejected"] == injected_rejects
        replayed = totals["relayed"] - totals["forwarded"]
        assert replayed >= 0
        merges = sum(
            part["identity"]["merged"] for st in sup.status() for part in st["partitions"].values()
        )
        assert merges == len({k for k, v in records if b'"identify"' in v and b"anonymousId" in v})

        # exact equality with one in-process ordered pass over each partition
        live = sup.profiles()
    finally:
        sup.stop()
        producer.close()
        del producer
    consumer = make_consumer(broker.bootstrap, settings.kafka)
    consumer.assign([(topic, p) for p in range(PARTITIONS)])
    by_partition = {p: [] for p in range(PARTITIONS)}
    seen = 0
    in_topic = produced + totals["control"] + totals["relayed"]  # + link, merge, forward
    deadline = time.monotonic() + 120
    while seen < in_topic and time.monotonic() < deadline:
        for r in consumer.poll(0.2, 10_000):
            by_partition[r.partition].append((r.offset, r.key, r.value))
            seen += 1
    consumer.close()
    assert seen == in_topic
    reference = {}
    counted: dict[str, int] = {}
    late_forwards = 0
    cfg = state_config(settings)  # the workers' state settings and validation
    for p, recs in by_partition.items():
        recs.sort()
        assert all(partition_for(k, PARTITIONS) == p for _, k, _ in recs)
        shard = SessionShard(p, cfg, BatchValidator.for_state(cfg))
        result = shard.process([(k, v) for _, k, v in recs])
        reference.update(shard.profiles_as_dicts())
        for name, n in shard.stats.as_dict().items():
            counted[name] = counted.get(name, 0) + n
        late_forwards += _first_forwards_late(recs, {i for i, *_ in result.late})
    counted["records"] -= counted["control"] + counted["relayed"]  # as the supervisor sums
    # the counters were checkpointed with the state: a replay counted nothing twice
    assert {k: totals[k] for k in counted} == counted
    # a forward record a replay wrote again is dropped once more, as a duplicate (or as late);
    # a forwarded event is late where its survivor's partition had run ahead of the partition
    # that forwarded it by more than the allowed lateness (a worker restart, a slow wave)
    assert (
        totals["late"] + totals["duplicates"]
        == injected_late + plan.count("duplicate") + replayed + late_forwards
    )
    assert len(live) == len(reference) > 4000
    assert live == reference
    merged = [p for p in live.values() if p["mergedFrom"]]
    assert len(merged) == merges, "every merge is in exactly one live profile"

    # every rejected record is in the DLQ with its reason (at least once: replays may resend)
    consumer = make_consumer(broker.bootstrap, settings.kafka)
    consumer.assign([(settings.topics.dlq, p) for p in range(PARTITIONS)])
    reasons: dict[str, set[str]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        batch = consumer.poll(0.5, 10_000)
        for r in batch:
            d = json.loads(r.value)
            try:
                mid = json.loads(d["rawText"]).get("messageId", "?")
            except (ValueError, AttributeError):
                mid = "?"
            reasons.setdefault(d["reason"], set()).add(mid)
        if not batch and "unknown_step" in reasons:
            break
    consumer.close()
    assert {m for m in reasons.get("unknown_step", ()) if m.startswith("invalid-")} == {
        f"invalid-{n}" for n in range(200)
    }
    assert {"invalid_json", "not_an_object", "missing_field", "invalid_timestamp"} <= set(reasons)
