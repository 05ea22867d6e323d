"""The console's data routes, ``GET /console/api/<panel>``, without a web framework: a path, the
query and the ``Authorization`` header in, a status and JSON bytes out (the ingress wraps them).

Every route needs a read key (``collector.read_keys``), as ``GET /v1/profiles`` does: Bearer, or
Basic with the key as user name. Without one the answer is 401 and carries no data.

* ``experiments?range=15m|1h|24h|all``: per experiment and arm, what ``onramp report`` computes
  (:func:`ray_app.experiments.report.analyze`) over the users first seen in the range;
* ``learning``: completion per arm over time, model versions (published, promoted, rolled back,
  and why), exploration, drift alerts;
* ``funnel``: the catalog's steps in order, per arm the users who completed each and the drop-off;
* ``health``: events accepted per second, rejections by reason with the latest DLQ examples,
  late share, consumer lag, freshness p50/p99, from the exposition ``/metrics`` serves;
* ``catalog``: slots, actions, eligibility rules and static flow, as this replica loaded them;
* ``users/<id>``: the live profile, its enrichment, the user's decisions and rewards in time order;
* ``panels?range=...[&catalog=1]``: experiments, learning, funnel and health (and the catalog)
  in one answer, each as its own route gives it, so that the page loads and polls with one
  request: ``{"experiments": ..., "learning": ..., "funnel": ..., "health": ..., "errors":
  {panel: why}}``; a panel that is not ready is left out and said under ``errors``, and the
  answer is 200 whenever the key is good.

>>> import asyncio
>>> from ray_app.catalog import load_catalog
>>> api = ConsoleApi(None, {"ops": "k"}, load_catalog())
>>> asyncio.run(api.answer("catalog", {}, None))[0]
401
>>> status, body = asyncio.run(api.answer("catalog", {}, "Bearer k"))
>>> status, orjson.loads(body)["slots"][0]["name"]
(200, 'next_step')
>>> orjson.loads(asyncio.run(api.answer("panels", {"catalog": "1"}, "Bearer k"))[1])["errors"]
{'experiments': 'no console aggregation in this replica', 'learning': 'no console aggregation in this replica', 'funnel': 'no console aggregation in this replica', 'health': 'no console aggregation in this replica'}
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from ray_app.catalog import Catalog
from ray_app.collect.parse import iso_ms, key_owner, write_key_from_header
from ray_app.console.feed import ConsoleFeed, ConsoleUnavailable
from ray_app.console.state import RANGES

__all__ = ["ConsoleApi", "catalog_panel"]

READ_KEY = "send a read key (collector.read_keys): Authorization: Bearer <key>"
PANELS = ("learning", "funnel", "health")
_MAX_USER_KEY = 512
#: The longest a user lookup waits for the stream workers' profile (as /v1/profiles does).
_PROFILE_READ_S = 10.0


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": code, "message": message})


def catalog_panel(catalog: Catalog) -> dict[str, Any]:
    """The catalog as the console shows it: per slot its actions with their eligibility rules,
    and the static flow (the control arm's order)."""
    return {
        "version": catalog.version,
        "digest": catalog.digest,
        "source": catalog.source,
        "steps": list(catalog.known_steps),
        "segments": None if catalog.segments is None else list(catalog.segments),
        "negativeEvents": list(catalog.negative_events),
        "slots": [
            {
                "name": slot.name,
                "description": slot.description,
                "kind": slot.kind,
                "default": list(slot.default),
                "staticFlow": [slot.actions[i].id for i in slot.control_order],
                "actions": [a.as_dict() for a in slot.actions],
            }
            for slot in sorted(catalog.slots.values(), key=lambda s: s.index)
        ],
    }


Profiles = Callable[[str], Awaitable[dict[str, Any] | None]]


class ConsoleApi:
    """See the module docstring. ``profiles``: a user's live profile (the ingress's
    :class:`~ray_app.stream.reader.ProfileReader`); ``enrich``: its CRM enrichment."""

    def __init__(
        self,
        feed: ConsoleFeed | None,
        read_keys: Mapping[str, str],
        catalog: Catalog,
        profiles: Profiles | None = None,
        enrich: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.feed = feed
        self.read_keys = dict(read_keys)
        self.profiles = profiles
        self.enrich = enrich
        self._catalog = orjson.dumps(catalog_panel(catalog))

    def authorized(self, authorization: str | None) -> bool:
        """Whether ``Authorization`` holds a read key (Bearer, or Basic with it as user)."""
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else write_key_from_header(authorization)
        return key_owner(key, self.read_keys) is not None

    async def answer(
        self, path: str, query: Mapping[str, str], authorization: str | None
    ) -> tuple[int, bytes]:
        """(status, JSON body) of ``GET /console/api/<path>``."""
        if not self.authorized(authorization):
            return _error(401, "unauthorized", READ_KEY)
        if path == "catalog":
            return 200, self._catalog
        if path == "panels":
            return await self._panels(query)
        if self.feed is None:
            return _error(503, "console_unavailable", "no console aggregation in this replica")
        try:
            if path.startswith("users/"):
                return await self._user(path.removeprefix("users/"))
            if path == "experiments":
                name = query.get("range", "all")
                if name not in RANGES:
                    return _error(400, "invalid_field", f"range: one of {list(RANGES)}")
                path = f"experiments/{name}"
            elif path not in PANELS:
                return _error(404, "not_found", f"no console route {path!r}")
            body = await self.feed.panel(path)
        except ConsoleUnavailable as exc:
            return _error(503, "console_unavailable", str(exc))
        if body is None:
            return _error(503, "console_unavailable", f"{path}: not rendered yet; retry shortly")
        return 200, body

    async def _panels(self, query: Mapping[str, str]) -> tuple[int, bytes]:
        name = query.get("range", "all")
        if name not in RANGES:
            return _error(400, "invalid_field", f"range: one of {list(RANGES)}")
        catalog = [b'"catalog":' + self._catalog] if query.get("catalog") == "1" else []
        found: list[bytes] = []
        errors: dict[str, str] = {}
        try:
            if self.feed is None:
                raise ConsoleUnavailable("no console aggregation in this replica")
            for panel in ("experiments", *PANELS):
                key = f"experiments/{name}" if panel == "experiments" else panel
                body = await self.feed.panel(key)
                if body is None:
                    errors[panel] = f"{key}: not rendered yet; retry shortly"
                else:
                    found.append(b'"' + panel.encode() + b'":' + body)
        except ConsoleUnavailable as exc:  # the same for every panel: not asked again
            found = []
            errors = dict.fromkeys(("experiments", *PANELS), str(exc))
        return 200, b"{" + b",".join([*catalog, *found, b'"errors":' + orjson.dumps(errors)]) + b"}"

    async def _user(self, user_key: str) -> tuple[int, bytes]:
        if not user_key or len(user_key) > _MAX_USER_KEY:
            return _error(400, "invalid_field", "user id: 1 to 512 characters")
        assert self.feed is not None
        history = await self.feed.user(user_key)
        profile, problem = None, None
        if self.profiles is not None:
            try:  # bounded as /v1/profiles is: a worker that does not answer held the request
                profile = await asyncio.wait_for(self.profiles(user_key), _PROFILE_READ_S)
            except TimeoutError:
                problem = f"the profile read took over {_PROFILE_READ_S:g} s"
            except Exception as exc:  # stream workers down or restarting: show what we have
                problem = str(exc)
        if profile is None and history is None:
            message = problem or f"no events applied and no decision kept for {user_key!r}"
            return _error(404, "not_found", message)
        last = (profile or {}).get("lastReceived")
        body = {
            "userKey": user_key,
            "profile": profile,
            "profileError": problem,
            "enrichment": self.enrich(profile) if profile is not None and self.enrich else None,
            "freshness": {
                "lastEventReceivedAt": iso_ms(last) if last else None,
                "ageMs": int(time.time() * 1000) - last if last else None,
            },
            "history": history or [],
            "historyKept": history is not None,
        }
        return 200, orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
