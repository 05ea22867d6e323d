"""The onboarding catalog: the slots ``/v1/decide`` answers, their actions and who may get them.

A catalog is a YAML file (the packaged ``default.yaml`` unless another is given) validated with
pydantic into a frozen :class:`Catalog`. Each slot is one question the frontend asks
(``next_step``, ``welcome_content``, ...); its actions are the possible answers, each with
eligibility rules (steps it ``requires``, ``segments`` it is limited to, a step whose completion
makes it moot: ``unless_done``), and its ``default`` is the static flow that the control arm
serves. Everything the per-request path needs is precomputed here, once per catalog.

Modules: :mod:`~ray_app.catalog.model` (the types and :func:`load_catalog`),
:mod:`~ray_app.catalog.spec` (the YAML contract), :mod:`~ray_app.catalog.build` (cross-checks),
:mod:`~ray_app.catalog.eligibility` (who may get what), :mod:`~ray_app.catalog.control` (the
static flow) and :mod:`~ray_app.catalog.errors`.

>>> catalog = load_catalog()
>>> catalog.slot_names
('next_step', 'welcome_content', 'checklist_order')
>>> profile = {"stepsCompleted": ["welcome", "role"], "traits": {"segment": "developer"}}
>>> [catalog.slot("next_step").actions[i].id for i in catalog.eligible("next_step", profile)]
['team_size', 'goals', 'integrations', 'invite_teammates', 'first_project']
>>> catalog.slot("next_step").actions[catalog.control_choice("next_step", [2, 3, 4])].id
'team_size'
>>> catalog.eligible("next_step", profile, candidates=["role", "goals"])
Traceback (most recent call last):
...
ray_app.catalog.errors.IneligibleCandidates: ineligible candidates for slot 'next_step': role: already completed

Garbage is refused with the field path and the reason:

>>> Catalog.from_dict({"version": 1, "steps": ["a"], "slots": {"s": {"actions": ["x"],
...                    "default": ["y"]}}}, source="inline")
Traceback (most recent call last):
...
ray_app.catalog.errors.CatalogError: inline: slots.s.default[0]: unknown action 'y' (actions of slot 's': x)
"""

from ray_app.catalog.eligibility import user_segments
from ray_app.catalog.errors import (
    CatalogError,
    DecisionRequestError,
    IneligibleCandidates,
    UnknownAction,
    UnknownSlot,
)
from ray_app.catalog.model import Action, Catalog, Slot, load_catalog

__all__ = [
    "Action",
    "Catalog",
    "CatalogError",
    "DecisionRequestError",
    "IneligibleCandidates",
    "Slot",
    "UnknownAction",
    "UnknownSlot",
    "load_catalog",
    "user_segments",
]
