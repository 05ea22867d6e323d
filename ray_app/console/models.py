"""Model versions as the console tells them: when each was published, promoted or rolled back,
and why, read from what Onramp already writes (no new record): the model files the decision
replicas watch (the online learner's publishes; a bundle's metadata says whether it was a
rollback, and why) and the model registry (its versions and its promotion history).

>>> why({"kind": "online", "new_rewards": 40, "new_updates": 3, "epsilon": 0.1})
('published', 'online learner: 40 new rewards, 3 updates; exploration 0.1')
>>> why({"kind": "online", "rollback": "below_control", "rolled_back_to": "cold_start",
...      "control": {"z": -4.2}})
('rolled back', 'treatment below the static flow (z = -4.20): back to cold_start')
>>> why({"kind": "cold_start"})
('published', 'cold start (no training yet)')
>>> why({"kind": "online", "restarted": "foreign_weights", "new_rewards": 64})[1]
'the weights it started from were learned elsewhere: back to the cold start, relearning'
>>> why({"kind": "online", "restarted": "drift"})
('restarted', 'drift detected: back to the cold start, relearning')
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ModelHistory", "why"]

log = logging.getLogger(__name__)


#: Why a learner went back to the cold start (a publish's ``restarted``), as the console says it.
_RESTARTS = {
    "foreign_weights": "the weights it started from were learned elsewhere",
    "drift": "drift detected",
}


def why(meta: Mapping[str, Any]) -> tuple[str, str]:
    """(action, reason) of a served bundle from its metadata."""
    rollback = meta.get("rollback")
    target = meta.get("rolled_back_to")
    if rollback == "below_control":
        z = (meta.get("control") or {}).get("z")
        zs = f" (z = {z:.2f})" if isinstance(z, int | float) else ""
        return "rolled back", f"treatment below the static flow{zs}: back to {target}"
    if rollback == "loss":
        return (
            "rolled back",
            f"loss guardrail breached: back to {target or 'the last good weights'}",
        )
    if rollback:
        return "rolled back", str(rollback)
    restarted = _RESTARTS.get(str(meta.get("restarted")))
    if restarted:
        return "restarted", f"{restarted}: back to the cold start, relearning"
    kind = meta.get("kind")
    if kind == "online":
        eps = meta.get("epsilon")
        return "published", (
            f"online learner: {meta.get('new_rewards', 0)} new rewards, "
            f"{meta.get('new_updates', 0)} updates"
            + (f"; exploration {eps:g}" if isinstance(eps, int | float) else "")
        )
    if kind == "cold_start":
        return "published", "cold start (no training yet)"
    reg = meta.get("registry")
    if isinstance(reg, Mapping):
        return "published", f"trained ({reg.get('source')}) {reg.get('note') or ''}".strip()
    return "published", str(kind or "model file")


class ModelHistory:
    """Watches the served model files and the registry; keeps the latest ``keep`` events."""

    def __init__(self, paths: Mapping[str, Path | None], registry: Any, keep: int = 200) -> None:
        self.paths = {arm: p for arm, p in paths.items() if p is not None}
        self.registry = registry
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)
        self._stamps: dict[str, tuple[int, int]] = {}
        self._served: dict[str, tuple[int, int]] = {}  # arm -> (promotion, version)
        self._versions: set[int] = set()
        self._promotions = 0

    def poll(self) -> bool:
        """Look for changes; True when there was a new event."""
        before = len(self.events), self._promotions
        for arm, path in self.paths.items():
            self._file(arm, path)
        if self.registry is not None:
            try:
                self._registry()
            except Exception as exc:  # an unreachable registry must not stop the console
                log.debug("registry unreadable: %s", exc)
        return (len(self.events), self._promotions) != before

    def _file(self, arm: str, path: Path) -> None:
        from ray_app.model.registry import read_header

        try:
            st = path.stat()
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if self._stamps.get(arm) == stamp:
            return
        self._stamps[arm] = stamp
        try:
            head = read_header(path.read_bytes())
        except OSError:
            return
        if not head:
            return
        found = head.get("metadata")
        meta: dict[str, Any] = found if isinstance(found, dict) else {}
        version = int(head.get("version") or 0)
        promotion = meta.get("promotion", 0) if isinstance(meta.get("promotion"), int) else 0
        if self._served.get(arm) == (promotion, version):
            return
        previous = self._served.get(arm)
        self._served[arm] = (promotion, version)
        action, reason = why(meta)
        if previous is not None and promotion > previous[0]:
            action, reason = "promoted", f"registry promotion {promotion}"
        self._add(
            {
                "at": float(head.get("created_at") or st.st_mtime),
                "arm": arm,
                "version": version,
                "action": action,
                "why": reason,
                "source": "served file",
            }
        )

    def _registry(self) -> None:
        for v in self.registry.versions():
            if v in self._versions:
                continue
            self._versions.add(v)
            meta = self.registry.get(v)
            note = f": {meta.note}" if meta.note else ""
            self._add(
                {
                    "at": meta.created_at,
                    "arm": None,
                    "version": v,
                    "action": "registered",
                    "why": f"{meta.source} model (parent {meta.parent}){note}",
                    "source": "registry",
                }
            )
        history = self.registry.history()
        for p in history[self._promotions :]:
            self._add(
                {
                    "at": p.at,
                    "arm": "treatment",
                    "version": p.version,
                    "action": "promoted" if p.action == "promote" else "rolled back",
                    "why": f"registry {p.action} (promotion {p.epoch})",
                    "source": "registry",
                }
            )
        self._promotions = len(history)

    def _add(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def as_list(self) -> list[dict[str, Any]]:
        """Events, newest first."""
        return sorted(self.events, key=lambda e: e["at"], reverse=True)
