"""Identity stitching end to end (issue 16): a visitor's anonymous steps, then sign-up, over real
Serve HTTP, the session broker and real stream workers. The anonymous history is merged into the
known id's profile (in another partition), both ids read the same profile, decisions keep the
anonymous id's arm and are logged under the known id, and the merge is counted on /metrics."""

import time
import uuid

import httpx
import pytest

from tests.conftest import WRITE_KEY, make_settings

pytestmark = [pytest.mark.integration]

READ = {"authorization": "Bearer onramp-demo-read-key"}
DECIDE = {"authorization": "Bearer onramp-demo-decide-key"}


@pytest.fixture
def stream(collector, broker, tmp_path):
    """Stream workers for the session collector (the named supervisor actor)."""
    import ray

    from ray_app.stream import start_supervisor_actor

    settings = make_settings(broker.bootstrap, ONRAMP_STREAM__CHECKPOINT_URI=str(tmp_path))
    sup = start_supervisor_actor(settings, broker.bootstrap)
    yield sup
    ray.get(sup.stop.remote(), timeout=120)
    ray.kill(sup)


def _ids(settings) -> tuple[str, str]:
    """(anonymousId, userId) in different partitions and, unmerged, in different arms: the
    merged profile and the sticky arm can only come from stitching."""
    from ray_app.decide import Arms
    from ray_app.kafka.client import partition_for

    arms, partitions = Arms(settings.decide), settings.kafka.partitions
    while True:
        tag = uuid.uuid4().hex[:10]
        anon, user = f"anon-{tag}", f"user-{tag}"
        if partition_for(anon.encode(), partitions) != partition_for(
            user.encode(), partitions
        ) and arms.assign(anon, None) != arms.assign(user, None):
            return anon, user


def _steps(anon: str, steps: list[str]) -> dict:
    batch = []
    for n, step in enumerate(steps):
        for k, name in enumerate(("Step Viewed", "Step Completed")):
            batch.append(
                {
                    "type": "track",
                    "anonymousId": anon,
                    "event": name,
                    "context": {"onramp": {"sessionId": f"s-{anon}", "seq": 2 * n + k,
                                           "stepId": step}},
                }
            )  # fmt: skip
    return {"batch": batch}


def _poll(http: httpx.Client, path: str, done, timeout_s: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        r = http.get(path, headers=READ)
        if (r.status_code == 200 and done(r.json()["profile"])) or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def _merges(metrics: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("onramp_identity_merges_total{") and 'outcome="merged"' in line
    )


def test_sign_up_merges_the_anonymous_history(collector, stream, read_topic):
    anon, user = _ids(collector.settings)
    decisions = read_topic(collector.settings.topics.decisions)
    with httpx.Client(base_url=collector.base_url, timeout=30) as http:
        # before sign-up: anonymous steps, and a decision for the anonymous visitor
        sent = http.post("/v1/batch", json=_steps(anon, ["welcome", "role"]), auth=(WRITE_KEY, ""))
        assert sent.status_code == 200, sent.text
        r = _poll(http, f"/v1/profiles/{anon}", lambda p: len(p["stepsCompleted"]) == 2)
        assert r.status_code == 200, r.text
        assert r.json()["profile"]["stepsCompleted"] == ["role", "welcome"]
        ask = {"anonymous_id": anon, "slot": "next_step"}
        before = http.post("/v1/decide", json=ask, headers=DECIDE)
        assert before.status_code == 200, before.text

        # sign-up: identify with both ids; the merge happens in the stream
        identify = {
            "type": "identify",
            "userId": user,
            "anonymousId": anon,
            "traits": {"role": "founder"},
        }
        sent = http.post("/v1/batch", json={"batch": [identify]}, auth=(WRITE_KEY, ""))
        assert sent.status_code == 200, sent.text
        r = _poll(http, f"/v1/profiles/{user}", lambda p: anon in p["mergedFrom"])
        assert r.status_code == 200, r.text
        merged = r.json()["profile"]
        assert merged["userKey"] == user and merged["userId"] == user
        assert merged["mergedFrom"] == [anon] and merged["assignmentKey"] == anon
        assert merged["stepsCompleted"] == ["role", "welcome"]
        assert merged["traits"] == {"role": "founder"}
        assert anon in merged["anonymousIds"]
        # the anonymous id now reads the merged profile
        via_anon = http.get(f"/v1/profiles/{anon}", headers=READ)
        assert via_anon.status_code == 200, via_anon.text
        assert via_anon.json()["profile"] == merged

        # decisions: the first id's arm whichever id asks, logged under the surviving id
        for_user = http.post(
            "/v1/decide", json={"user_id": user, "slot": "next_step"}, headers=DECIDE
        )
        for_anon = http.post("/v1/decide", json=ask, headers=DECIDE)
        assert for_user.status_code == 200 and for_anon.status_code == 200, for_user.text
        a, b = for_user.json(), for_anon.json()
        assert a["arm"] == b["arm"] == before.json()["arm"]
        assert not a["coldStart"] and {"welcome", "role"}.isdisjoint(
            x["action"] for x in a["ranked"]
        )
        ids = {a["decisionId"], b["decisionId"]}
        logged = decisions.wait_for(lambda v: v.get("decisionId") in ids, 2, timeout_s=20)
        assert {rec["value"]["userKey"] for rec in logged} == {user}, logged
        assert {rec["value"]["arm"] for rec in logged} == {a["arm"]}

        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert _merges(metrics.text) >= 1, [
            ln for ln in metrics.text.splitlines() if "identity_merges" in ln
        ]
