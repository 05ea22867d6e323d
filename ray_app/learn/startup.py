"""Which learner the learner service starts with: its saved state, a promoted or written model,
or the cold start.

A restarted learner resumes from its state (:func:`restore_learner`): the offsets say where to
read, the dedupe memory drops what it had already learned from. A state saved under another
feature schema or catalog is refused (an ERROR names both hashes; it is moved aside to
``<state>.refused`` and counted in ``counters["refused_at_start"]``) and the learner starts as
if there were none; so is an unreadable one. A state of the same schema and catalog from another
world cannot be told from its bytes: the resume is logged at WARNING (version, rewards trained,
when it was saved), and the comparison with the control arm starts afresh on the new decisions,
so a model worse than the static flow is rolled back. Without a state the learner starts from
the model registry's promoted version (``onramp models promote``), else the model file (checked
by :meth:`ModelBundle.from_bytes` against the schema and the catalog's actions; refused ones are
logged and counted too), else the cold start; a learner that did not resume numbers its
publishes on from the served file's version when that file is of its promotion, so that running
replicas take them. No I/O but the two files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

from ray_app.catalog import Catalog
from ray_app.features import FeatureSchema
from ray_app.learn.config import LearnerConfig, LearnerStateError
from ray_app.learn.learner import OnlineLearner
from ray_app.model import ModelBundle, ModelFileError, cold_start_bundle
from ray_app.model.registry import served_rank

__all__ = ["restore_learner"]

log = logging.getLogger(__name__)


def _set_aside(path: Path) -> Path | None:
    """Move a refused file to ``<path>.refused`` (the next save would overwrite it)."""
    aside = path.with_name(path.name + ".refused")
    try:
        path.replace(aside)
    except OSError as exc:
        log.warning("%s: could not move the refused file aside: %s", path, exc)
        return None
    return aside


def _when(path: Path) -> str:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return "at an unknown time"
    return dt.datetime.fromtimestamp(mtime, dt.UTC).isoformat(timespec="seconds")


def restore_learner(
    state_path: Path,
    model_path: Path,
    schema: FeatureSchema,
    catalog: Catalog,
    config: LearnerConfig,
    promoted: Callable[[], ModelBundle | None] = lambda: None,
    adopt: Callable[[OnlineLearner], None] = lambda learner: None,
) -> OnlineLearner:
    """The learner to start with (see the module docstring): from the state at ``state_path``
    if it was saved under this ``schema`` and ``catalog`` (then ``adopt`` may continue it from a
    newer promotion), else ``promoted()``, else the model file, else the cold start. Whatever is
    refused on the way is logged at ERROR and counted in ``counters["refused_at_start"]``; a
    resumed or trained model is logged at WARNING. The learner rolls back to the cold start of
    this schema and catalog when it is below control, and its comparison with control counts
    only the decisions of the version it starts at and later."""
    refused = 0
    learner: OnlineLearner | None = None
    if state_path.exists():
        learner = _resume(state_path, schema, catalog, config)
        if learner is None:
            refused += 1
        else:
            adopt(learner)
    renumbered = False
    if learner is None:
        bundle = promoted()
        if bundle is not None:
            bundle = _for_learning(bundle, f"promoted version {bundle.version}", catalog)
            if bundle is None:
                refused += 1
            else:
                log.info("learner starts from the registry's promoted version %d", bundle.version)
        if bundle is None and model_path.exists():
            bundle = _model_file(model_path, schema, catalog)
            if bundle is None:
                refused += 1
        start = bundle or cold_start_bundle(schema, catalog, hidden=config.hidden)
        learner = OnlineLearner(start, config)
        renumbered = _number_above_served(learner, model_path)
    try:
        hidden = int(learner.architecture["hidden"])
        learner.set_cold_start(cold_start_bundle(schema, catalog, hidden=hidden))
    except ValueError as exc:
        log.warning(
            "no cold-start model of the learner's shape (%s): it rolls back to its own", exc
        )
    if learner.control is not None:
        # a renumbered learner's served version is another model's: its decisions are not its;
        # and a promotion adopted above cut the old lineage's decisions off at a later version
        # (adopt), which this must not undo
        mine = learner.version + 1 if renumbered else learner.version
        mine = max(mine, learner.control.min_version)
        learner.control.restart(min_version=mine, keep_control=False)
    learner.counters["refused_at_start"] += refused
    return learner


def _number_above_served(learner: OnlineLearner, model_path: Path) -> bool:
    """A learner that did not resume its state (refused, lost) and starts from the promoted
    version or the cold start numbers its publishes on from the served file's version when
    that file is of its promotion: running replicas take only a higher
    :attr:`~ray_app.model.ModelBundle.serving_rank`, so publishes numbered from the start's
    version would be refused by them until they passed it (and taken by replicas started
    meanwhile: two models served at once). Whether it did."""
    promotion, version = served_rank(model_path)
    if not (promotion == learner.lineage.get("promotion", 0) and version > learner.version):
        return False
    log.warning(
        "learner numbers its publishes on from the served version %d (it starts from "
        "version %d's weights)",
        version,
        learner.version,
    )
    learner.version = version
    return True


def _resume(
    state_path: Path, schema: FeatureSchema, catalog: Catalog, config: LearnerConfig
) -> OnlineLearner | None:
    """The learner saved at ``state_path``, logged; ``None`` if it is refused (logged, and the
    file moved aside)."""
    try:
        blob = state_path.read_bytes()
    except OSError as exc:  # a directory, no permission, an I/O error: refused, not a crash
        log.error(
            "learner state %s REFUSED: it cannot be read (%s); starting as if there were no state",
            state_path,
            exc,
        )
        return None
    try:
        learner = OnlineLearner.from_bytes(
            blob, config, schema_hash=schema.hash, catalog_digest=catalog.digest
        )
    except LearnerStateError as exc:
        ctx = exc.context
        saved = _when(state_path)
        aside = _set_aside(state_path)
        moved = "" if aside is None else f" (moved to {aside})"
        if ctx.get("reason") == "foreign":
            log.error(
                "learner state %s (saved %s) REFUSED: it was saved under %s %s, the current "
                "one is %s %s; starting as if there were no state%s",
                state_path,
                saved,
                ctx.get("field"),
                ctx.get("state"),
                ctx.get("field"),
                ctx.get("current"),
                moved,
            )
        else:
            log.error(
                "learner state %s REFUSED: %s; starting as if there were no state%s",
                state_path,
                exc,
                moved,
            )
        return None
    log.warning(
        "learner RESUMED from %s (saved %s): version %d, %d rewards trained, %d "
        "control rollbacks so far. Same feature schema and catalog; whether it was "
        "learned in this world cannot be told from its bytes: the guardrail against the "
        "static flow compares its decisions with the control arm's from now on and rolls "
        "it back if they are significantly worse",
        state_path,
        _when(state_path),
        learner.version,
        learner.counters.get("trained", 0),
        learner.counters.get("control_rollbacks", 0),
    )
    return learner


def _for_learning(bundle: ModelBundle, what: str, catalog: Catalog) -> ModelBundle | None:
    """``bundle`` (a model file's, or the registry's promoted version) as a learner can start
    from it, under the current catalog; ``None`` (logged) when its heads cannot be mapped to
    the catalog's actions. A promoted version was taken as it was: without ``slot_actions`` the
    learner failed at every start, and under an older catalog digest its saved state was
    refused as foreign by every next start (all learning lost at each)."""
    if not bundle.slot_actions:  # a hand-made or legacy file: which head is which action?
        log.error(
            "%s REFUSED for learning: it names no slot_actions, so its heads cannot be mapped "
            "to the catalog's actions",
            what,
        )
        return None
    if bundle.catalog_digest != catalog.digest:
        log.warning(
            "%s was trained on catalog %s, the current one is %s (same slots and actions): "
            "continuing from it under the current catalog",
            what,
            bundle.catalog_digest,
            catalog.digest,
        )
        # learned and published from now on under this catalog: its state, saved with the
        # bundle's digest, would be refused as foreign by the next start
        bundle = dataclasses.replace(bundle, catalog_digest=catalog.digest)
    return bundle


def _model_file(model_path: Path, schema: FeatureSchema, catalog: Catalog) -> ModelBundle | None:
    """The model file's bundle, logged; ``None`` if it is refused (logged)."""
    try:
        bundle = ModelBundle.from_bytes(model_path.read_bytes(), schema, catalog, False)
    except ModelFileError as exc:
        log.error("model file %s REFUSED: %s; starting from the cold-start model", model_path, exc)
        return None
    checked = _for_learning(bundle, f"model file {model_path}", catalog)
    if checked is None:
        return None
    bundle = checked
    if bundle.metadata.get("kind") != "cold_start":
        log.warning(
            "learner starts from the model file %s: version %d, %s rewards, written "
            "%s; the guardrail against the static flow compares it with the control "
            "arm and rolls it back if it is significantly worse",
            model_path,
            bundle.version,
            bundle.metadata.get("rewards", "unknown"),
            _when(model_path),
        )
    return bundle
