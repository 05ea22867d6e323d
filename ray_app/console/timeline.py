"""Completion rate per arm over time: the plot ``make demo`` draws, kept live for the console.

Counted rewards (see :class:`~ray_app.console.cohorts.Cohorts`) go into fixed buckets of their
decision time; :meth:`Timeline.series` merges neighbouring buckets so that a chart gets at most
``points`` points whatever the span. Bounded: the oldest buckets go past ``keep``.

>>> t = Timeline(bucket_ms=10_000)
>>> for ms, arm, r in [(1_000, "control", 1.0), (2_000, "control", 0.0), (15_000, "treatment", 1.0)]:
...     t.add(arm, ms, r)
>>> t.series(points=10)["arms"]["control"]
[[0, 2, 1]]
>>> t.series(points=1)["arms"]["treatment"]
[[0, 1, 1]]
"""

from __future__ import annotations

from typing import Any

__all__ = ["ModelVersions", "Timeline"]


class Timeline:
    """Rewards per arm per bucket of decision time: ``[decided, positives]``."""

    def __init__(self, bucket_ms: int = 10_000, keep: int = 8_640) -> None:
        self.bucket_ms = bucket_ms
        self.keep = keep
        self._buckets: dict[int, dict[str, list[int]]] = {}

    def add(self, arm: str, decided_ms: int, reward: float) -> None:
        b = decided_ms // self.bucket_ms
        counts = self._buckets.get(b)
        if counts is None:
            counts = self._buckets[b] = {}
            if len(self._buckets) > self.keep:
                del self._buckets[min(self._buckets)]
        n = counts.setdefault(arm, [0, 0])
        n[0] += 1
        n[1] += reward > 0

    def series(self, points: int = 120) -> dict[str, Any]:
        """``{"bucketMs": width, "arms": {arm: [[start_ms, decided, positives], ...]}}`` with at
        most ``points`` buckets per arm, oldest first."""
        if not self._buckets:
            return {"bucketMs": self.bucket_ms, "arms": {}}
        first, last = min(self._buckets), max(self._buckets)
        per = max(1, -(-(last - first + 1) // points))  # source buckets per point
        width = per * self.bucket_ms
        merged: dict[str, dict[int, list[int]]] = {}
        for b, counts in self._buckets.items():
            start = (b - first) // per * width + first * self.bucket_ms
            for arm, (n, k) in counts.items():
                cell = merged.setdefault(arm, {}).setdefault(start, [0, 0])
                cell[0] += n
                cell[1] += k
        return {
            "bucketMs": width,
            "arms": {
                arm: [[t, n, k] for t, (n, k) in sorted(cells.items())]
                for arm, cells in sorted(merged.items())
            },
        }


class ModelVersions:
    """When each model version first served a decision, per arm, and how many it served
    (bounded to the latest ``keep`` versions)."""

    def __init__(self, keep: int = 200) -> None:
        self.keep = keep
        self._seen: dict[tuple[str, int], list[int]] = {}  # (arm, version) -> [first ms, n]

    def add(self, arm: str, version: int, ms: int) -> None:
        cell = self._seen.get((arm, version))
        if cell is None:
            self._seen[(arm, version)] = [ms, 1]
            if len(self._seen) > self.keep:
                del self._seen[min(self._seen, key=lambda k: self._seen[k][0])]
        else:
            cell[0] = min(cell[0], ms)
            cell[1] += 1

    def as_list(self) -> list[dict[str, Any]]:
        return [
            {"arm": arm, "version": v, "firstDecisionMs": ms, "decisions": n}
            for (arm, v), (ms, n) in sorted(self._seen.items(), key=lambda kv: kv[1][0])
        ]
