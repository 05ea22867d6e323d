"""Checkpoints: atomic, signed (HMAC-SHA256 under a key kept apart from the store), and loaded
with an allowlist of the state's classes, so whoever can write the checkpoint location cannot run
code in the workers."""

import os
import pickle
import stat

import pytest
from pydantic import SecretStr

from ray_app.config import StreamSettings, load_settings
from ray_app.errors import ConfigError
from ray_app.state import SessionShard
from ray_app.state.shard import SNAPSHOT_VERSION, SnapshotRefused
from ray_app.stream.checkpoint import CheckpointRefused, CheckpointStore, checkpoint_key
from ray_app.stream.supervisor import assign_partitions
from ray_app.stream.worker import _restore

KEY = b"test-checkpoint-key-0123456789ab"
OTHER_KEY = b"another-checkpoint-key-987654321"


def test_local_checkpoints_replace_atomically(tmp_path):
    store = CheckpointStore(tmp_path, KEY)
    store.save(0, b"a" * 10, next_offset=5)
    store.save(0, b"b" * 20, next_offset=9)
    ck = store.load(0)
    assert (ck.next_offset, ck.snapshot) == (9, b"b" * 20)
    assert [p.name for p in tmp_path.iterdir()] == ["partition-0000.ckpt"]  # no temp files left


def test_fsspec_uri(tmp_path):
    store = CheckpointStore("memory://onramp-test/ckpt", KEY)
    store.save(7, b"state", next_offset=42)
    assert store.load(7).next_offset == 42 and store.load(8) is None
    assert CheckpointStore(f"file://{tmp_path}", KEY).load(0) is None


def test_a_foreign_file_is_a_clear_error(tmp_path):
    (tmp_path / "partition-0001.ckpt").write_bytes(b"garbage")
    with pytest.raises(CheckpointRefused, match="not an Onramp checkpoint") as info:
        CheckpointStore(tmp_path, KEY).load(1)
    assert info.value.context["partition"] == 1
    assert info.value.context["file"].endswith("partition-0001.ckpt")


@pytest.mark.parametrize("where", ["base", "delta"])
def test_a_tampered_blob_is_refused(tmp_path, where):
    store = CheckpointStore(tmp_path, KEY)
    store.save(2, b"state-of-two", next_offset=10)
    store.save_delta(2, b"delta-one", next_offset=12)
    name = "partition-0002.ckpt" if where == "base" else "partition-0002.d00000001"
    data = bytearray((tmp_path / name).read_bytes())
    data[-1] ^= 0x01  # one bit of the payload
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointRefused, match="signature does not verify") as info:
        CheckpointStore(tmp_path, KEY).load(2)
    assert info.value.context["reason"] == "signature"
    assert info.value.context["file"].endswith(name)


def test_a_checkpoint_signed_with_another_key_is_refused(tmp_path):
    CheckpointStore(tmp_path, OTHER_KEY).save(0, b"state", next_offset=3)
    with pytest.raises(CheckpointRefused, match=r"partition 0: .*another key"):
        CheckpointStore(tmp_path, KEY).load(0)
    assert CheckpointStore(tmp_path, OTHER_KEY).load(0).snapshot == b"state"


def test_a_checkpoint_copied_to_another_partition_is_refused(tmp_path):
    store = CheckpointStore(tmp_path, KEY)
    store.save(1, b"state-of-one", next_offset=3)
    (tmp_path / "partition-0000.ckpt").write_bytes((tmp_path / "partition-0001.ckpt").read_bytes())
    with pytest.raises(CheckpointRefused, match="signature"):
        store.load(0)


def test_a_checkpoint_written_under_another_partition_count_is_refused(tmp_path):
    """The topic grown from 8 to 12 partitions (and kafka.partitions set to match, as the
    start-up check asks): a user's key now hashes to another partition than the one whose
    checkpoint holds their state. Those checkpoints loaded without a word, and moved users
    started afresh with their old state stranded until its TTL."""
    store = CheckpointStore(tmp_path, KEY, partitions=8)
    store.save(3, b"state-of-three", next_offset=10)
    store.save_delta(3, b"delta", next_offset=12)
    with pytest.raises(CheckpointRefused, match="hashed over 8 partitions") as info:
        CheckpointStore(tmp_path, KEY, partitions=12).load(3)
    assert info.value.context["reason"] == "partitions"
    assert CheckpointStore(tmp_path, KEY, partitions=8).load(3).next_offset == 12
    # written before the count was recorded, or read by a store that does not know it: taken
    assert CheckpointStore(tmp_path, KEY).load(3) is not None


