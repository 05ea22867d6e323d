"""The browser SDK and the demo app in a real browser (Debian's chromium, headless, Playwright).

One browser and one Serve app (``/web``: the demo's write key, a CORS origin for the Segment page)
for the whole module; stream workers so the demo's decisions see the user's live profile.
Collector outages are simulated in the browser with Playwright's route interception
(``route.abort("connectionrefused")`` on ``/v1/batch``), which is what a client-side queue sees
when the collector is down; slow decisions with routes held past the SDK's timeout.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ray_app.kafka.broker import free_port
from tests.conftest import WRITE_KEY, ServeApp, deploy, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "artifacts" / "screenshots"
NPM_CACHE = ROOT / ".cache" / "npm"
SEGMENT_PACKAGE = "@segment/analytics-next@1.84.3"
DEMO_WRITE_KEY = "onramp-demo-write-key"
FLOW = [
    "welcome",
    "role",
    "team_size",
    "goals",
    "integrations",
    "invite_teammates",
    "first_project",
]


class Web:
    def __init__(self, app: ServeApp, page_origin: str, page_port: int) -> None:
        self.app = app
        self.base = app.base_url
        self.demo = f"{app.base_url}/demo/"
        self.page_origin = page_origin
        self.page_port = page_port


@pytest.fixture(scope="module")
def web(broker, serve_port, tmp_path_factory) -> Iterator[Web]:
    import ray
    from ray import serve

    from ray_app.stream import start_supervisor_actor

    page_port = free_port()
    page_origin = f"http://localhost:{page_port}"  # another origin than the collector's
    settings = make_settings(
        broker.bootstrap,
        ONRAMP_COLLECTOR__WRITE_KEYS=json.dumps({"demo": DEMO_WRITE_KEY, "test": WRITE_KEY}),
        ONRAMP_COLLECTOR__CORS_ORIGINS=json.dumps([page_origin]),
        # the model arm, exploring uniformly: the order differs from the static flow's
        ONRAMP_DECIDE__ARMS='{"control": 0, "treatment": 1}',
        ONRAMP_DECIDE__POLICY="epsilon_greedy",
        ONRAMP_DECIDE__EPSILON="1",
        ONRAMP_STREAM__CHECKPOINT_URI=str(tmp_path_factory.mktemp("browser-ckpt")),
    )
    sup = start_supervisor_actor(settings, broker.bootstrap)
    app = deploy("onramp-web", "/web", settings, serve_port)
    _wait_stream_live(app.base_url)
    yield Web(app, page_origin, page_port)
    serve.delete("onramp-web")
    ray.get(sup.stop.remote(), timeout=120)
    ray.kill(sup)


def _wait_stream_live(base: str) -> None:
    """Until a fresh event shows in its profile: the stream workers have caught up with the
    topic's backlog (earlier tests' events), so the demo's decisions see live profiles."""
    import httpx

    user = f"probe-{time.time_ns()}"
    call = {"userId": user, "traits": {}, "writeKey": DEMO_WRITE_KEY}
    assert httpx.post(f"{base}/v1/identify", json=call, timeout=10).status_code == 200
    read = {"authorization": "Bearer onramp-demo-read-key"}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/v1/profiles/{user}", headers=read, timeout=10).status_code == 200:
            return
        time.sleep(0.3)
    raise AssertionError("stream workers did not apply a fresh event within 90 s")


def _step(page: Any) -> str:
    return page.eval_on_selector("#step", "e => e.dataset.step")


def _wait_step_change(page: Any, old: str, timeout_ms: int = 20_000) -> str:
    page.wait_for_function(
        "old => document.querySelector('#step').dataset.step !== old", arg=old, timeout=timeout_ms
    )
    page.wait_for_selector("#step form, #step ul.checklist", timeout=timeout_ms)
    return _step(page)


