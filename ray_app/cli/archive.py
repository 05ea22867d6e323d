"""``onramp archive``: Kafka topics into JSON lines files (training data)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ray_app.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, Stop, seconds
from ray_app.cli.output import Progress, dumps
from ray_app.config import Settings
from ray_app.errors import ConfigError, KafkaUnavailable

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    archive = sub.add_parser(
        "archive",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="copy Kafka topics into JSON lines files (training data)",
        description="A bounded read of Onramp's topics into JSON lines files at a filesystem URI "
        "(<out>/<topic>/part-<partition>-<first>-<last>.jsonl): every record from the beginning "
        "of each partition until the topic is read to its end and goes quiet. `onramp train` reads "
        "the rewards from it; the events and decisions are what the feature-parity replay reads.",
        epilog="examples:\n"
        "  onramp archive --out .onramp/archive\n"
        "  onramp archive --topics rewards --out s3://bucket/onramp/archive/2026-11-26",
    )
    archive.add_argument(
        "--topics",
        nargs="+",
        default=["events", "decisions", "rewards"],
        help="topics by short name (events, decisions, rewards, dlq, late) or full name "
        "(default: events decisions rewards)",
    )
    archive.add_argument(
        "--out", metavar="URI", help="where to write (default: <state_dir>/archive)"
    )
    archive.add_argument(
        "--idle", type=seconds, default=1.0, help="seconds without new records that end the read"
    )
    archive.add_argument(
        "--max-seconds", type=seconds, default=600.0, help="stop reading after this long"
    )


def _topic_names(settings: Settings, given: list[str]) -> list[str]:
    """Full topic names for ``--topics`` (short names or full names).

    >>> _topic_names(Settings(), ["rewards", "dlq"]) == [
    ...     Settings().topics.rewards, Settings().topics.dlq]
    True
    """
    short = {
        "events": settings.topics.events,
        "decisions": settings.topics.decisions,
        "rewards": settings.topics.rewards,
        "dlq": settings.topics.dlq,
        "late": settings.topics.late,
    }
    known = set(short.values())
    topics = []
    for t in given:
        name = short.get(t, t)
        if name not in known:
            raise ConfigError(
                f"--topics: unknown topic {t!r}; expected one of {sorted(short)} or {sorted(known)}"
            )
        if name not in topics:  # `rewards onramp.rewards` is one topic, read once
            topics.append(name)
    return topics


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.kafka.archive import archive_topics
    from ray_app.kafka.client import make_consumer
    from ray_app.kafka.topics import verify_topics

    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        raise ConfigError(
            "onramp archive reads a running Kafka: set kafka.bootstrap_servers "
            "(ONRAMP_KAFKA__BOOTSTRAP_SERVERS), e.g. the address `onramp up` prints"
        )
    topics = _topic_names(settings, args.topics)
    # it reads kafka.partitions partitions of each: a topic with more would be archived in
    # part, with nothing said (a ConfigError names each topic and its count)
    verify_topics(bootstrap, settings.kafka, topics)
    out = args.out or str(Path(settings.state_dir) / "archive")
    consumer = make_consumer(bootstrap, settings.kafka)
    progress = Progress("archived", unit="records")
    stop = Stop()  # Ctrl-C ends the read; what was read is written
    stop.install()
    try:
        report = archive_topics(
            consumer,
            topics,
            out,
            settings.kafka.partitions,
            idle_s=args.idle,
            max_seconds=args.max_seconds,
            on_progress=progress.update,
            stop=stop.is_set,
        )
    finally:
        stop.restore()
        consumer.close()
    progress.close()
    print(dumps(report.as_dict(), indent=2))
    if report.unreachable and not report.interrupted:
        raise KafkaUnavailable(
            f"Kafka at {bootstrap} reported none of the {report.partitions} partitions of "
            f"{', '.join(topics)} in {report.seconds:.0f} s: is it running, and are these its "
            "topics? (nothing was written)"
        )
    print(f"wrote {len(report.files)} file(s) under {out}", file=sys.stderr)
    if report.interrupted:
        print(
            f"onramp archive: interrupted; the {report.records:,} records read were written",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if report.truncated:
        print(
            f"onramp archive: --max-seconds ({args.max_seconds:g}) ran out before "
            f"{len(report.truncated)} partition(s) were read to their end "
            f"({', '.join(report.truncated[:5])}{' ...' if len(report.truncated) > 5 else ''}): "
            "what was read is written; run it again with a larger --max-seconds",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK if report.invalid == 0 else EXIT_ERROR
