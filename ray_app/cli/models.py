"""``onramp models list|show|promote|rollback``: the model registry."""

from __future__ import annotations

import argparse
from typing import Any

from ray_app.cli.output import dumps
from ray_app.config import Settings

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser(
        "models",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="list, show, promote or roll back model versions in the registry",
        description="The model registry (registry.uri, default <state_dir>/registry). Promoting "
        "a version writes it to the model file the decision replicas watch "
        "(decide.model_path, default <state_dir>/models/treatment.onramp): they swap it in "
        "without a restart, and the online learner continues from it.",
        epilog="examples:\n"
        "  onramp models list\n"
        "  onramp models show 3\n"
        "  onramp models promote 3\n"
        "  onramp models rollback",
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", parents=[common], help="every version, the promoted one marked")
    ls.add_argument("--json", action="store_true", help="print JSON")
    show = msub.add_parser("show", parents=[common], help="a version's metadata and metrics")
    show.add_argument("version", type=int)
    promote = msub.add_parser(
        "promote", parents=[common], help="serve VERSION (checked against the current features)"
    )
    promote.add_argument("version", type=int)
    msub.add_parser("rollback", parents=[common], help="serve the previously promoted version")


def _num(x: Any) -> str:
    """A metric for the table: four decimals, or ``-``.

    >>> _num(0.71234), _num(None)
    ('0.7123', '-')
    """
    return f"{x:.4f}" if isinstance(x, float) else "-"


def _show(registry: Any, version: int) -> int:
    head = registry.promoted()
    meta = registry.get(version)
    body = meta.to_json()
    body["promoted"] = head is not None and head.version == meta.version
    print(dumps(body, indent=2))
    return 0


def _count(value: Any) -> str:
    """A count of a version's metadata as the table shows it ('-': none, or not a count)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "-"


def _list(registry: Any, as_json: bool) -> int:
    import datetime as dt

    head = registry.promoted()
    versions = registry.list()
    if as_json:
        print(dumps([v.to_json() for v in versions], indent=2))
        return 0
    if not versions:
        print(f"the registry at {registry.uri} is empty: `onramp train` registers versions")
        return 0
    print(f"{'':2}{'version':>7}  {'created (UTC)':19}  {'source':6}  {'parent':>6}  "
          f"{'records':>8}  {'val_auc':>7}  {'val_snips':>9}  schema")  # fmt: skip
    for v in versions:
        mark = "* " if head is not None and head.version == v.version else "  "
        when = dt.datetime.fromtimestamp(v.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        m = v.metrics
        print(
            f"{mark}{v.version:>7}  {when:19}  {v.source:6}  {v.parent or '-':>6}  "
            f"{_count(v.data.get('records')):>8}  {_num(m.get('auc')):>7}  "
            f"{_num(m.get('snips')):>9}  {v.schema_hash}"
        )
    if head is not None:
        print(f"* promoted (promotion {head.epoch}, {head.action})")
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.catalog import load_catalog
    from ray_app.features import FeatureSchema
    from ray_app.model.registry import ModelRegistry

    registry = ModelRegistry.from_settings(settings)
    action = args.models_command
    if action == "show":
        return _show(registry, args.version)
    if action == "list":
        return _list(registry, args.json)
    catalog = load_catalog(settings.decide.catalog_path)
    schema = FeatureSchema.from_catalog(catalog)
    if action == "promote":
        p = registry.promote(args.version, settings.model_path, schema, catalog)
    else:
        p = registry.rollback(settings.model_path, schema, catalog)
    print(
        dumps(
            {
                "promoted": p.version,
                "promotion": p.epoch,
                "action": p.action,
                "servedFrom": str(settings.model_path),
            }
        )
    )
    return 0
