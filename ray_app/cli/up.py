"""``onramp up``: the broker, Ray and the Serve app until Ctrl-C."""

from __future__ import annotations

import argparse
from typing import Any

from ray_app import __version__
from ray_app.cli.common import Stop, decide_key, port, with_overrides
from ray_app.config import Settings, local_only

__all__ = ["add_parser", "print_urls", "run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    up = sub.add_parser(
        "up",
        parents=[common],
        help="run the broker, Ray and the Serve app until Ctrl-C",
        description="Start the embedded broker (unless kafka.bootstrap_servers is set), Ray "
        "(local unless ray.address is set) and Onramp's Serve app; print the URLs and the demo "
        "write key; run until Ctrl-C or SIGTERM, then stop everything in order.",
    )
    up.add_argument("--port", type=port, help="HTTP port (default: collector.port)")
    up.add_argument(
        "--fresh",
        action="store_true",
        help="start from the cold-start policy: remove the served model an earlier embedded run "
        "learned (checkpoints and learner state of earlier runs are always removed)",
    )


def print_urls(stack: Any, settings: Settings) -> None:
    """What is up where, the write key, and a curl line to try it (``up`` and ``demo``). The
    read key, which reads every user's profile and CRM row, only when Onramp can be reached
    from this machine alone: a reachable deployment's output goes to logs."""
    print(f"Onramp {__version__} is up (HTTP path: {stack.http_mode})", flush=True)
    for note in stack.notes:
        print(f"  {note}")
    print(f"  Kafka bootstrap : {stack.bootstrap}" + ("  (embedded Tansu)" if stack.broker else ""))
    for name, url in stack.urls().items():
        print(f"  {name:<16}: {url}")
    # deployments/demo.py serves the demo only on loopback, with the keys named 'demo'
    if "demo" in settings.collector.write_keys and local_only(settings, stack.bootstrap):
        print(f"  {'demo app':<16}: {stack.base_url}/demo/  (open it in a browser)")
    read = next(iter(settings.collector.read_keys.values()), None)
    if read is not None:
        login = (
            f"the read key {read.get_secret_value()}"
            if local_only(settings, stack.bootstrap)
            else "a key of collector.read_keys"
        )
        print(f"  {'console':<16}: {stack.base_url}/console/  (log in with {login})")
    for key_name, key in list(settings.collector.write_keys.items())[:1]:
        write = key.get_secret_value()  # public: every browser that sends events has it
        print(f"  write key       : {write}  (source '{key_name}'; HTTP Basic user name)")
        print(
            f"  try it          : curl -u {write}: -d "
            f'\'{{"userId":"u1","event":"Signed Up"}}\' {stack.base_url}/v1/track',
            flush=True,
        )
    decide = decide_key(settings)
    reads = {k.get_secret_value() for k in settings.collector.read_keys.values()}
    if decide in reads and not local_only(settings, stack.bootstrap):
        decide = None  # a read key, not for a reachable deployment's logs
    if decide:
        print(
            f"  try deciding    : curl -H 'Authorization: Bearer {decide}' "
            f"'{stack.base_url}/v1/decide?user_id=u1&slot=next_step'",
            flush=True,
        )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.up import Stack

    settings = with_overrides(settings, collector={"port": args.port})
    stop = Stop()
    stop.interrupt_while_starting()
    with Stack(settings, args.parts.need("build_app"), fresh=args.fresh) as stack:
        stop.install()  # started: Ctrl-C now stops it (ray.init put its own SIGTERM handler)
        print_urls(stack, settings)
        print("Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping: Serve, Ray, broker ...", flush=True)
    print("stopped", flush=True)
    return 0
