"""/v1/decide end to end: events -> Kafka -> stream workers -> profile -> decision, over real
Serve HTTP; request validation; every answered decision in onramp.decisions; hot swap under load."""

import asyncio
import dataclasses
import os
import time
import uuid

import httpx
import pytest
import torch

from tests.conftest import WRITE_KEY, deploy, make_settings

pytestmark = pytest.mark.integration

READ = {"authorization": "Bearer onramp-demo-read-key"}
DECIDE = {"authorization": "Bearer onramp-demo-decide-key"}


@pytest.fixture(scope="module")
def stream(collector, broker, tmp_path_factory):
    """Stream workers for the session collector (named supervisor actor)."""
    import ray

    from ray_app.stream import start_supervisor_actor

    settings = make_settings(
        broker.bootstrap,
        ONRAMP_STREAM__CHECKPOINT_URI=str(tmp_path_factory.mktemp("decide-ckpt")),
    )
    sup = start_supervisor_actor(settings, broker.bootstrap)
    yield sup
    ray.get(sup.stop.remote(), timeout=120)
    ray.kill(sup)


def _user_in(arm: str, settings) -> str:
    from ray_app.decide import Arms

    arms = Arms(settings.decide)
    while True:
        user = f"d-{uuid.uuid4().hex[:10]}"
        if arms.assign(user, None) == arm:
            return user


def _completed(user, steps, seq0=0):
    batch = [{"type": "identify", "userId": user, "traits": {"role": "developer"}}]
    for n, step in enumerate(steps):
        for k, name in enumerate(("Step Viewed", "Step Completed")):
            batch.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": name,
                    "context": {
                        "onramp": {
                            "sessionId": f"s-{user}",
                            "seq": seq0 + 2 * n + k,
                            "stepId": step,
                        }
                    },
                }
            )
    return {"batch": batch}


def test_the_decision_follows_the_events_the_user_sent(collector, stream):
    user = _user_in("control", collector.settings)
    with httpx.Client(base_url=collector.base_url, timeout=30, headers=READ) as http:
        first = http.post("/v1/decide", json={"user_id": user, "slot": "next_step"})
        assert first.status_code == 200, first.text
        a = first.json()
        assert (a["chosen"], a["arm"], a["propensity"], a["coldStart"]) == (
            "welcome",
            "control",
            1.0,
            True,
        )
        assert a["decisionId"] and a["modelVersion"] == 0 and a["policy"] == "control"

        sent = http.post(
            "/v1/batch", json=_completed(user, ["welcome", "role"]), auth=(WRITE_KEY, "")
        )
        assert sent.status_code == 200, sent.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            b = http.get("/v1/decide", params={"user_id": user, "slot": "next_step"}).json()
            if not b["coldStart"] and b["chosen"] == "team_size":
                break
            time.sleep(0.3)
        assert (b["chosen"], b["coldStart"]) == ("team_size", False), b
        ranked = [r["action"] for r in b["ranked"]]
        assert "welcome" not in ranked and "role" not in ranked and ranked[0] == "team_size"
        # a candidate the user already completed is refused with the reason
        r = http.post(
            "/v1/decide",
            json={"user_id": user, "slot": "next_step", "candidates": ["goals", "role"]},
        )
        assert r.status_code == 422
        assert r.json()["field"] == "candidates[1]" and "role" in r.json()["message"]