def _sign_up(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#step form")
    assert _step(page) == "signup"
    page.click("#step button[type=submit]")
    assert _wait_step_change(page, "signup") == "welcome"


def _sdk(page: Any, expr: str) -> Any:
    return page.evaluate(f"() => {{ const c = window.onrampDemo.client; return {expr}; }}")


def _drain(page: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _sdk(page, "c.queued") and time.monotonic() < deadline:
        page.evaluate("() => window.onrampDemo.client.flush()")
        time.sleep(0.2)
    assert _sdk(page, "c.queued") == 0, _sdk(page, "c.stats()")


def test_a_user_walks_the_demo_and_onramp_sees_every_event_in_order(browser, web, read_topic):
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("demo-*.png"):
        old.unlink()
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _sign_up(page, web.demo)
    page.screenshot(path=str(SHOTS / "demo-01-welcome.png"))
    content = page.eval_on_selector("#step", "e => e.dataset.content")
    shown = ["welcome"]
    decided = []
    while True:
        step = _step(page)
        if step == "done":
            break
        decided.append(page.eval_on_selector("#step", "e => e.dataset.decided"))
        page.click("#step button[type=submit]")
        step = _wait_step_change(page, step)
        shown.append(step)
        page.screenshot(path=str(SHOTS / f"demo-{len(shown):02d}-{step}.png"))
    assert sorted(shown[:-1]) == sorted(FLOW) and shown[-1] == "done", shown
    demo = page.evaluate(
        "() => { const s = window.onrampDemo; return {decisions: s.decisions.map(d => ({"
        "slot: d.slot, chosen: d.chosen, decisionId: d.decisionId, fallback: d.fallback,"
        "reason: d.reason})), userId: s.client.userId, anonymousId: s.client.anonymousId,"
        "sessionId: s.client.sessionId, enqueued: s.client.stats().enqueued,"
        "history: s.history.map(h => ({step: h.step, remaining: h.remaining, decision: h.decision"
        " && {chosen: h.decision.chosen, fallback: h.decision.fallback, reason: h.decision.reason,"
        " decisionId: h.decision.decisionId}}))} }"
    )
    assert not errors, errors

    # decisions change the page: the welcome content and every step after it are what Onramp
    # chose; the static order only where Onramp did not answer
    by_slot: dict[str, list[dict[str, Any]]] = {}
    for d in demo["decisions"]:
        by_slot.setdefault(d["slot"], []).append(d)
    [welcome] = by_slot["welcome_content"]
    assert not welcome["fallback"], welcome
    assert content == welcome["chosen"]
    history = demo["history"]
    assert [h["step"] for h in history] == ["signup", *shown]
    steps = history[2:-1]  # the six steps after welcome, each shown after a next_step decision
    for h in steps:
        d = h["decision"]
        assert h["step"] == (h["remaining"][0] if d["fallback"] else d["chosen"]), h
    # The first step after welcome needs the welcome completion applied to the profile (the
    # catalog requires it): the page retries a 422 for a few seconds, then takes the static
    # order. Every later decision is answered.
    assert steps[0]["decision"]["reason"] in (None, "http_422"), steps[0]
    assert all(not h["decision"]["fallback"] for h in steps[1:]), steps
    answered = [h["decision"] for h in steps if not h["decision"]["fallback"]]
    assert decided[2:] == ["onramp"] * 5, decided
    [checklist] = by_slot["checklist_order"]
    assert not checklist["fallback"]
    assert page.eval_on_selector("#step", "e => e.dataset.first") == checklist["chosen"]

    # every event reached onramp.events once, in one session, seq 0..n-1, in the order sent
    _drain(page)
    events = read_topic("onramp.events").wait_for(
        lambda v: v.get("anonymousId") == demo["anonymousId"], demo["enqueued"], timeout_s=30
    )
    assert len(events) == demo["enqueued"]
    values = sorted((e["value"] for e in events), key=lambda v: v["seq"])
    assert [v["seq"] for v in values] == list(range(len(values)))
    assert {v["sessionId"] for v in values} == {demo["sessionId"]}
    assert len({v["messageId"] for v in values}) == len(values)
    # the page view and the sign-up screen's are anonymous; from identify on, the user's
    assert all(v["userKey"] == demo["userId"] for v in values[2:])
    assert [v["userKey"] for v in values[:2]] == [demo["anonymousId"]] * 2
    viewed = [v["stepId"] for v in values if v.get("event") == "Step Viewed"]
    assert viewed == shown[:-1]
    names = [v.get("event") or v["type"] for v in values]
    assert names[:4] == ["page", "Sign Up Viewed", "identify", "Signed Up"]
    assert names[-1] == "Onboarding Completed"
    # the SDK echoes each step decision's id on the step's events: rewards join exactly
    ids = {d["chosen"]: d["decisionId"] for d in answered}
    for v in values:
        if v.get("event") in ("Step Viewed", "Step Completed") and v["stepId"] in ids:
            assert v["properties"]["decisionId"] == ids[v["stepId"]], v
    decisions = read_topic("onramp.decisions").wait_for(
        lambda v: v.get("userKey") == demo["userId"], len(demo["decisions"]), timeout_s=20
    )
    logged = {d["value"]["decisionId"]: d["value"]["chosen"] for d in decisions}
    for d in demo["decisions"]:
        if not d["fallback"]:
            assert logged[d["decisionId"]] == d["chosen"]

    # the panel shows the live profile as Onramp keeps it, the anonymous steps merged in
    page.wait_for_function(
        "n => (document.querySelector('#profile-completed')?.textContent || '')"
        ".split(', ').length === n",
        arg=len(FLOW),
        timeout=20_000,
    )
    page.wait_for_function(
        "anon => document.querySelector('#profile-merged')?.textContent === anon",
        arg=demo["anonymousId"],
        timeout=20_000,
    )
    panel = page.evaluate(
        "() => Object.fromEntries(['key', 'merged', 'events'].map(k =>"
        " [k, document.querySelector('#profile-' + k).textContent]))"
    )
    assert panel["key"] == demo["userId"] and panel["merged"] == demo["anonymousId"], panel
    assert '"track:Sign Up Viewed":1' in panel["events"], panel  # the anonymous history
    page.screenshot(path=str(SHOTS / "demo-09-done-with-profile.png"))
    context.close()


def test_a_slow_decide_falls_back_within_the_timeout(browser, web):
    context = browser.new_context()
    page = context.new_page()
    held: list[Any] = []
    page.route("**/v1/decide", lambda route: held.append(route))  # never answered in time
    page.goto(web.demo + "?decideTimeoutMs=800")
    page.wait_for_selector("#step form")
    page.click("#step button[type=submit]")
    assert _wait_step_change(page, "signup") == "welcome"
    assert page.eval_on_selector("#step", "e => e.dataset.content") == "checklist_intro"
    page.click("#step button[type=submit]")
    assert _wait_step_change(page, "welcome") == "role"  # the static order's next step
    assert page.eval_on_selector("#step", "e => e.dataset.decided") == "fallback:timeout"
    assert len(held) == 2  # both requests reached the (held) route: Onramp was asked
    waited = page.evaluate(
        "() => window.onrampDemo.decisions.map(d => [d.slot, d.reason, d.latencyMs])"
    )
    assert [w[:2] for w in waited] == [["welcome_content", "timeout"], ["next_step", "timeout"]]
    assert all(800 <= w[2] < 800 + 400 for w in waited), waited  # the timeout, not later
    for route in held:
        route.abort()
    context.close()


def test_the_offline_queue_survives_an_outage_and_a_reload(browser, web, read_topic):
    context = browser.new_context()
    page = context.new_page()
    _sign_up(page, web.demo)
    page.click("#step button[type=submit]")  # welcome done and applied: no 422 waits below
    _wait_step_change(page, "welcome")
    _drain(page)
    page.route("**/v1/batch", lambda route: route.abort("connectionrefused"))  # collector down
    for _ in range(2):
        step = _step(page)
        page.click("#step button[type=submit]")
        _wait_step_change(page, step)
    queued = page.evaluate("() => JSON.parse(localStorage.getItem('onramp.queue'))")
    assert len(queued) >= 4, queued  # two steps viewed and completed, at least
    page.wait_for_function("() => !window.onrampDemo.client.stats().healthy")
    assert "unreachable" in page.inner_text("#sdk")
    page.reload()  # still down: the queue is in localStorage, nothing is lost
    page.wait_for_selector("#step form")
    after = page.evaluate("() => JSON.parse(localStorage.getItem('onramp.queue'))")
    kept = [e["messageId"] for e in queued]
    assert [e["messageId"] for e in after][: len(kept)] == kept
    page.unroute("**/v1/batch")  # the collector is back: the retry delivers everything
    page.wait_for_function(
        "() => window.onrampDemo.client.queued === 0", timeout=20_000, polling=200
    )
    ids = {e["messageId"] for e in after}
    found = read_topic("onramp.events").wait_for(lambda v: v["messageId"] in ids, len(ids))
    assert {f["value"]["messageId"] for f in found} == ids
    context.close()


def test_what_is_queued_goes_out_by_beacon_when_the_page_is_left(browser, web, read_topic):
    context = browser.new_context()
    page = context.new_page()
    _sign_up(page, web.demo + "?flushMs=600000")  # the time bound is 10 minutes: nothing sent
    queued = page.evaluate("() => JSON.parse(localStorage.getItem('onramp.queue'))")
    assert len(queued) >= 5, queued  # page, Sign Up Viewed, identify, Signed Up, Step Viewed
    assert page.evaluate("() => window.onrampDemo.client.stats().sent") == 0
    page.goto("about:blank")  # pagehide: the SDK hands the queue to navigator.sendBeacon
    ids = {e["messageId"] for e in queued}
    found = read_topic("onramp.events").wait_for(lambda v: v["messageId"] in ids, len(ids))
    assert {f["value"]["messageId"] for f in found} == ids
    context.close()


def test_alias_links_the_anonymous_browser_to_a_user_id(browser, web, read_topic):
    context = browser.new_context()
    page = context.new_page()
    page.goto(web.demo)
    page.wait_for_selector("#step form")  # the SDK is up, nobody identified yet
    user = f"aliased-{time.time_ns()}"
    sent = page.evaluate(
        "user => { const c = window.onrampDemo.client; c.alias(user); c.track('Aliased');"
        " return {anonymousId: c.anonymousId, userId: c.userId,"
        " events: c.queuedEvents().slice(-2)}; }",
        user,
    )
    alias, after = sent["events"]
    assert sent["userId"] == user
    assert (alias["type"], alias["userId"], alias["previousId"]) == (
        "alias",
        user,
        sent["anonymousId"],
    )
    _drain(page)
    stats = _sdk(page, "c.stats()")
    assert stats["dropped"] == 0 and stats["sent"] >= 2, stats  # the collector took both
    ids = {alias["messageId"], after["messageId"]}
    found = {
        f["value"]["messageId"]: f
        for f in read_topic("onramp.events").wait_for(lambda v: v["messageId"] in ids, 2)
    }
    assert set(found) == ids
    a = found[alias["messageId"]]
    assert a["key"] == user.encode()
    assert (a["value"]["type"], a["value"]["previousId"]) == ("alias", sent["anonymousId"])
    t = found[after["messageId"]]["value"]
    assert (t["userKey"], t["anonymousId"]) == (user, sent["anonymousId"])
    context.close()


# -- an unmodified third-party client: Segment's analytics-next ------------------------------


@pytest.fixture(scope="module")
def analytics_next() -> Path:
    """dist/umd of @segment/analytics-next from npm (cached in .cache/npm, never in git)."""
    target = NPM_CACHE / SEGMENT_PACKAGE.replace("/", "_")
    umd = target / "package" / "dist" / "umd"
    if not (umd / "index.js").exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to fetch @segment/analytics-next: `make venv` installs it"
        target.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [npm, "pack", SEGMENT_PACKAGE, "--pack-destination", str(target), "--silent"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.returncode == 0, r.stderr
        [tgz] = target.glob("*.tgz")
        with tarfile.open(tgz) as tar:
            tar.extractall(target, filter="data")
    return umd


def _segment_page(web: Web) -> str:
    api_host = web.base.removeprefix("http://") + "/v1"
    settings = {
        "integrations": {
            "Segment.io": {"apiKey": DEMO_WRITE_KEY, "apiHost": api_host, "protocol": "http"}
        }
    }
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>analytics-next</title>
<script>window.analytics = {{ _cdn: location.origin }};</script>
<script src="/analytics-next/bundles/index.js"></script></head><body>
<script>
window.sent = (async () => {{
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load(
    {{ writeKey: {json.dumps(DEMO_WRITE_KEY)}, cdnSettings: {json.dumps(settings)} }});
  window.segment = analytics;
  const out = [];
  out.push(await analytics.identify('seg-' + Math.random().toString(16).slice(2), {{ plan: 'team' }}));
  out.push(await analytics.track('Signed Up', {{ method: 'email' }}));
  out.push(await analytics.page('Onboarding', 'Welcome'));
  return out.map(ctx => ({{ id: ctx.event.messageId, type: ctx.event.type,
                            failed: ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : null }}));
}})();
</script></body></html>"""


@pytest.fixture(scope="module")
def segment_site(web, analytics_next) -> Iterator[str]:
    page_html = _segment_page(web).encode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path in ("/", "/index.html"):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page_html)))
                self.end_headers()
                self.wfile.write(page_html)
                return
            if self.path == "/onramp.js":  # Onramp's SDK beside analytics-next, same origin
                body = (ROOT / "sdk" / "js" / "onramp.js").read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/javascript; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path.startswith("/analytics-next/bundles/"):
                self.path = self.path.removeprefix("/analytics-next/bundles")
                super().do_GET()
                return
            self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", web.page_port), functools.partial(Handler, directory=str(analytics_next))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield web.page_origin + "/"
    server.shutdown()
    server.server_close()


def test_unmodified_segment_analytics_next_reaches_kafka(
    browser, web, segment_site, read_topic, collector
):
    context = browser.new_context()
    page = context.new_page()
    posts: list[dict[str, Any]] = []
    wire: list[tuple[str, str]] = []  # what chromium put on the wire, preflights included
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.on(
        "Network.requestWillBeSent",
        lambda e: wire.append((e["request"]["method"], e["request"]["url"])),
    )
    page.on(
        "requestfinished",
        lambda r: (
            posts.append({"url": r.url, "method": r.method, "headers": r.headers})
            if "/v1/" in r.url
            else None
        ),
    )
    page.goto(segment_site)
    sent = page.evaluate("() => window.sent")
    assert [s["type"] for s in sent] == ["identify", "track", "page"]
    assert all(s["failed"] is None for s in sent), sent
    ids = {s["id"] for s in sent}
    found = read_topic("onramp.events").wait_for(lambda v: v["messageId"] in ids, len(ids))
    assert {f["value"]["messageId"] for f in found} == ids
    assert {f["value"]["source"] for f in found} == {"demo"}
    # cross-origin POSTs with an Authorization header: chromium preflighted each route
    # (OPTIONS, seen on the wire through CDP) and the collector's answer allowed this origin ...
    for _ in range(50):  # requestfinished reaches Python after the page's promises settle
        if posts:
            break
        page.wait_for_timeout(100)
    assert posts and all(p["url"].startswith(web.base + "/v1/") for p in posts)
    assert all("authorization" in p["headers"] for p in posts if p["method"] == "POST")
    posted = {url for method, url in wire if method == "POST" and "/v1/" in url}
    preflighted = {url for method, url in wire if method == "OPTIONS"}
    assert posted and posted <= preflighted, wire
    # ... while a collector whose cors_origins do not list this page refuses the preflight
    blocked = page.evaluate(
        """async url => { try { await fetch(url, {method: 'POST', body: '{}',
             headers: {Authorization: 'Basic ' + btoa('k:'), 'Content-Type': 'application/json'}});
             return 'sent'; } catch (e) { return 'blocked'; } }""",
        collector.base_url + "/v1/track",
    )
    assert blocked == "blocked"
    context.close()


def test_onramp_beside_segment_shares_its_anonymous_id(browser, web, segment_site, read_topic):
    """analytics-next on the page, then Onramp's SDK with reuseSegmentAnonymousId: one anonymous
    id for both libraries (read from analytics-next's localStorage entry, and from its cookie
    alone), a group() call reaches Kafka, and bad calls resolve instead of throwing."""
    context = browser.new_context()
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.goto(segment_site)
    segment_sent = page.evaluate("() => window.sent")
    assert all(s["failed"] is None for s in segment_sent), segment_sent
    group_id = f"acct-{time.time_ns()}"
    out = page.evaluate(
        """async ([host, writeKey, groupId]) => {
          const onramp = await import('/onramp.js');
          const options = { host, writeKey, listenToPage: false, reuseSegmentAnonymousId: true };
          const segmentId = window.segment.user().anonymousId();
          const c = onramp.createClient({ ...options, storagePrefix: 'onramp-a' });
          const fromStorage = c.anonymousId;
          const g = await c.group(groupId, { plan: 'team', seats: 12 });
          const t = await c.track('Shared Anonymous Id');
          const bad = [];
          for (const call of [() => c.track(), () => c.track('E', 'not an object'),
                              () => c.reportOutcome('unknown-decision', 'completed'), () => c.alias()]) {
            try {
              const p = call();
              const r = await p;
              bad.push(p instanceof Promise && r.ok === false && typeof r.error === 'string');
            } catch (e) {
              bad.push('threw: ' + e);
            }
          }
          const delivered = await c.flush();
          const stats = c.stats();
          c.close();
          localStorage.removeItem('ajs_anonymous_id');  // only analytics-next's cookie is left
          const c2 = onramp.createClient({ ...options, storagePrefix: 'onramp-b' });
          const fromCookie = c2.anonymousId;
          c2.close();
          return { segmentId, fromStorage, fromCookie, cookie: document.cookie, bad, delivered, stats,
                   ids: [g.event.messageId, t.event.messageId] };
        }""",
        [web.base, DEMO_WRITE_KEY, group_id],
    )
    segment_id = out["segmentId"]
    assert segment_id and out["fromStorage"] == segment_id, out
    assert out["fromCookie"] == segment_id, out  # analytics-next's raw cookie value
    assert out["bad"] == [True] * 4, out["bad"]
    assert out["delivered"] is True and out["stats"]["sent"] == 2, out["stats"]
    assert page_errors == []
    ids = set(out["ids"]) | {s["id"] for s in segment_sent}
    found = {
        f["value"]["messageId"]: f["value"]
        for f in read_topic("onramp.events").wait_for(
            # the clients' own records (the stream may also forward them to the id the
            # identify merged the anonymous profile into: those are onramp.forward records)
            lambda v: v["messageId"] in ids and not str(v.get("type", "")).startswith("onramp."),
            len(ids),
        )
    }
    assert set(found) == ids
    # analytics-next's own events and Onramp's carry one anonymous id
    assert {v["anonymousId"] for v in found.values()} == {segment_id}
    g = found[out["ids"][0]]
    assert (g["type"], g["groupId"], g["traits"]) == (
        "group",
        group_id,
        {"plan": "team", "seats": 12},
    )
    assert found[out["ids"][1]]["event"] == "Shared Anonymous Id"
    context.close()
