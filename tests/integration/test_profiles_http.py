"""GET /v1/profiles/{user_id}: collector -> Kafka -> stream workers -> the live profile over HTTP."""

import time
import uuid

import httpx
import pytest

from tests.conftest import WRITE_KEY, make_settings

pytestmark = pytest.mark.integration

READ = {"authorization": "Bearer onramp-demo-read-key"}


def test_profile_route_serves_the_live_profile(collector, broker, tmp_path):
    import ray

    from ray_app.enrich import DEFAULTS
    from ray_app.stream import start_supervisor_actor
    from tests.conftest import CRM_PATH

    user = f"p-{uuid.uuid4().hex[:10]}"
    CRM_PATH.write_text(f"accountId,plan,employees\nacct-{user},enterprise,1200\n")
    with httpx.Client(base_url=collector.base_url, timeout=30) as http:
        assert http.get(f"/v1/profiles/{user}").status_code == 401
        assert (
            http.get(f"/v1/profiles/{user}", headers={"authorization": "Bearer nope"}).status_code
            == 401
        )
        r = http.get(f"/v1/profiles/{user}", headers=READ)
        assert r.status_code == 503 and "retry-after" in r.headers  # no stream workers yet

        settings = make_settings(broker.bootstrap, ONRAMP_STREAM__CHECKPOINT_URI=str(tmp_path))
        sup = start_supervisor_actor(settings, broker.bootstrap)
        try:
            ctx = {"onramp": {"sessionId": "s1", "seq": 0, "stepId": "role"}}
            batch = [
                {
                    "type": "identify",
                    "userId": user,
                    "traits": {"role": "founder", "accountId": f"acct-{user}"},
                    "context": {"onramp": {"sessionId": "s1", "seq": 0}},
                },
                {
                    "type": "track",
                    "userId": user,
                    "event": "Step Viewed",
                    "context": {"onramp": {**ctx["onramp"], "seq": 1}},
                },
                {
                    "type": "track",
                    "userId": user,
                    "event": "Step Completed",
                    "properties": {"durationMs": 4200},
                    "context": {"onramp": {**ctx["onramp"], "seq": 2}},
                },
            ]
            assert (
                http.post("/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, "")).status_code
                == 200
            )
            deadline = time.monotonic() + 60
            r = None
            while time.monotonic() < deadline:
                r = http.get(f"/v1/profiles/{user}", headers=READ)
                if r.status_code == 200 and r.json()["profile"]["counts"].get("track") == 2:
                    break
                time.sleep(0.3)
            assert r is not None and r.status_code == 200, r.text if r is not None else None
            body = r.json()
            p = body["profile"]
            assert p["traits"] == {"role": "founder", "accountId": f"acct-{user}"}
            assert p["stepsCompleted"] == ["role"]
            assert body["enrichment"] == {
                "found": True,
                "by": "accountId",
                "accountId": f"acct-{user}",
                "plan": "enterprise",
                "employees": 1200,
            }
            assert p["steps"]["role"]["timeMs"] == 4200
            assert body["freshness"]["ageMs"] >= 0 and body["freshness"][
                "lastEventReceivedAt"
            ].endswith("Z")
            # Basic auth with the read key as user name works too; unknown users are 404
            assert (
                http.get(f"/v1/profiles/{user}", auth=("onramp-demo-read-key", "")).status_code
                == 200
            )
            assert http.get(f"/v1/profiles/nobody-{user}", headers=READ).status_code == 404
            CRM_PATH.write_text("accountId,plan\nacct-other,free\n")  # the CRM changes: reloaded
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                enrichment = http.get(f"/v1/profiles/{user}", headers=READ).json()["enrichment"]
                if not enrichment["found"]:
                    break
                time.sleep(0.3)
            assert enrichment == {"found": False, "by": None, **DEFAULTS}
            metrics = http.get("/metrics").text
            assert 'onramp_stream_records_total{partition="0",outcome="applied"}' in metrics
            count = [
                ln
                for ln in metrics.splitlines()
                if ln.startswith("onramp_stream_freshness_seconds_count")
            ]
            assert count and sum(float(ln.split()[-1]) for ln in count) >= 3  # one a worker
            assert "onramp_stream_consumer_lag_records" in metrics
            assert any(  # labelled with the replica that counted it (telemetry.replicas)
                ln.startswith("onramp_enrichment_lookups_total{") and 'result="miss"' in ln
                for ln in metrics.splitlines()
            )
        finally:
            ray.get(sup.stop.remote(), timeout=120)
            ray.kill(sup)
