"""The replay buffer's saved state: one JSON array, each entry encoded once in its life, and the
list form of states saved before it still read back; the packed form a learner trains from."""

import tracemalloc

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ray_app.learn.memory import (
    JsonArray,
    ReplayBuffer,
    pack_reward,
    packed_features,
    peek_reward,
    unpack_reward,
)
from ray_app.records import RewardRecord


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


_value = st.one_of(
    st.just(0.0),
    st.just(-0.0),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([1.0, 0.1, 1e-45, 3.4e38, -2.5]),
)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@given(st.integers(0, 40).flatmap(lambda d: st.lists(st.lists(_value, min_size=d, max_size=d))))
def test_packed_rewards_give_the_matrix_of_their_dense_features(rows):
    """What a learner steps on from its replay buffer is the matrix ``np.array`` makes of the
    dense lists, value for value (float64 rounded to float32 alike, a float64 beyond float32's
    range to inf on both sides, with numpy's overflow warning)."""
    dim = len(rows[0]) if rows else 3
    records = [
        RewardRecord(f"d{i}", "u", "s", "a", 0, "treatment", 0.5, f, 1.0, "completed", 0, 1, 0)
        for i, f in enumerate(rows)
    ]
    entries = [pack_reward(r) for r in records]
    x = packed_features(entries, dim)
    want = np.array([r.features for r in records], dtype=np.float32).reshape(len(rows), dim)
    assert x.dtype == np.float32 and x.shape == want.shape
    assert np.array_equal(x, want)
    assert [unpack_reward(e) for e in entries] == records
    assert [peek_reward(e).decision_id for e in entries] == [r.decision_id for r in records]


def test_sample_and_owed_batches_give_the_entries_as_held():
    buf: ReplayBuffer[dict] = ReplayBuffer(
        size=10, pack=lambda r: ("held", r["n"]), unpack=lambda e: {"n": e[1]}
    )
    buf.add([{"n": n} for n in range(5)], credit=2.0)
    assert sorted(buf.sample(5)) == [("held", n) for n in range(5)]
    batches = list(buf.owed_batches(batch_size=2, max_credit=2.0))
    assert len(batches) == 2 and all(e[0] == "held" for b in batches for e in b)
    assert list(buf) == [{"n": n} for n in range(5)]


def test_a_packed_reward_of_another_width_is_refused_not_padded():
    r = RewardRecord(
        "d1", "u", "s", "a", 0, "treatment", 0.5, [1.0, 2.0], 1.0, "completed", 0, 1, 0
    )
    with pytest.raises(ValueError, match="2 features, the model 3"):
        packed_features([pack_reward(r)], 3)
