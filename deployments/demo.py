"""The demo onboarding app, served by the collector's ingress at ``/demo/``.

Static files (``deployments/demo/``) and the browser SDK (``sdk/js/onramp.js``) are served from
a fixed list, never from a path the request names. The demo exists only where Onramp is
reachable from this machine alone (:func:`ray_app.config.local_only`: the HTTP ingress and Kafka
on loopback, as ``onramp up`` and ``make demo`` run by default); anywhere else ``/demo/`` answers
404. ``/demo/config.json`` gives the page the keys it needs, and only keys *named* ``demo``
(``collector.write_keys.demo``, ``collector.decide_keys.demo`` and, for the page's profile panel,
``collector.read_keys.demo``): a deployment that configures its own keys under other names
exposes nothing, and the demo then explains why it is unavailable.

>>> sorted(FILES)
['app.js', 'index.html', 'sdk/onramp.iife.js', 'sdk/onramp.js', 'style.css']
>>> demo_config(Settings())["decideKey"]
'onramp-demo-decide-key'
>>> demo_config(Settings(collector={"write_keys": {"web": "k"}}))
>>> demo_config(Settings(collector={"host": "0.0.0.0"}))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployments.api import static_file
from ray_app import __version__
from ray_app.config import Settings, local_only

__all__ = ["DEMO_KEY_NAME", "FILES", "demo_config", "demo_enabled", "demo_file"]

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
DEMO_KEY_NAME = "demo"

FILES: dict[str, tuple[Path, str]] = {
    "index.html": (_HERE / "demo" / "index.html", "text/html; charset=utf-8"),
    "app.js": (_HERE / "demo" / "app.js", "text/javascript; charset=utf-8"),
    "style.css": (_HERE / "demo" / "style.css", "text/css; charset=utf-8"),
    "sdk/onramp.js": (_ROOT / "sdk" / "js" / "onramp.js", "text/javascript; charset=utf-8"),
    "sdk/onramp.iife.js": (
        _ROOT / "sdk" / "js" / "onramp.iife.js",
        "text/javascript; charset=utf-8",
    ),
}


def demo_file(name: str) -> tuple[bytes, str] | None:
    """(content, media type) of a demo file, or None when it is not one (or not installed)."""
    return static_file(FILES, name)


def demo_enabled(
    settings: Settings, bootstrap: str | None = None, http_host: str | None = None
) -> bool:
    """Whether ``/demo/`` is served: only by an Onramp nobody else can reach."""
    return local_only(settings, bootstrap, http_host)


def demo_config(
    settings: Settings, bootstrap: str | None = None, http_host: str | None = None
) -> dict[str, Any] | None:
    """What the demo page needs, or None when the demo is off or there is no write key named
    ``demo``."""
    write = settings.collector.write_keys.get(DEMO_KEY_NAME)
    if write is None or not demo_enabled(settings, bootstrap, http_host):
        return None
    decide = settings.collector.decide_keys.get(DEMO_KEY_NAME)
    read = settings.collector.read_keys.get(DEMO_KEY_NAME)
    return {
        "writeKey": write.get_secret_value(),
        "decideKey": decide.get_secret_value() if decide is not None else None,
        "readKey": read.get_secret_value() if read is not None else None,
        "version": __version__,
        "decideTimeoutMs": 1500,
    }
