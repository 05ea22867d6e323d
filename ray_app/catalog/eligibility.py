"""Who may get which action: the steps a user completed, its segments and each action's rules.

An action is ineligible when the step of its ``unless_done`` is completed, when a step it
``requires`` is not, or when the user is in none of its ``segments``; :func:`eligible_actions`
applies these rules to a slot, either to every action or to the request's ``candidates``.

>>> completed_steps({"steps": {"welcome": {"completions": 1}, "role": {"completions": 0}}})
frozenset({'welcome'})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ray_app.catalog.errors import IneligibleCandidates, UnknownAction

if TYPE_CHECKING:
    from ray_app.catalog.model import Action, Slot

__all__ = ["completed_steps", "eligible_actions", "user_segments", "why_ineligible"]


def completed_steps(profile: Mapping[str, Any] | None) -> frozenset[str]:
    """The steps a profile has completed (its ``stepsCompleted``, else derived from ``steps``)."""
    if not isinstance(profile, Mapping):
        return frozenset()
    done = profile.get("stepsCompleted")
    if isinstance(done, list | tuple | set | frozenset):
        return frozenset(s for s in done if isinstance(s, str))
    steps = profile.get("steps")
    if done is None and isinstance(steps, Mapping):  # a profile without the derived list
        return frozenset(
            k
            for k, v in steps.items()
            if isinstance(v, Mapping)
            and isinstance(v.get("completions"), int | float)
            and v["completions"] > 0
        )
    return frozenset()


def user_segments(
    profile: Mapping[str, Any] | None, enrichment: Mapping[str, Any] | None
) -> set[str]:
    """The audience names of a user: the ``segment`` and ``plan`` of its traits and CRM row.

    >>> sorted(user_segments({"traits": {"segment": "developer"}}, {"plan": "free"}))
    ['developer', 'free']
    """
    out: set[str] = set()
    traits = profile.get("traits") if isinstance(profile, Mapping) else None
    for src in (traits, enrichment):
        if isinstance(src, Mapping):
            for key in ("segment", "plan"):
                v = src.get(key)
                if isinstance(v, str) and v:
                    out.add(v)
    return out


def why_ineligible(
    action: Action, completed: frozenset[str] | set[str], segments: set[str]
) -> str | None:
    """Why ``action`` cannot be shown to a user (``None``: it can)."""
    if action.unless_done is not None and action.unless_done in completed:
        if action.unless_done == action.id:
            return "already completed"
        return f"{action.unless_done} already completed"
    if action.requires:
        missing = [r for r in action.requires if r not in completed]
        if missing:
            return f"requires {', '.join(missing)}"
    if action.segments is not None and segments.isdisjoint(action.segments):
        # not the user's own segments: the answer goes to whoever holds the public decide key,
        # and they come from traits and the CRM table (a plan, a churn score)
        return f"only for segments {', '.join(action.segments)}"
    return None


def eligible_actions(
    slot: Slot,
    profile: Mapping[str, Any] | None = None,
    enrichment: Mapping[str, Any] | None = None,
    candidates: Sequence[str] | None = None,
    unread: bool = False,
) -> list[int]:
    """Indices of the slot's actions this user may get, in catalog order.

    See :meth:`ray_app.catalog.Catalog.eligible` (which finds the slot by name and calls this).
    """
    done = completed_steps(profile)
    segs = user_segments(profile, enrichment)
    if candidates is None:
        return [a.index for a in slot.actions if why_ineligible(a, done, segs) is None]
    if isinstance(candidates, str | bytes) or not isinstance(candidates, Sequence):
        raise UnknownAction(slot.name, candidates, 0, slot.action_ids)
    chosen: set[int] = set()
    reasons: dict[str, str] = {}
    where: dict[str, int] = {}
    for i, cand in enumerate(candidates):
        j = slot.action_index.get(cand) if isinstance(cand, str) else None
        if j is None:
            raise UnknownAction(slot.name, cand, i, slot.action_ids)
        why = None if unread else why_ineligible(slot.actions[j], done, segs)
        if why is None:
            chosen.add(j)
        elif cand not in reasons:
            reasons[cand], where[cand] = why, i
    if reasons:
        raise IneligibleCandidates(slot.name, reasons, where)
    return sorted(chosen)
