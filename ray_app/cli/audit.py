"""``onramp audit``: recent traffic against the training data (features, segment mix, DLQ/late)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ray_app.cli.common import EXIT_DRIFT, EXIT_OK, positive
from ray_app.config import Settings
from ray_app.errors import OnrampError

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser(
        "audit",
        parents=[common],
        help="compare recent traffic with the training data: what drifted (HTML + JSON)",
        description="Compares recent decisions with the reference (training) decisions: the PSI "
        "of every feature, the mix of context segments and arms (chi-square), and, from "
        "/metrics scrapes, the DLQ and late shares. Prints what drifted; writes audit.html "
        "(histograms, segment bars) and audit.json, and says where. The decisions are files, or "
        "what `onramp archive` writes (an archive root or a topic's folder of per-partition "
        "files), local or at a URI (s3://...).",
        epilog="examples:\n"
        "  onramp audit --reference s3://b/archive/2026-11 --recent .onramp/archive\n"
        "  onramp audit --reference train-decisions.jsonl --recent last-day.jsonl\n"
        "  onramp audit --reference r.jsonl --recent c.jsonl --metrics http://127.0.0.1:8000/metrics\n"
        "  onramp audit ... --fail-on-drift   # exit status 3 when something drifted (CI, cron)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument(
        "--reference",
        required=True,
        metavar="URI",
        help="training decisions: a JSON lines file, or an archive or folder of them",
    )
    audit.add_argument(
        "--recent",
        required=True,
        metavar="URI",
        help="recent decisions: a JSON lines file, or an archive or folder of them",
    )
    audit.add_argument(
        "--metrics", metavar="URL|FILE", help="recent /metrics: a URL or a saved scrape"
    )
    audit.add_argument(
        "--reference-metrics", metavar="URL|FILE", help="/metrics of the training period"
    )
    audit.add_argument(
        "--psi-threshold", type=positive, default=0.25, help="PSI above which a feature drifted"
    )
    audit.add_argument("--out", default="onramp-audit", help="output directory")
    audit.add_argument("--fail-on-drift", action="store_true", help="exit with status 3 on drift")


def _read_metrics(where: str | None) -> str | None:
    """Prometheus text from a URL (scraped now) or a file; ``None`` for ``None``."""
    if where is None:
        return None
    if where.startswith(("http://", "https://")):
        import httpx

        try:
            r = httpx.get(where, timeout=10)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise OnrampError(f"cannot scrape {where}: {exc}") from None
        return r.text
    try:
        return Path(where).read_text()
    except UnicodeDecodeError:
        raise OnrampError(f"{where}: not a /metrics text (Prometheus' text format)") from None


def _feature_names(settings: Settings) -> list[str]:
    """The catalog's feature names (a catalog that cannot be read is the catalog's error: the
    audit would name the features f0, f1, ... and compare them under another schema)."""
    from ray_app.catalog import load_catalog
    from ray_app.features import FeatureSchema

    return list(FeatureSchema.from_catalog(load_catalog(settings.decide.catalog_path)).names)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.audit import audit, decision_records, rates_from_metrics, write_audit
    from ray_app.experiments.report import read_json_lines

    metrics = _read_metrics(args.metrics), _read_metrics(args.reference_metrics)
    topic = settings.topics.decisions
    reference = read_json_lines(args.reference, topic)
    recent = read_json_lines(args.recent, topic)
    for side, records, where in (
        ("reference", reference, args.reference),
        ("recent", recent, args.recent),
    ):
        if not decision_records(records):  # "nothing drifted" would be a pass on no data
            what = f"{len(records)} records, none of a decision" if records else "no records"
            raise OnrampError(
                f"--{side} {where}: {what} (records of {topic} or of the rewards topic, as "
                "`onramp archive` writes them: with features and an arm); nothing to compare"
            )
    if metrics[0] is not None and all(v is None for v in rates_from_metrics(metrics[0]).values()):
        raise OnrampError(  # "nothing drifted" would be a pass on rates never computed
            f"--metrics {args.metrics}: none of Onramp's collector or stream counters "
            "(onramp_events_*_total, onramp_stream_records_total): another service's scrape?"
        )
    result = audit(
        reference,
        recent,
        _feature_names(settings),
        *metrics,
        psi_threshold=args.psi_threshold,
    )
    page = write_audit(result, args.out)
    print(
        f"reference: {result['reference']['decisions']} decisions, "
        f"recent: {result['recent']['decisions']}"
    )
    if result["drifted"]:
        print("drifted:")
        for line in result["drifted"]:
            print(f"  {line}")
    else:
        print("nothing drifted")
    print(f"wrote: {page} and {page.with_name('audit.json')}")
    return EXIT_DRIFT if result["drifted"] and args.fail_on_drift else EXIT_OK
