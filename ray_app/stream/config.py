"""The state core's semantics (:class:`~ray_app.state.StateConfig`) from Onramp's settings and
the onboarding catalog."""

from __future__ import annotations

from ray_app.config import Settings
from ray_app.state import StateConfig
from ray_app.state.profile import ProfileConfig

__all__ = ["state_config"]


def state_config(settings: Settings) -> StateConfig:
    """The state core's semantics from the settings (and the onboarding catalog: its step ids
    for validation, its step slots for rewards)."""
    from ray_app.catalog import load_catalog

    s = settings.stream
    catalog = load_catalog(settings.decide.catalog_path)
    return StateConfig(
        allowed_lateness_ms=s.allowed_lateness_ms,
        reorder_max_buffer=s.reorder_max_buffer,
        reorder_wait_ms=s.reorder_wait_ms,
        max_age_ms=int(s.max_event_age_s * 1000),
        max_future_ms=int(s.max_event_future_s * 1000),
        max_user_events_per_s=s.max_user_events_per_s,
        attribution_window_ms=int(s.attribution_window_s * 1000),
        step_slots=frozenset(n for n, slot in catalog.slots.items() if slot.kind == "step"),
        negative_events=frozenset(catalog.negative_events),
        known_steps=frozenset(catalog.known_steps) if s.validate_steps else None,
        profile_idle_ttl_ms=int(s.profile_idle_ttl_s * 1000),
        allow_known_merge=s.allow_known_user_merge,
        profile=ProfileConfig(
            session_gap_ms=s.session_gap_ms,
            max_event_names=s.max_event_names_per_profile,
            max_traits=s.max_traits_per_profile,
            max_sessions=s.max_sessions_per_profile,
            max_merges=s.max_merges_per_profile,
        ),
    )
