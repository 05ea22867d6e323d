"""Telemetry through a hooks interface: no-op by default, OpenTelemetry behind it.

Code that does work calls hooks (``hooks.events_rejected("invalid_json", 1)``); what the hooks do
(nothing, or OpenTelemetry metrics exported to Prometheus) is chosen where the process starts.
Dimensions are attributes, never parts of metric names.

>>> hooks = OtelHooks()
>>> hooks.events_rejected("invalid_json", 2)
>>> b'onramp_events_rejected_total{reason="invalid_json"} 2.0' in hooks.prometheus_text()
True
"""

from ray_app.telemetry.hooks import CollectorHooks, NoopHooks, OtelHooks

__all__ = ["CollectorHooks", "NoopHooks", "OtelHooks"]
