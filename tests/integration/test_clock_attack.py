"""Issue 15's watermark attack, end to end: collector -> Kafka -> stream workers.

An attacker with the public write key sends events stamped just under ``stream.max_event_future_s``
ahead of the server's clock, every 100 ms, to many users (so to every partition). Before the fix
this moved every partition's watermark to "now + lateness" and made every honest event sent
afterwards late. The watermark now advances by ``min(event time, receivedAt)``, so every honest
event must be applied and none may reach ``onramp.events.late``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

import httpx
import pytest

from tests.conftest import WRITE_KEY, make_settings

pytestmark = pytest.mark.integration

READ = {"authorization": "Bearer onramp-demo-read-key"}


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_client_clock_ahead_of_the_server_leaves_no_honest_event_late(
    collector, broker, read_topic, tmp_path
):
    import ray

    from ray_app.stream import start_supervisor_actor

    run = uuid.uuid4().hex[:8]
    # A lateness shorter than how far ahead the attacker may stamp: with the watermark following
    # event time (the old rule) every honest event would be late; the shipped defaults (300 s
    # lateness, 60 s future) leave a margin that would hide the bug from this test.
    settings = make_settings(
        broker.bootstrap,
        ONRAMP_STREAM__CHECKPOINT_URI=str(tmp_path),
        ONRAMP_STREAM__ALLOWED_LATENESS_MS="10000",
        ONRAMP_STREAM__MAX_EVENT_FUTURE_S="120",
    )
    ahead_s = settings.stream.max_event_future_s - 5  # accepted by validation, barely
    sup = start_supervisor_actor(settings, broker.bootstrap)
    late = read_topic(settings.topics.late)
    honest_users = [f"honest-{run}-{i}" for i in range(24)]
    try:
        with httpx.Client(base_url=collector.base_url, auth=(WRITE_KEY, ""), timeout=30) as http:
            started = time.monotonic()
            sent_honest = 0
            tick = 0
            while time.monotonic() - started < 6.0:
                now = dt.datetime.now(dt.UTC)
                attack = [
                    {
                        "type": "track",
                        "userId": f"attacker-{run}-{tick}-{k}",
                        "event": "Step Viewed",
                        "timestamp": _iso(now + dt.timedelta(seconds=ahead_s)),
                    }
                    for k in range(8)  # many keys: every partition's watermark is a target
                ]
                r = http.post("/v1/batch", json={"batch": attack})
                assert r.status_code == 200, r.text
                if time.monotonic() - started > 1.5:  # honest traffic after the attack began
                    honest = [
                        {
                            "type": "track",
                            "userId": u,
                            "event": "Step Viewed",
                            "messageId": f"{u}-{tick}",
                            "timestamp": _iso(now),
                        }
                        for u in honest_users
                    ]
                    r = http.post("/v1/batch", json={"batch": honest})
                    assert r.status_code == 200, r.text
                    sent_honest += 1
                tick += 1
                time.sleep(0.1)
            assert sent_honest >= 20
            deadline = time.monotonic() + 60
            pending = set(honest_users)
            while pending and time.monotonic() < deadline:
                for u in sorted(pending):
                    r = http.get(f"/v1/profiles/{u}", headers=READ, auth=None)
                    if (
                        r.status_code == 200
                        and r.json()["profile"]["counts"].get("track", 0) == sent_honest
                    ):
                        pending.discard(u)
                time.sleep(0.3)
            assert not pending, (
                f"{len(pending)} honest users lack events, e.g. {sorted(pending)[:3]}"
            )
        late_honest = late.wait_for(
            lambda v: str((v.get("event") or {}).get("userId", "")).startswith(f"honest-{run}"),
            1,
            3,
        )
        assert late_honest == []
    finally:
        ray.get(sup.stop.remote(), timeout=120)
        ray.kill(sup)
