"""The supervisor's placement choice (pure part): the least loaded live node, not counting the
worker being placed; the real spread, node loss and node join are in
tests/integration/test_multinode.py."""

from ray_app.stream import StreamSupervisor
from tests.conftest import make_settings


def _supervisor(nodes_of_workers):
    sup = StreamSupervisor(make_settings(), "localhost:9092", workers=4)
    sup.workers = [object() for _ in nodes_of_workers]
    sup.worker_nodes = list(nodes_of_workers)
    return sup


def test_least_loaded_node_ignores_the_worker_being_placed_and_dead_nodes():
    sup = _supervisor(["a", "a", "b", "dead"])
    assert sup._least_loaded(3, nodes=["a", "b", "c"]) == "c"
    assert sup._least_loaded(3, nodes=["a", "b"]) == "b"  # 'dead' is not a live node
    assert sup._least_loaded(0, nodes=["a", "b"]) == "a"  # a: 1 other worker, b: 1 -> first
    assert sup._least_loaded(0, nodes=[]) is None
    # a dead worker's node is avoided (Ray may still list it as alive) unless it is the only one
    assert sup._least_loaded(2, nodes=["a", "b"], avoid="b") == "a"
    assert sup._least_loaded(2, nodes=["b"], avoid="b") == "b"


def test_placement_groups_workers_by_node():
    sup = _supervisor(["a", None, "a"])
    assert sup.placement() == {"a": [0, 2], "?": [1]}