def test_an_old_unsigned_checkpoint_is_refused_with_an_explanation(tmp_path):
    import json

    shard = SessionShard(0)
    payload = pickle.dumps((5, "base", {k: v for k, v in shard.__dict__.items() if k[0] != "_"}))
    header = json.dumps({"partition": 0, "nextOffset": 7, "baseId": "x"}).encode()
    (tmp_path / "partition-0000.ckpt").write_bytes(
        b"ONRAMPCK1\n" + len(header).to_bytes(4, "big") + header + payload
    )
    with pytest.raises(CheckpointRefused, match="unsigned by an older Onramp") as info:
        CheckpointStore(tmp_path, KEY).load(0)
    assert info.value.context["reason"] == "unsigned"


class _Exploit:
    """A pickle that runs a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_signed_pickle_that_would_run_os_system_is_refused_without_running_it(tmp_path):
    """Someone holding the key (or a bug) signs a malicious pickle: the allowlist still refuses
    it, before os.system is even looked up."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps((SNAPSHOT_VERSION, "base", {"x": _Exploit(marker)}))
    with pytest.raises(SnapshotRefused, match=r"(posix|os|nt)\.system"):
        SessionShard.restore(evil)
    store = CheckpointStore(tmp_path / "ckpt", KEY)
    store.save(0, evil, next_offset=1)
    with pytest.raises(CheckpointRefused, match=r"partition-0000\.ckpt.*not a class of the stream"):
        _restore(store.load(0), store.uri)
    # in a delta too, named by its file
    good = SessionShard(0)
    store.save(0, good.snapshot(), next_offset=1)
    store.save_delta(0, pickle.dumps(("x", eval)), next_offset=2)  # builtins.eval
    with pytest.raises(CheckpointRefused, match=r"partition-0000\.d00000001.*builtins\.eval"):
        _restore(store.load(0), store.uri)
    assert not marker.exists()
    # ... and plain pickle would have run it: the test can fail
    pickle.loads(evil)
    assert marker.exists()


def test_a_real_state_round_trips_through_the_signed_store(tmp_path):
    from tests.unit.test_state import record

    shard = SessionShard(0)
    shard.process([record("a"), record("b", kind="identify", traits={"plan": "pro"})])
    store = CheckpointStore(tmp_path, KEY)
    store.save(0, shard.snapshot(), next_offset=2)
    shard.process([record("c", name="Step Completed")])
    store.save_delta(0, shard.snapshot_delta(), next_offset=3)
    restored = _restore(store.load(0), store.uri)
    assert restored.profiles_as_dicts() == shard.profiles_as_dicts()


def test_the_key_comes_from_the_settings_or_a_private_key_file(tmp_path):
    env = {"ONRAMP_STREAM__CHECKPOINT_KEY": "a-secret-from-the-environment"}
    s = load_settings(env=env).stream
    assert checkpoint_key(s) == b"a-secret-from-the-environment"
    assert "a-secret" not in repr(s)  # SecretStr: masked
    with pytest.raises(ConfigError, match="at least 16"):
        checkpoint_key(StreamSettings(checkpoint_key=SecretStr("short")))
    path = tmp_path / "keys" / "checkpoint.key"
    s = StreamSettings(checkpoint_key_file=path)
    first = checkpoint_key(s, str(tmp_path / "ckpt"))
    assert len(first) == 32 and path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert checkpoint_key(s, str(tmp_path / "ckpt")) == first  # created once, then reused
    with pytest.raises(ConfigError, match="inside the checkpoint store"):
        checkpoint_key(
            StreamSettings(checkpoint_key_file=tmp_path / "ckpt" / "k"), str(tmp_path / "ckpt")
        )


@pytest.mark.parametrize(("partitions", "workers"), [(8, 2), (8, 3), (4, 4), (5, 1)])
def test_assignment_covers_every_partition_once(partitions, workers):
    parts = assign_partitions(partitions, workers)
    assert sorted(p for ps in parts for p in ps) == list(range(partitions))
    assert len(parts) == workers


def test_temporary_files_left_by_killed_writes_are_removed_when_old(tmp_path):
    """A worker killed between writing a checkpoint's temporary file and renaming it left the
    file (up to a whole base snapshot) for good; one being written now is left alone."""
    old = tmp_path / ".tmp-killed"
    old.write_bytes(b"x" * 100)
    os.utime(old, (1e9, 1e9))
    fresh = tmp_path / ".tmp-in-progress"
    fresh.write_bytes(b"y")
    CheckpointStore(tmp_path, KEY)
    assert not old.exists() and fresh.exists()
