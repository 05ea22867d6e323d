"""The online learner's state as plain data (kind ``onramp.learner/2``) and back.

:func:`dump` is what :meth:`OnlineLearner.state_dict
<ray_app.learn.learner.OnlineLearner.state_dict>` returns: weights, optimizer state, last good
weights, version, dedupe memory, reward offsets, guardrail slice, replay buffer, counters, the
exploration schedule, the control guardrail's windows, the last weights that beat control and
the cold-start weights; plain Python and tensors, ``torch.save``-able and readable with
``weights_only=True``. :func:`check_origin`, :func:`bundle_of` and :func:`restore` rebuild a
learner from it (:meth:`~ray_app.learn.learner.OnlineLearner.from_state`); :func:`to_bytes` and
:func:`read_bytes` are the file format.

>>> read_bytes(to_bytes({"kind": STATE_KIND, "version": 3}))
{'kind': 'onramp.learner/2', 'version': 3}
>>> check_origin({"kind": "other"}, None, None)
Traceback (most recent call last):
...
ray_app.learn.config.LearnerStateError: not a learner state (kind 'other')
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ray_app.learn.config import LearnerStateError
from ray_app.learn.memory import saved_entries
from ray_app.learn.update import optimizer_fits
from ray_app.model import ModelBundle, Scorer
from ray_app.records import RewardRecord

if TYPE_CHECKING:
    from ray_app.learn.learner import OnlineLearner

__all__ = [
    "STATE_KIND",
    "bundle_of",
    "check_origin",
    "check_weights",
    "clone_weights",
    "dump",
    "gamma_head_start_of",
    "learned_of",
    "lineage_of",
    "read_bytes",
    "restore",
    "to_bytes",
    "trained_weights",
]

STATE_KIND = "onramp.learner/2"
#: The kinds this release reads: ``/1`` saved the replay buffer and the guardrail slice as lists
#: (``/2``: one JSON array each), which a ``/1`` reader cannot load.
STATE_KINDS = frozenset({"onramp.learner/1", STATE_KIND})


def clone_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy of a ``state_dict``."""
    return {k: v.detach().clone() for k, v in state.items()}


def check_weights(weights: Mapping[str, torch.Tensor], scorer: Scorer) -> dict[str, torch.Tensor]:
    """``weights`` cloned, after checking that they load into ``scorer``'s architecture and
    are finite (what a state keeps besides the current weights is what it publishes on a
    rollback: NaN there would be published, and refused by every replica, again and again)."""
    probe = copy.deepcopy(scorer)
    probe.load_state_dict(weights)
    for name, tensor in weights.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} holds NaN or inf")
    return clone_weights(weights)


def _time_or_none(value: Any, name: str) -> float | None:
    """A saved clock reading: None, or a finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a time in seconds or None, got {value!r}")
    return float(value)


def learned_of(metadata: Mapping[str, Any]) -> int:
    """The rewards a published bundle's weights learned since their last cold start, drift or
    rollback (``learned`` in its metadata; 0 when absent, as for a cold start or an offline
    model): a learner that starts from the weights explores and steps as far along as they are.

    >>> learned_of({"learned": 1800}), learned_of({"kind": "offline"}), learned_of({"learned": -3})
    (1800, 0, 0)
    """
    return _count(metadata, "learned")


def _count(metadata: Mapping[str, Any], key: str) -> int:
    """A positive integer of a bundle's metadata; 0 when absent or anything else."""
    v = metadata.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def gamma_head_start_of(metadata: Mapping[str, Any]) -> int:
    """The rewards squarecb's ``gamma`` counted on top of ``learned`` when a bundle was
    published (``gamma_head_start``: a restart after a drift explores around the cold start
    less than an untrained model); 0 when absent. A learner that starts from or adopts the
    bundle serves the same gamma.

    >>> gamma_head_start_of({"gamma_head_start": 4000}), gamma_head_start_of({})
    (4000, 0)
    """
    return _count(metadata, "gamma_head_start")


def trained_weights(metadata: Mapping[str, Any]) -> bool:
    """Whether a bundle's weights were trained (a learner starting from them settles, see
    ``LearnerConfig.settle_lr_factor``): not a cold start, nor a version an online learner
    published before it had learned anything (its first publish, or the first after a drift
    restart: ``learned`` 0).

    >>> [trained_weights(m) for m in ({"kind": "cold_start"}, {"kind": "online", "learned": 0},
    ...                                {"kind": "online", "learned": 900}, {"kind": "trained"})]
    [False, False, True, True]
    """
    kind = metadata.get("kind")
    return kind != "cold_start" and not (kind == "online" and learned_of(metadata) == 0)


def lineage_of(metadata: Mapping[str, Any]) -> dict[str, int]:
    """The registry promotion (``promotion``, ``registryVersion``) named in bundle metadata.

    >>> lineage_of({"promotion": 3, "registryVersion": True, "kind": "online"})
    {'promotion': 3}
    """
    return {
        k: v
        for k in ("promotion", "registryVersion")
        if isinstance(v := metadata.get(k), int) and not isinstance(v, bool)
    }


