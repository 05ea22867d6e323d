"""The Onramp console, served by the collector's ingress at ``/console/``.

The page (``deployments/console/``: plain ES modules and CSS, no build step; charts are inline
SVG drawn by ``charts.js``) is served from a fixed list of files, never from a path the request
names, without a key: it opens on a login prompt. The key the user pastes stays in the browser's
``sessionStorage`` and goes with every data request as ``Authorization: Bearer``; nothing is
stored server side. The data routes ``/console/api/...`` are :class:`ray_app.console.api.ConsoleApi`
(read key, else 401), answered from the panels of the console's aggregator
(:mod:`ray_app.console.service`) that the replica keeps (:class:`ray_app.console.feed.ConsoleFeed`).
Each data answer says what it cost the replica in a ``Server-Timing`` header.

>>> sorted(FILES)
['app.js', 'charts.js', 'index.html', 'panels.js', 'style.css']
>>> console_file("../app.py") is None, console_file("index.html")[1]
(True, 'text/html; charset=utf-8')
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from deployments.api import static_file
from ray_app.catalog import Catalog
from ray_app.config import Settings
from ray_app.console.api import ConsoleApi
from ray_app.console.feed import ConsoleFeed

__all__ = ["FILES", "ConsoleRoutes", "console_file"]

_HERE = Path(__file__).resolve().parent / "console"
_JS = "text/javascript; charset=utf-8"

FILES: dict[str, tuple[Path, str]] = {
    "index.html": (_HERE / "index.html", "text/html; charset=utf-8"),
    "app.js": (_HERE / "app.js", _JS),
    "panels.js": (_HERE / "panels.js", _JS),
    "charts.js": (_HERE / "charts.js", _JS),
    "style.css": (_HERE / "style.css", "text/css; charset=utf-8"),
}

_NOT_FOUND = b'{"error":"not_found","message":"no such console file"}'


def console_file(name: str) -> tuple[bytes, str] | None:
    """(content, media type) of a console file, or None when it is not one."""
    return static_file(FILES, name)


#: On every console answer: no content sniffing (an answer is what its type says), and the
#: console is never framed by another site (clickjacking), nor given plugins or another base.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
}


class ConsoleRoutes:
    """``GET /console`` and everything under it, for one ingress replica."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        read_keys: dict[str, str],
        catalog: Catalog,
        profiles: Any,
        enrich: Any,
    ) -> None:
        from ray_app.console.service import console_aggregator

        feed = ConsoleFeed(lambda: console_aggregator(settings, bootstrap))
        self.api = ConsoleApi(feed, read_keys, catalog, profiles.get, enrich)
        self._files = {name: console_file(name) for name in FILES}  # read once

    async def answer(self, name: str, request: Request) -> Response:
        """The answer to ``GET /console<name>``."""
        if name == "":
            return Response(
                status_code=307, headers={"Location": f"{request.url.path}/", **SECURITY_HEADERS}
            )
        if not name.startswith("/"):  # /consolexyz
            return Response(_NOT_FOUND, 404, SECURITY_HEADERS, media_type="application/json")
        name = name[1:]
        if name.startswith("api/"):
            started = time.perf_counter()
            status, body = await self.api.answer(
                name[4:], request.query_params, request.headers.get("authorization")
            )
            cost = (time.perf_counter() - started) * 1000
            headers = {
                "Cache-Control": "no-store",
                "Server-Timing": f"console;dur={cost:.3f}",
                **SECURITY_HEADERS,
            }
            return Response(body, status, headers, media_type="application/json")
        found = self._files.get(name or "index.html")
        if found is None:
            return Response(_NOT_FOUND, 404, SECURITY_HEADERS, media_type="application/json")
        content, media = found
        headers = {"Cache-Control": "no-cache", **SECURITY_HEADERS}
        return Response(content, media_type=media, headers=headers)
