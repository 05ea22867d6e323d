import pytest

from ray_app.stream.checkpoint import CheckpointStore
from ray_app.stream.supervisor import assign_partitions


def test_local_checkpoints_replace_atomically(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(0, b"a" * 10, next_offset=5)
    store.save(0, b"b" * 20, next_offset=9)
    ck = store.load(0)
    assert (ck.next_offset, ck.snapshot) == (9, b"b" * 20)
    assert [p.name for p in tmp_path.iterdir()] == ["partition-0000.ckpt"]  # no temp files left


def test_fsspec_uri(tmp_path):
    store = CheckpointStore("memory://onramp-test/ckpt")
    store.save(7, b"state", next_offset=42)
    assert store.load(7).next_offset == 42 and store.load(8) is None
    assert CheckpointStore(f"file://{tmp_path}").load(0) is None


def test_a_foreign_file_is_a_clear_error(tmp_path):
    (tmp_path / "partition-0001.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not an Onramp checkpoint"):
        CheckpointStore(tmp_path).load(1)


@pytest.mark.parametrize(("partitions", "workers"), [(8, 2), (8, 3), (4, 4), (5, 1)])
def test_assignment_covers_every_partition_once(partitions, workers):
    parts = assign_partitions(partitions, workers)
    assert sorted(p for ps in parts for p in ps) == list(range(partitions))
    assert len(parts) == workers
