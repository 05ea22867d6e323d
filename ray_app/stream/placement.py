"""Where partitions and stream workers go: pure functions, no Ray.

* partition ``p`` -> worker ``p % workers`` (:func:`owner_index`, the one place the rule lives;
  the supervisor, the profile reader and the tests all ask it);
* a new worker goes to the live node running the fewest workers (:func:`least_loaded`);
* when the spread is uneven (a node runs 2 more workers than another), one worker moves from the
  busiest node to the idlest (:func:`next_move`), one at a time.

>>> assign_partitions(5, 2)
[[0, 2, 4], [1, 3]]
>>> least_loaded(["a", "b"], ["a", "a"], index=2)
'b'
>>> next_move(["a", "b"], ["a", "a", "a"])
(2, 'a', 'b')
"""

from __future__ import annotations

__all__ = ["assign_partitions", "least_loaded", "next_move", "owner_index", "usable"]


def owner_index(partition: int, workers: int) -> int:
    """The index of the worker that owns ``partition`` among ``workers`` workers."""
    return partition % workers


def assign_partitions(partitions: int, workers: int) -> list[list[int]]:
    """Worker index -> the partitions it owns (:func:`owner_index` for each)."""
    return [[p for p in range(partitions) if owner_index(p, workers) == w] for w in range(workers)]


def least_loaded(
    nodes: list[str], worker_nodes: list[str | None], index: int, avoid: str | None = None
) -> str | None:
    """The node among ``nodes`` running the fewest workers (``worker_nodes[i]``: the node of
    worker ``i``; worker ``index`` itself not counted), other than ``avoid`` (the node a dead
    worker ran on: the cluster may not know yet that it is gone) unless it is the only one."""
    nodes = [n for n in nodes if n != avoid] or nodes
    if not nodes:
        return None
    load = dict.fromkeys(nodes, 0)
    for i, node in enumerate(worker_nodes):
        if i != index and node in load:
            load[node] += 1
    return min(nodes, key=lambda n: load[n])


def next_move(nodes: list[str], worker_nodes: list[str | None]) -> tuple[int, str, str] | None:
    """(worker, from node, to node) of the next move that evens out the spread, or None when no
    node runs 2 more workers than another (or fewer than 2 nodes are usable)."""
    if len(nodes) < 2:
        return None
    load: dict[str, list[int]] = {n: [] for n in nodes}
    for i, node in enumerate(worker_nodes):
        if node in load:
            load[node].append(i)
    busiest = max(nodes, key=lambda n: len(load[n]))
    idlest = min(nodes, key=lambda n: len(load[n]))
    if len(load[busiest]) - len(load[idlest]) <= 1:
        return None
    return load[busiest][-1], busiest, idlest


def usable(
    nodes: list[str], suspects: dict[str, float], now: float, suspect_s: float = 60.0
) -> tuple[list[str], dict[str, float]]:
    """``nodes`` without those where a worker died in the last ``suspect_s`` seconds
    (``suspects``: node -> when), and the suspects still within that time."""
    kept = {n: t for n, t in suspects.items() if now - t < suspect_s}
    return [n for n in nodes if n not in kept], kept
