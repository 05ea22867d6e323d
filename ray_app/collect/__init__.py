"""The collector: Segment tracking-API requests -> validated, normalized records in Kafka."""

from ray_app.collect.collector import Collector, Reply, kafka_producer_factory
from ray_app.collect.parse import Limits, ParsedRequest, Rejection, correct_skew, parse_request

__all__ = [
    "Collector",
    "Limits",
    "ParsedRequest",
    "Rejection",
    "Reply",
    "correct_skew",
    "kafka_producer_factory",
    "parse_request",
]
