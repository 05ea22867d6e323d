"""The replay buffer's saved state: one JSON array, each entry encoded once in its life, and the
list form of states saved before it still read back."""

import tracemalloc

import orjson

from ray_app.learn.memory import JsonArray, ReplayBuffer


def _encode_counting(calls: list[str]):
    def encode(r: dict) -> dict:
        calls.append(r["id"])
        return r

    return encode


def test_state_round_trips_in_order_and_encodes_each_entry_once():
    buf: ReplayBuffer[dict] = ReplayBuffer(size=3)
    buf.add([{"id": "a"}, {"id": "b"}], credit=1.5)
    calls: list[str] = []
    encode = _encode_counting(calls)
    first = buf.state(encode)
    buf.add([{"id": "c"}, {"id": "d"}], credit=0.0)  # "a" falls out
    second = buf.state(encode)
    assert calls == ["a", "b", "c", "d"], "an entry already saved is not encoded again"
    assert orjson.loads(first["replay_json"]) == [{"id": "a"}, {"id": "b"}]
    assert orjson.loads(second["replay_json"]) == [{"id": "b"}, {"id": "c"}, {"id": "d"}]

    restored: ReplayBuffer[dict] = ReplayBuffer(size=3, seed=99)
    restored.load_state(second, dict)
    assert list(restored) == list(buf) and restored.credit == buf.credit
    assert restored.sample(2) == buf.sample(2), "the generator's state comes back too"


def test_a_rollback_or_clear_drops_the_cached_encodings_with_the_entries():
    buf: ReplayBuffer[dict] = ReplayBuffer(size=10)
    buf.add([{"id": "a"}], credit=0.0)
    buf.mark_good()
    buf.add([{"id": "b"}], credit=0.0)
    calls: list[str] = []
    buf.state(_encode_counting(calls))
    buf.drop_since_good()
    assert orjson.loads(buf.state(_encode_counting(calls))["replay_json"]) == [{"id": "a"}]
    assert calls == ["a", "b"]
    buf.clear()
    assert orjson.loads(buf.state(_encode_counting(calls))["replay_json"]) == []


def test_states_saved_as_a_list_before_replay_json_still_load():
    old = {"replay": [{"id": "a"}, {"id": "b"}], "replay_rng": None, "replay_credit": 2.0}
    buf: ReplayBuffer[dict] = ReplayBuffer(size=5)
    buf.load_state(old, dict)
    assert list(buf) == [{"id": "a"}, {"id": "b"}] and buf.credit == 2.0


def test_retain_keeps_the_accepted_entries_in_order_and_owes_nothing():
    buf: ReplayBuffer[dict] = ReplayBuffer(size=10)
    buf.add([{"t": 1}, {"t": 2}], credit=3.0)
    buf.mark_good()
    buf.add([{"t": 3}, {"t": 4}], credit=2.0)
    assert buf.retain(lambda r: r["t"] % 2 == 0) == 2
    assert list(buf) == [{"t": 2}, {"t": 4}] and buf.credit == 0.0
    buf.drop_since_good()  # {"t": 4} was added since the last good weights, {"t": 2} before
    assert list(buf) == [{"t": 2}]
    buf.add([{"t": 5}], credit=1.0)
    buf.clear()
    assert list(buf) == [] and buf.credit == 0.0, "nothing is owed to entries that are gone"


def test_retain_sees_entries_through_peek_not_unpack():
    unpacked: list[int] = []

    def unpack(e: tuple[int, str]) -> dict:
        unpacked.append(e[0])
        return {"t": e[0], "heavy": e[1]}

    buf: ReplayBuffer[dict] = ReplayBuffer(
        size=10, pack=lambda r: (r["t"], r["heavy"]), unpack=unpack, peek=lambda e: {"t": e[0]}
    )
    buf.add([{"t": t, "heavy": "x" * 10} for t in range(5)], credit=0.0)
    assert buf.retain(lambda r: r["t"] >= 3) == 2 and unpacked == []
    assert [r["t"] for r in buf] == [3, 4]


def test_cached_encodings_take_about_their_own_size():
    """orjson's bytes keep its whole output buffer (16 KB for a few hundred bytes of JSON):
    the cache keeps a copy, or 20,000 cached rewards would take hundreds of MB."""
    entries = [{"n": i, "values": list(range(60))} for i in range(500)]
    arr = JsonArray[dict]()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = arr.dump(entries, dict)
        held = tracemalloc.get_traced_memory()[0] - before - len(out)
    finally:
        tracemalloc.stop()
    assert held / len(entries) < 2 * len(out) / len(entries) + 200, held / len(entries)
