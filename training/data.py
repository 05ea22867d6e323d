"""Training data: reward records from an archive (JSON lines at a filesystem URI), read with Ray Data.

A reward record (:class:`ray_app.records.RewardRecord`, schema ``onramp.reward/2``) carries
the decision's feature vector as logged at decision time (computed by the serving path's
:meth:`FeatureSchema.featurize`), the action served, its propensity and the reward, so training
features are serving features by construction; :mod:`training.replay` checks that the features
logged also equal what a replay of the archived events gives.

``uri`` is the archive root written by ``onramp archive`` (the records are then read from its
``<prefix>.rewards/`` folder), a folder of ``*.jsonl`` files, or one file; plain paths,
``file://`` and any pyarrow filesystem URI (``s3://...``).

Every record is validated (:meth:`RewardRecord.from_json`) and checked against the catalog and the
feature schema; what cannot be trained on is counted by reason in :attr:`RewardData.skipped`, and
the whole read fails with a :class:`TrainingDataError` naming the field when there is nothing to
train on or the features were logged under another feature schema.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ray_app.errors import FieldError
from ray_app.kafka.archive import JSONL_SUFFIXES
from ray_app.records import RewardRecord, RewardRecordError
from ray_app.storage import Storage, join_uri
from ray_app.timefmt import record_ms

if TYPE_CHECKING:
    from ray_app.catalog import Catalog
    from ray_app.features import FeatureSchema

__all__ = ["RewardData", "TrainingDataError", "load_rewards", "reward_data", "reward_files"]

#: Arm whose rewards are not trained on (as in the online learner).
HOLDOUT = "holdout"
#: Arm that shows the static flow, one action with propensity 1 (not exploring).
CONTROL = "control"


class TrainingDataError(FieldError):
    """Training data that cannot be used: the ``field`` (``data``, ``features``, ...) and why."""

    http_status = 422


@dataclass
class RewardData:
    """Reward records as arrays, in decision-time order.

    ``x`` [N, dim] float32 features; ``slot`` [N] slot index; ``action`` [N] action index within
    the slot; ``reward`` [N]; ``propensity`` [N]; ``mask`` [N, max actions] the eligible
    candidates (all of the slot's actions when not logged); ``decided_at_ms`` [N]; ``explored``
    [N] whether the row was logged by an exploring arm (a model arm, not ``control``, whose
    static flow shows one action with propensity 1: its rows train the model, but an IPS
    estimate of another policy needs the rows where the other actions could be shown).
    """

    x: np.ndarray
    slot: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray
    mask: np.ndarray
    decided_at_ms: np.ndarray
    uri: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    explored: np.ndarray = field(default_factory=lambda: np.ones(0, dtype=np.bool_))

    def __post_init__(self) -> None:
        if len(self.explored) != len(self.reward):  # not given: every row explored
            self.explored = np.ones(len(self.reward), dtype=np.bool_)

    def __len__(self) -> int:
        return len(self.reward)

    def take(self, index: np.ndarray) -> RewardData:
        return RewardData(
            self.x[index],
            self.slot[index],
            self.action[index],
            self.reward[index],
            self.propensity[index],
            self.mask[index],
            self.decided_at_ms[index],
            self.uri,
            dict(self.skipped),
            self.explored[index],
        )

    def split(self, validation: float) -> tuple[RewardData, RewardData]:
        """(train, validation): the last ``validation`` share by decision time is held out."""
        n = len(self)
        k = max(1, round(n * validation)) if validation > 0 and n > 1 else 0
        idx = np.arange(n)
        return self.take(idx[: n - k]), self.take(idx[n - k :])

    def data_range(self) -> dict[str, Any]:
        """What the registry records as the training data's range."""
        return {
            "uri": self.uri,
            "records": len(self),
            "fromMs": int(self.decided_at_ms.min()) if len(self) else None,
            "toMs": int(self.decided_at_ms.max()) if len(self) else None,
            "skipped": dict(self.skipped),
        }

    def columns(self) -> dict[str, np.ndarray]:
        """The arrays a training worker needs (for ``ray.data.from_numpy``-style datasets)."""
        return {
            "x": self.x,
            "slot": self.slot,
            "action": self.action,
            "reward": self.reward,
            "propensity": self.propensity,
        }


def reward_files(uri: str, rewards_topic: str = "onramp.rewards") -> list[str]:
    """The JSON lines files of reward records under ``uri`` (see the module docstring).

    :class:`TrainingDataError` (field ``data``) when ``uri`` does not exist or holds no
    ``*.jsonl`` file.
    """
    store = Storage(uri, field="data")
    if not store.exists():
        raise TrainingDataError("data", f"{uri}: no such file or directory")
    if store.is_file():  # one file, local or remote (a remote one: its URI, for Ray Data)
        return [str(store.local) if store.local is not None else uri]
    for rel in (rewards_topic, ""):
        files = _jsonl_files(uri, store, rel)
        if files:
            return files
    raise TrainingDataError(
        "data",
        f"{uri}: no reward records (*.jsonl) here or under {rewards_topic}/: write them with "
        f"`onramp archive --topics {rewards_topic} --out {uri}`",
    )


def _jsonl_files(uri: str, store: Storage, rel: str) -> list[str]:
    """The JSON lines files of folder ``rel`` of the archive at ``uri`` (gzip too: Ray Data
    decompresses by the suffix), as Ray Data takes them: paths, or URIs of a remote store."""
    files = [f for f in store.files(rel) if f.endswith(JSONL_SUFFIXES)]
    if store.local is None and "://" in uri:  # hand Ray Data the URI, not a bare path
        return [join_uri(uri, f"{rel}/{f}" if rel else f) for f in files]
    base = store.path(rel)
    return [f"{base}/{f}" for f in files]


def decision_time(d: Any) -> tuple[str, int] | None:
    """(decision id, time) of a decision record that awaits a reward, or None: a record that is
    not one, a copy forwarded to a merged id's survivor (not another decision), one that showed
    nothing (never rewarded), or one without a readable time.

    >>> decision_time({"decisionId": "d1", "chosen": "a", "timestamp": "2026-01-01T00:00:00Z"})
    ('d1', 1767225600000)
    >>> decision_time({"decisionId": "d1", "chosen": None, "timestamp": 0}) is None
    True
    """
    if not isinstance(d, dict) or d.get("forwardedFrom") is not None:
        return None
    if "chosen" in d and d["chosen"] is None:
        return None
    try:
        return str(d["decisionId"]), record_ms(d.get("timestamp"))
    except (KeyError, TypeError, ValueError):
        return None


def pending_horizon(
    decisions: Iterable[tuple[str, int]], rewarded: Container[str], censor_ms: int
) -> int | None:
    """Where a log's rewards stop being complete, or None where they are: the time
    ``censor_ms`` before the newest decision, if a decision after it has no reward yet.

    A decision without an outcome is rewarded 0 only once its attribution window and the allowed
    lateness have passed, so an archive's last stretch holds its decisions' quick outcomes and
    not yet their timeouts: its rewards, counted, rate every policy too high. A log whose every
    decision there has its reward (a simulated one, or one written after the traffic stopped)
    is complete.

    >>> pending_horizon([("a", 0), ("b", 900), ("c", 1000)], {"a", "c"}, 500)
    500
    >>> pending_horizon([("a", 0), ("b", 900), ("c", 1000)], {"a", "b", "c"}, 500) is None
    True
    """
    decisions = list(decisions)
    if censor_ms <= 0 or not decisions:
        return None
    horizon = max(t for _, t in decisions) - censor_ms
    if any(t > horizon and did not in rewarded for did, t in decisions):
        return horizon
    return None


def candidates_problem(candidates: Any, ids: Sequence[str], action: str) -> str | None:
    """Why a record's ``candidates`` cannot be what its decision could show (an action the
    slot does not have, or the served ``action`` not among them), or None. A record without
    them could have shown any of the slot's actions."""
    if not candidates:
        return None
    unknown = [c for c in candidates if c not in ids]
    if unknown:
        return f"{unknown[:3]} not actions of the slot"
    if action not in candidates:
        return f"the served action {action!r} is not among them"
    return None


def reward_data(
    rows: Iterable[Any],
    schema: FeatureSchema,
    catalog: Catalog,
    uri: str = "",
    censor_ms: int = 0,
    decisions: Sequence[tuple[str, int]] = (),
) -> RewardData:
    """Validate reward-record dicts and turn them into :class:`RewardData` (see the module
    docstring for the errors). ``decisions`` ((decision id, time) of the archive's decision
    records): where one made within ``censor_ms`` of the newest has no reward yet, the rewards
    of that stretch are left out (``recent``, :func:`pending_horizon`); the held-out set, the
    latest by decision time, would otherwise rate every model too high.

    >>> from ray_app.catalog import load_catalog
    >>> from ray_app.features import FeatureSchema
    >>> c = load_catalog(); s = FeatureSchema.from_catalog(c)
    >>> row = {"decisionId": "d1", "userKey": "u", "slot": "next_step", "action": "goals",
    ...        "actionIndex": 3, "arm": "treatment", "propensity": 0.5, "features": [0.0] * s.dim,
    ...        "reward": 1, "outcome": "completed", "decidedAtMs": 5, "outcomeAtMs": 9,
    ...        "modelVersion": 0}
    >>> d = reward_data([row, {**row, "decisionId": "d2", "propensity": 0}], s, c)
    >>> len(d), d.skipped
    (1, {'invalid:propensity': 1})
    >>> reward_data([{**row, "features": [0.0] * 3}], s, c)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    training.data.TrainingDataError: features: the records hold 3 (1 records) features, the current feature schema has ...
    """
    slots = list(catalog.slots.values())
    slot_index = {sl.name: i for i, sl in enumerate(slots)}
    # a record without an actionIndex (onramp.reward/1) is resolved from its action, as
    # `onramp evaluate` resolves it
    slot_actions = {sl.name: [a.id for a in sl.actions] for sl in slots}
    width = max(sl.size for sl in slots)
    xs: list[list[float]] = []
    meta: list[tuple[int, int, int, float, float, int]] = []
    masks: list[np.ndarray] = []
    skipped: dict[str, int] = {}
    dims: dict[int, int] = {}
    seen: set[str] = set()
    explored: list[bool] = []
    ids: list[str] = []

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for row in rows:
        try:
            data = {k: v for k, v in row.items() if k != "_kafka"} if isinstance(row, dict) else row
            r = RewardRecord.from_json(data, slot_actions)
        except RewardRecordError as exc:
            skip(f"invalid:{exc.field}")
            continue
        if r.decision_id in seen:
            skip("duplicate")
            continue
        seen.add(r.decision_id)
        if r.arm == HOLDOUT:
            skip("holdout")
            continue
        if len(r.features) != schema.dim:
            dims[len(r.features)] = dims.get(len(r.features), 0) + 1
            continue
        s = slot_index.get(r.slot)
        if s is None:
            skip("unknown_slot")
            continue
        sl = slots[s]
        if r.action_index >= sl.size or sl.actions[r.action_index].id != r.action:
            skip("unknown_action")
            continue
        if candidates_problem(r.candidates, [a.id for a in sl.actions], r.action) is not None:
            skip("invalid:candidates")  # the propensity was of a choice among other actions
            continue
        m = np.zeros(width, dtype=np.bool_)
        cols = [sl.action_index[c] for c in (r.candidates or ()) if c in sl.action_index]
        m[cols if cols else list(range(sl.size))] = True
        m[r.action_index] = True
        masks.append(m)
        xs.append(r.features)
        meta.append((s, r.action_index, r.decided_at_ms, r.reward, r.propensity, len(xs) - 1))
        ids.append(r.decision_id)
        explored.append(r.arm != CONTROL)
    if dims and not xs:
        got = ", ".join(f"{n} ({k} records)" for n, k in sorted(dims.items()))
        raise TrainingDataError(
            "features",
            f"the records hold {got} features, the current feature schema has {schema.dim} "
            f"({schema.hash}): they were logged under another feature schema; retrain from "
            "records logged with the current one",
        )
    if dims:
        skipped["feature_schema"] = sum(dims.values())
    horizon = pending_horizon(decisions, seen, censor_ms)
    if horizon is not None and meta:
        keep = [i for i, m in enumerate(meta) if m[2] <= horizon]
        if len(keep) != len(meta):
            skipped["recent"] = len(meta) - len(keep)
            xs, masks, ids = [xs[i] for i in keep], [masks[i] for i in keep], [ids[i] for i in keep]
            explored = [explored[i] for i in keep]
            meta = [(*meta[i][:5], n) for n, i in enumerate(keep)]
    if not xs:
        why = f" (skipped: {skipped})" if skipped else ""
        raise TrainingDataError("data", f"{uri or 'the data'}: no reward records to train on{why}")
    return _packed(xs, masks, meta, uri, skipped, explored, ids)


def _packed(
    xs: list[list[float]],
    masks: list[np.ndarray],
    meta: list[tuple[int, int, int, float, float, int]],
    uri: str,
    skipped: dict[str, int],
    explored: list[bool],
    ids: list[str],
) -> RewardData:
    """The validated rows as arrays, in decision-time order (ties, a batch of decisions made at
    once, by decision id: Ray Data reads the files of an archive in no fixed order, so the
    order read gave the same archive other splits and other models from one seed)."""
    order = sorted(range(len(meta)), key=lambda i: (meta[i][2], ids[i]))
    x = np.asarray(xs, dtype=np.float32)[order]
    m = np.stack(masks)[order]
    arr = np.asarray([meta[i][:5] for i in order], dtype=np.float64)
    # times as integers: through float64 one near the int64 limit came back negative
    decided = np.asarray([meta[i][2] for i in order], dtype=np.int64)
    return RewardData(
        x=np.ascontiguousarray(x),
        slot=arr[:, 0].astype(np.int64),
        action=arr[:, 1].astype(np.int64),
        reward=arr[:, 3].astype(np.float32),
        propensity=arr[:, 4].astype(np.float32),
        mask=m,
        decided_at_ms=decided,
        uri=uri,
        skipped=skipped,
        explored=np.asarray(explored, dtype=np.bool_)[order],
    )


def load_rewards(
    uri: str,
    schema: FeatureSchema,
    catalog: Catalog,
    rewards_topic: str = "onramp.rewards",
    censor_ms: int = 0,
    decisions_topic: str = "onramp.decisions",
) -> RewardData:
    """Read the reward records under ``uri`` with Ray Data and validate them
    (:func:`reward_data`). Needs a running Ray (``ray.init``).

    Lines are read as text and decoded one by one: an archive that spans an upgrade holds
    records of both schemas (``features`` a list in ``/1``, an object in ``/2``), which a
    columnar JSON reader cannot put in one column; a line that is not JSON is skipped and
    counted (``invalid:``) like any other invalid record."""
    import ray.data

    files = reward_files(uri, rewards_topic)
    # a small CPU share per read task: the Serve replicas and trainers share the cluster
    ds = ray.data.read_text(files, num_cpus=0.25)
    rows: list[Any] = []
    for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        rows.extend(_json_or_none(line) for line in batch["text"])
    decisions = _decision_times(uri, decisions_topic) if censor_ms > 0 else []
    return reward_data(rows, schema, catalog, uri, censor_ms, decisions)


def _decision_times(uri: str, decisions_topic: str) -> list[tuple[str, int]]:
    """(decision id, time) of the decision records archived beside the rewards (under
    ``decisions_topic/``), [] where there are none: what tells a complete log from one whose
    last decisions wait for their timeouts (:func:`pending_horizon`)."""
    import ray.data

    store = Storage(uri, field="data")
    if store.is_file():
        return []
    paths = _jsonl_files(uri, store, decisions_topic)
    if not paths:
        return []
    out: list[tuple[str, int]] = []
    for batch in ray.data.read_text(paths, num_cpus=0.25).iter_batches(
        batch_size=4096, batch_format="numpy"
    ):
        for line in batch["text"]:
            t = decision_time(_json_or_none(line))
            if t is not None:
                out.append(t)
    return out


def _json_or_none(line: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # refused by RewardRecord.from_json: not a JSON object
