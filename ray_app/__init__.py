"""Onramp: real-time personalization of customer onboarding on Ray.

The engine: settings (:mod:`ray_app.config`), Kafka (:mod:`ray_app.kafka`), the collector
(:mod:`ray_app.collect`), telemetry hooks (:mod:`ray_app.telemetry`), the onboarding simulator
(:mod:`ray_app.sim`), the ``onramp`` CLI (:mod:`ray_app.cli`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onramp")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
