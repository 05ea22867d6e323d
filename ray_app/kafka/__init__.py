"""Kafka: the client adapter, topic management and the embedded broker."""

from ray_app.kafka.broker import EmbeddedBroker
from ray_app.kafka.client import (
    Consumer,
    Delivered,
    OutRecord,
    Producer,
    Record,
    make_consumer,
    make_producer,
)
from ray_app.kafka.memory import InMemoryBroker, InMemoryConsumer, InMemoryProducer
from ray_app.kafka.topics import Topics, ensure_topics, list_topics

__all__ = [
    "Consumer",
    "Delivered",
    "EmbeddedBroker",
    "InMemoryBroker",
    "InMemoryConsumer",
    "InMemoryProducer",
    "OutRecord",
    "Producer",
    "Record",
    "Topics",
    "ensure_topics",
    "list_topics",
    "make_consumer",
    "make_producer",
]