def dump(learner: OnlineLearner) -> dict[str, Any]:
    """The learner's state (see the module docstring)."""
    beat = learner._beat_control
    return {
        "kind": STATE_KIND,
        "schema_hash": learner._schema_hash,
        "catalog_digest": learner._catalog_digest,
        "slot_actions": learner.slot_actions,
        "architecture": dict(learner._arch, slot_sizes=list(learner._arch["slot_sizes"])),
        "weights": clone_weights(learner.scorer.state_dict()),
        "last_good": clone_weights(learner._last_good),
        "optimizer": {
            "kind": learner.config.optimizer,
            "state": copy.deepcopy(learner._optimizer.state_dict()),
        },
        "version": learner.version,
        "seen": torch.tensor(learner._seen.hashes(), dtype=torch.int64),
        "offsets": dict(learner._offsets),
        "counters": dict(learner.counters),
        "guardrail_json": learner._guardrail_json.dump(learner._guardrail, RewardRecord.to_json),
        **learner._replay.state(RewardRecord.to_json),
        "pending_updates": learner._pending_updates,
        "pending_rewards": learner._pending_rewards,
        "last_publish_at": learner._last_publish_at,
        "published_epsilon": learner._published_epsilon,
        "restart_reason": learner._restart_reason,
        **learner._schedule.state(),
        "lineage": dict(learner.lineage),
        "control": None if learner.control is None else learner.control.state_dict(),
        "beat_control": None
        if beat is None
        else {"promotion": beat[0][0], "version": beat[0][1], "weights": clone_weights(beat[1])},
        "fallback": clone_weights(learner._fallback),
        "fallback_kind": learner._fallback_kind,
    }


def check_origin(
    state: Mapping[str, Any], schema_hash: str | None, catalog_digest: str | None
) -> None:
    """:class:`LearnerStateError` unless ``state`` is a learner state saved under
    ``schema_hash`` and ``catalog_digest`` (each checked only when given): ``context["reason"]
    == "foreign"``, ``context["field"]`` the one that differs, ``context["state"]`` /
    ``context["current"]`` both values."""
    if state.get("kind") not in STATE_KINDS:
        raise LearnerStateError(f"not a learner state (kind {state.get('kind')!r})")
    for field, want in (("schema_hash", schema_hash), ("catalog_digest", catalog_digest)):
        got = state.get(field)
        if want is not None and got != want:
            what = "feature schema" if field == "schema_hash" else "catalog"
            raise LearnerStateError(
                f"the learner state was saved under another {what} ({field} {got}; "
                f"the current one is {want})",
                reason="foreign",
                field=field,
                state=got,
                current=want,
            )


def bundle_of(state: Mapping[str, Any]) -> ModelBundle:
    """The bundle a restored learner is built from: the state's weights, schema, catalog,
    version and actions."""
    arch = state["architecture"]
    scorer = Scorer(arch["dim"], arch["slot_sizes"], arch["hidden"])
    scorer.load_state_dict(state["weights"])
    return ModelBundle(
        scorer=scorer,
        schema_hash=state["schema_hash"],
        catalog_digest=state["catalog_digest"],
        version=int(state["version"]),
        slot_actions=state["slot_actions"],
    )


def restore(learner: OnlineLearner, state: Mapping[str, Any]) -> None:
    """Put the rest of ``state`` into ``learner`` (built from :func:`bundle_of` of it, under
    the config to resume with: an optimizer of another kind, or one saved over other parameters
    (before the scorer's wide scales), starts fresh; a new learning rate and weight decay
    apply)."""
    learner._last_good = check_weights(state["last_good"], learner.scorer)
    opt = state["optimizer"]
    fits = opt["kind"] == learner.config.optimizer and optimizer_fits(
        learner._optimizer, opt["state"]
    )
    if fits:
        learner._optimizer.load_state_dict(opt["state"])
        for group in learner._optimizer.param_groups:
            group["lr"] = learner.config.lr
            group["weight_decay"] = learner.config.weight_decay
    for h in state["seen"].tolist():
        learner._seen.remember(int(h))
    learner._offsets = {int(p): int(o) for p, o in state["offsets"].items()}
    learner.counters.update({k: int(v) for k, v in state["counters"].items()})
    for rec in saved_entries(state, "guardrail_json", "guardrail"):
        held = RewardRecord.from_json(rec)
        # a slice saved under another guardrail_share (0.1 until 2026-12-06, 0 now) keeps only
        # the records this config holds out: a stale slice would go on judging candidates
        if learner.in_guardrail(held.decision_id):
            learner._guardrail.append(held)
    learner._replay.load_state(state, RewardRecord.from_json)
    learner._pending_updates = int(state["pending_updates"])
    learner._pending_rewards = int(state["pending_rewards"])
    learner._last_publish_at = _time_or_none(state["last_publish_at"], "last_publish_at")
    learner._published_epsilon = float(state["published_epsilon"])
    reason = state.get("restart_reason")
    learner._restart_reason = None if reason is None else str(reason)
    learner._schedule.load_state(state)
    if not fits and (learner.counters["trained"] > 0 or learner.learned > 0):
        learner._start_settling()  # a new optimizer on trained weights
    learner.lineage = lineage_of(state.get("lineage") or {})
    if learner.control is not None and state.get("control"):
        learner.control.load_state(state["control"])
    beat = state.get("beat_control")
    if beat:
        key = (int(beat["promotion"]), int(beat["version"]))
        learner._beat_control = (key, check_weights(beat["weights"], learner.scorer))
    if state.get("fallback") is not None:
        learner._fallback = check_weights(state["fallback"], learner.scorer)
        learner._fallback_kind = str(state.get("fallback_kind", "initial"))


def to_bytes(state: Mapping[str, Any]) -> bytes:
    """A state as bytes (``torch.save``)."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return buf.getvalue()


def read_bytes(data: bytes) -> dict[str, Any]:
    """The state in :func:`to_bytes`'s bytes, read with ``weights_only=True`` (no pickled code
    runs); :class:`LearnerStateError` if they are not a ``torch.save`` file of a dict."""
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise LearnerStateError(
            "cannot read the learner state: not a torch.save file of plain data",
            cause=f"{type(exc).__name__}: {exc}",
        ) from None
    if not isinstance(state, dict):
        raise LearnerStateError(f"not a learner state: {type(state).__name__}")
    return state