def test_model_arm_explores_with_exact_propensities(collector, stream):
    user = _user_in("treatment", collector.settings)
    with httpx.Client(base_url=collector.base_url, timeout=30, headers=READ) as http:
        answers = [
            http.post(
                "/v1/decide",
                json={"user_id": user, "slot": "welcome_content", "decisionId": f"{user}-{n}"},
            ).json()
            for n in range(40)
        ]
    assert {a["arm"] for a in answers} == {"treatment"}
    for a in answers:
        probs = {r["action"]: r["probability"] for r in a["ranked"]}
        assert abs(sum(probs.values()) - 1) < 1e-3
        assert a["propensity"] == pytest.approx(probs[a["chosen"]], abs=1e-6)
        assert a["policy"] == "squarecb" and 0 < a["propensity"] < 1  # the shipped policy
    # greedy under the cold-start model is the static flow's first choice
    assert max(answers[0]["ranked"], key=lambda r: r["probability"])["action"] == "checklist_intro"
    # the same decision id gives the same draw (idempotent retries)
    with httpx.Client(base_url=collector.base_url, timeout=30, headers=READ) as http:
        again = http.post(
            "/v1/decide",
            json={"user_id": user, "slot": "welcome_content", "decisionId": f"{user}-7"},
        ).json()
    assert again["chosen"] == answers[7]["chosen"]


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [
        (b"{nope", 400, "invalid_json", None),
        (b"[1]", 400, "not_an_object", None),
        (b'{"user_id": "u"}', 400, "invalid_request", "slot"),
        (b'{"slot": "next_step"}', 400, "invalid_request", "userId"),
        (b'{"user_id": "u", "slot": "next_step", "colour": 1}', 400, "invalid_request", "colour"),
        (b'{"user_id": "u", "slot": "next_step", "candidates": "role"}', 400, "invalid_request",
         "candidates"),
        (b'{"user_id": "u", "slot": "nxt"}', 422, "unknown_slot", "slot"),
        (b'{"user_id": "u", "slot": "next_step", "candidates": ["dance"]}', 422,
         "unknown_action", "candidates[0]"),
    ],
)  # fmt: skip
def test_bad_requests_get_precise_4xx(collector, body, status, error, field):
    r = httpx.post(f"{collector.base_url}/v1/decide", content=body, headers=READ, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error
    assert r.json()["field"] == field
    assert r.json()["message"]


def test_a_decide_or_read_key_is_required(collector):
    url = f"{collector.base_url}/v1/decide"
    ask = {"user_id": "u", "slot": "next_step"}
    assert httpx.post(url, json=ask).status_code == 401
    bad = {"authorization": "Bearer nope"}
    assert httpx.get(url, params=ask, headers=bad).status_code == 401
    write = {"authorization": f"Bearer {WRITE_KEY}"}  # a write key only sends events
    assert httpx.post(url, json=ask, headers=write).status_code == 401
    assert httpx.post(url, json=ask, headers=DECIDE).status_code == 200
    assert httpx.post(url, json=ask, headers=READ).status_code == 200


def test_scopes_a_browser_key_reads_no_profile_and_no_health_details(collector):
    base = collector.base_url
    # the decide key ships in pages: it must not read traits or CRM data
    assert httpx.get(f"{base}/v1/profiles/u", headers=DECIDE).status_code == 401
    assert httpx.get(f"{base}/v1/profiles/u", auth=(WRITE_KEY, "")).status_code == 401
    # a user id with a "/" in it reaches the route (it was FastAPI's {"detail": "Not Found"})
    slash = httpx.get(f"{base}/v1/profiles/a%2Fb", headers=READ)
    assert slash.status_code in (404, 503) and "error" in slash.json(), slash.text
    # /healthz: up or down for anybody, the details (the experiment salt decides arms) for
    # a read key only
    public = httpx.get(f"{base}/healthz")
    assert public.status_code == 200 and public.json() == {"status": "ok"}
    assert httpx.get(f"{base}/healthz", headers=DECIDE).json() == {"status": "ok"}
    detailed = httpx.get(f"{base}/healthz", headers=READ).json()
    assert detailed["status"] == "ok" and "salt" in str(detailed["experiment"])


def test_every_answered_decision_is_in_the_log(collector, read_topic):
    async def many() -> list[dict]:
        async with httpx.AsyncClient(base_url=collector.base_url, timeout=30, headers=READ) as http:
            rs = await asyncio.gather(
                *[
                    http.post(
                        "/v1/decide",
                        json={"anonymous_id": f"anon-{uuid.uuid4().hex[:8]}", "slot": slot,
                              "context": {"device": "mobile"}},
                    )
                    for _ in range(100)
                    for slot in ("next_step", "welcome_content", "checklist_order")
                ]
            )  # fmt: skip
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
        return [r.json() for r in rs]

    answers = asyncio.run(many())
    ids = {a["decisionId"] for a in answers}
    reader = read_topic(collector.settings.topics.decisions)
    logged = reader.wait_for(lambda v: v.get("decisionId") in ids, len(ids), timeout_s=30)
    by_id = {r["value"]["decisionId"]: r["value"] for r in logged}
    assert set(by_id) == ids
    for a in answers:
        rec = by_id[a["decisionId"]]
        assert rec["schema"] == "onramp.decision/2"
        assert (rec["chosen"], rec["propensity"], rec["arm"], rec["modelVersion"]) == (
            a["chosen"],
            a["propensity"],
            a["arm"],
            a["modelVersion"],
        )
        assert (
            rec["features"]["size"] > 50
            and rec["features"]["indices"]
            and rec["featureSchema"]
            and rec["candidates"]
        )
        assert rec["context"] == {"device": "mobile"} and rec["timestamp"].endswith("+00:00")


def _bundle(version: int, favour: int):
    """A model that prefers action ``favour`` of welcome_content, at ``version``."""
    from ray_app.catalog import load_catalog
    from ray_app.features import FeatureSchema
    from ray_app.model import cold_start_bundle

    catalog = load_catalog()
    b = cold_start_bundle(FeatureSchema.from_catalog(catalog), catalog)
    head = b.scorer.heads[catalog.slot("welcome_content").index]
    with torch.no_grad():
        head.bias.zero_()
        head.bias[favour] = 5.0
    return dataclasses.replace(b, version=version)


def _publish(path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic: a replica never reads half a file


def test_hot_swap_under_load_fails_no_request(broker, serve_port, tmp_path):
    from ray import serve

    model = tmp_path / "model.onramp"
    settings = make_settings(
        broker.bootstrap,
        ONRAMP_DECIDE__MODEL_PATH=str(model),
        ONRAMP_DECIDE__MODEL_POLL_S="0.1",
        ONRAMP_DECIDE__ARMS='{"control": 0, "treatment": 1}',
        ONRAMP_DECIDE__POLICY="epsilon_greedy",
        ONRAMP_DECIDE__EPSILON="0",
    )
    app = deploy("decide-swap", "/swap", settings, serve_port)
    stop = asyncio.Event()
    seen: list[tuple[int, str]] = []
    failures: list[str] = []

    async def client(n: int) -> None:
        async with httpx.AsyncClient(base_url=app.base_url, timeout=30, headers=READ) as http:
            last = -1
            while not stop.is_set():
                r = await http.post(
                    "/v1/decide", json={"user_id": f"swap-{n}", "slot": "welcome_content"}
                )
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                a = r.json()
                if a["modelVersion"] < last:
                    failures.append(f"version went back from {last} to {a['modelVersion']}")
                last = a["modelVersion"]
                seen.append((a["modelVersion"], a["chosen"]))

    async def publisher() -> None:
        # the cold-start model answers first: wait for its answers (a second of them), however
        # long the new app's first requests take on a busy machine
        deadline = time.monotonic() + 60
        while not any(v == 0 for v, _ in seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        for version, favour in ((1, 2), (2, 0), (3, 1)):
            _publish(model, _bundle(version, favour).to_bytes())
            await asyncio.sleep(1.5)
        _publish(model, b"garbage")  # refused: v3 stays
        await asyncio.sleep(1.0)
        _publish(model, _bundle(2, 2).to_bytes())  # older: v3 stays
        await asyncio.sleep(1.0)
        stop.set()

    async def run() -> None:
        await asyncio.gather(publisher(), *[client(n) for n in range(16)])

    try:
        asyncio.run(run())
        health = httpx.get(f"{app.base_url}/healthz", headers=READ, timeout=10).json()
    finally:
        serve.delete("decide-swap")
    assert not failures, failures[:5]
    versions = [v for v, _ in seen]
    assert {0, 1, 2, 3} <= set(versions) and versions[-1] == 3
    chosen = {v: {c for vv, c in seen if vv == v} for v in (1, 2, 3)}
    # epsilon 0: every answer is the greedy choice of the model that gave it
    assert chosen == {1: {"template_gallery"}, 2: {"video_tour"}, 3: {"checklist_intro"}}
    assert health["models"]["treatment"] == 3
    assert len(seen) > 200


def test_user_config_reconfigures_model_and_policy_in_place(broker, tmp_path):
    """What Serve calls on running replicas when `user_config` changes (serve deploy)."""
    from deployments.collector import CollectorIngress

    settings = make_settings(broker.bootstrap)
    # the class as written, without Serve's ASGI wrapper (whose __init__ is async)
    wrapped = CollectorIngress.func_or_class
    plain = wrapped.__mro__[1]
    assert plain.__name__ == "CollectorIngress" and "reconfigure" in plain.__dict__
    replica = plain.__new__(plain)
    plain.__init__(replica, settings, broker.bootstrap)
    try:
        assert replica.decider.versions() == {"treatment": 0, "treatment_b": 0}
        model = tmp_path / "m.onramp"
        _publish(model, _bundle(4, 2).to_bytes())
        replica.reconfigure({"model_path": str(model), "policy": "softmax", "epsilon": 0.2})
        assert replica.decider.versions()["treatment"] == 4
        assert (replica.decider.policy.kind, replica.decider.policy.epsilon) == ("softmax", 0.2)
        with pytest.raises(ValueError, match="unknown keys"):
            replica.reconfigure({"model": "x"})
        with pytest.raises(ValueError, match=r"user_config\.policy: Input should be"):
            replica.reconfigure({"policy": "greedy"})
        assert replica.decider.policy.kind == "softmax"  # a refused config changes nothing
    finally:
        replica._stop.set()
        replica.decision_log.close()
        replica.collector.close(timeout_s=5)


def test_identity_verification_lets_a_decide_key_decide_only_for_the_signed_user(broker):
    """A decide key is public (every browser holds it), and its answers for a userId say
    something of that user's progress. With collector.identity_secret, a decide key's request
    that names a userId carries the userHash your server computed, or is refused (403); a read
    key's (a server's) and an anonymous visitor's are not checked. The replica's own ASGI path,
    its Kafka decision log on the real broker; profiles from a stand-in (no stream here)."""
    from deployments.collector import CollectorIngress
    from ray_app.config import DEMO_KEYS
    from ray_app.decide.request import user_hash

    secret = "identity-secret-0123456789"
    settings = make_settings(broker.bootstrap, ONRAMP_COLLECTOR__IDENTITY_SECRET=secret)
    plain = CollectorIngress.func_or_class.__mro__[1]
    replica = plain.__new__(plain)
    plain.__init__(replica, settings, broker.bootstrap)

    victim = {"userKey": "victim", "userId": "victim", "stepsCompleted": ["welcome"],
              "firstSeen": 1_767_225_600_000, "lastReceived": 1_767_225_600_000}  # fmt: skip

    class Profiles:
        async def get_many(self, keys):
            return {k: dict(victim) for k in keys if k == "victim"}

    replica.decisions.batcher.profiles = Profiles()

    async def post(body: dict, key: str) -> tuple[int, dict]:
        import orjson

        sent: list[dict] = []
        scope = {"headers": [(b"authorization", f"Bearer {key}".encode())]}

        async def receive() -> dict:
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await replica._decide_asgi(scope, receive, send)
        return sent[0]["status"], orjson.loads(sent[1]["body"])

    decide, read = DEMO_KEYS["decide"], DEMO_KEYS["read"]
    try:
        ask = {"userId": "victim", "slot": "next_step"}
        status, body = asyncio.run(post(ask, decide))
        assert (status, body["error"], body["field"]) == (403, "identity_unverified", "userHash")
        status, body = asyncio.run(post({**ask, "userHash": "0" * 64}, decide))
        assert status == 403 and "does not match" in body["message"]
        status, body = asyncio.run(post({**ask, "userHash": user_hash(secret, "victim")}, decide))
        assert status == 200 and body["chosen"] != "welcome" and not body["coldStart"]
        assert asyncio.run(post(ask, read))[0] == 200  # a server's read key
        assert asyncio.run(post({"anonymousId": "a-1", "slot": "next_step"}, decide))[0] == 200
        # the victim's id as an anonymousId: answered as an unknown user's, not from the profile
        status, body = asyncio.run(post({"anonymousId": "victim", "slot": "next_step"}, decide))
        assert (status, body["chosen"], body["coldReason"]) == (200, "welcome", "unknown_user")
    finally:
        replica._stop.set()
        replica.decision_log.close()
        replica.collector.close(timeout_s=5)


def test_metrics_answers_are_built_one_at_a_time_and_reused_for_a_second(broker, monkeypatch):
    """/metrics needs no key, and each answer cost the replica's event loop tens of
    milliseconds (every replica's exposition parsed and merged, the workers' and the learner's
    status): about 40 anonymous requests a second took the loop from /v1/decide. Concurrent
    requests now share one build, and an answer is reused for a quarter of a second."""
    from deployments.collector import CollectorIngress

    settings = make_settings(broker.bootstrap)
    plain = CollectorIngress.func_or_class.__mro__[1]
    replica = plain.__new__(plain)
    plain.__init__(replica, settings, broker.bootstrap)
    builds = []

    async def build() -> bytes:
        builds.append(1)
        await asyncio.sleep(0.05)
        replica._metrics_kept = (time.monotonic(), b"onramp_up 1\n")
        return b"onramp_up 1\n"

    monkeypatch.setattr(replica, "_build_metrics", build)
    import deployments.ingress as ingress

    monkeypatch.setattr(ingress, "_METRICS_REUSE_S", 5.0)  # a loaded machine: no timing race

    async def scrape(n: int) -> list[bytes]:
        answers = await asyncio.gather(*(replica.metrics() for _ in range(n)))
        return [a.body for a in answers]

    try:
        assert asyncio.run(scrape(20)) == [b"onramp_up 1\n"] * 20 and len(builds) == 1
        assert asyncio.run(scrape(5)) == [b"onramp_up 1\n"] * 5 and len(builds) == 1
        replica._metrics_kept = (time.monotonic() - 10, b"old")
        asyncio.run(scrape(3))
        assert len(builds) == 2
    finally:
        replica._stop.set()
        replica.decision_log.close()
        replica.collector.close(timeout_s=5)
