"""The replay buffer's saved state: one JSON array, each entry encoded once in its life, and the
list form of states saved before it still read back."""

import orjson

from ray_app.learn.memory import ReplayBuffer


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
