"""The onboarding simulator: a seeded population, its journeys, and traffic sent over HTTP."""

from ray_app.sim.population import SEGMENTS, STEPS, Population, Segment, SimUser, journey
from ray_app.sim.traffic import MALFORMATIONS, SimStats, Simulator, TrafficPlan

__all__ = [
    "MALFORMATIONS",
    "SEGMENTS",
    "STEPS",
    "Population",
    "Segment",
    "SimStats",
    "SimUser",
    "Simulator",
    "TrafficPlan",
    "journey",
]
