"""Training features equal serving features: simulated users send their onboarding events through
the real collector, Kafka and stream workers, and ask /v1/decide twice as their profile grows;
`onramp archive` copies the topics to JSON lines; the replay of the archived events through
ray_app.state + ray_app.features gives exactly the features every decision logged."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from ray_app.enrich import CrmTable
from ray_app.features import FeatureSchema
from ray_app.sim.v2 import GroundTruth
from tests.conftest import WRITE_KEY, deploy, make_settings
from training.replay import replay_parity

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 6061  # user ids sim2-6061-*: no other test's users
USERS = 30
READ = {"authorization": "Bearer onramp-demo-read-key"}


def _read(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.open()]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _user(http: httpx.AsyncClient, truth: GroundTruth, index: int) -> list[dict]:
    user = truth.user(index)
    uid = user.user_id

    def track(name: str, step: str, seq: int, **props) -> dict:
        return {"type": "track", "userId": uid, "event": name, "timestamp": _now(),
                "messageId": str(uuid.uuid4()), "properties": props,
                "context": {"onramp": {"sessionId": f"s-{uid}", "seq": seq, "stepId": step}}}  # fmt: skip

    async def send(batch: list[dict]) -> None:
        r = await http.post("/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
        assert r.status_code == 200, r.text

    async def until_completed(step: str) -> None:
        for _ in range(300):  # the decision should see a live profile (parity has work to do)
            r = await http.get(f"/v1/profiles/{uid}")
            if r.status_code == 200 and step in r.json()["profile"]["stepsCompleted"]:
                return
            await asyncio.sleep(0.2)

    identify = {"type": "identify", "userId": uid, "traits": user.traits, "timestamp": _now(),
                "messageId": str(uuid.uuid4())}  # fmt: skip
    await send(
        [identify, track("Step Viewed", "welcome", 0), track("Step Completed", "welcome", 1)]
    )
    await until_completed("welcome")
    context = {"device": ("mobile", "desktop")[index % 2], "referrer": "docs"}
    first = await http.post(
        "/v1/decide", json={"user_id": uid, "slot": "next_step", "context": context}
    )
    chosen = first.json()["chosen"]
    await send(
        [track("Step Viewed", chosen, 2), track("Form Error", chosen, 3),
         track("Step Completed", chosen, 4, decisionId=first.json()["decisionId"])]
    )  # fmt: skip
    await until_completed(chosen)
    second = await http.post("/v1/decide", json={"user_id": uid, "slot": "welcome_content"})
    return [first.json(), second.json()]


def test_replayed_features_equal_the_features_logged_at_decision_time(
    broker, serve_port, tmp_path, monkeypatch, capsys
):
    import ray
    from ray import serve

    from deployments.onramp import main as cli
    from ray_app.catalog import load_catalog
    from ray_app.stream import start_supervisor_actor

    env = {
        "ONRAMP_STREAM__CHECKPOINT_URI": str(tmp_path / "ckpt"),
        # under a loaded CI machine the default 200 ms would answer cold-start, which replays
        # trivially; give the profile lookup time so the decisions see live profiles
        "ONRAMP_DECIDE__PROFILE_DEADLINE_MS": "3000",
    }
    settings = make_settings(broker.bootstrap, **env)
    sup = start_supervisor_actor(settings, broker.bootstrap)
    app = deploy("parity", "/parity", settings, serve_port)
    truth = GroundTruth(seed=SEED)

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=app.base_url, timeout=60, headers=READ) as http:
            done = await asyncio.gather(*[_user(http, truth, i) for i in range(USERS)])
        return [d for pair in done for d in pair]

    try:
        answers = asyncio.run(run())
    finally:
        serve.delete("parity")
        ray.get(sup.stop.remote(), timeout=120)
        ray.kill(sup)
    assert len(answers) == 2 * USERS and all(a.get("decisionId") for a in answers), answers[:2]
    # the archiver, as a user runs it
    out = tmp_path / "archive"
    monkeypatch.setenv("ONRAMP_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap)
    monkeypatch.setenv("ONRAMP_KAFKA__PARTITIONS", str(settings.kafka.partitions))
    capsys.readouterr()
    rc = cli(["archive", "--topics", "events", "decisions", "--out", str(out), "--idle", "1"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["invalid"] == {}, report
    assert report["records"][settings.topics.decisions] >= 2 * USERS
    catalog = load_catalog(settings.decide.catalog_path)
    decisions = [d for d in _read(out / settings.topics.decisions)
                 if d.get("decisionId") in {a["decisionId"] for a in answers}]  # fmt: skip
    parity = replay_parity(
        _read(out / settings.topics.events),
        decisions,
        FeatureSchema.from_catalog(catalog),
        CrmTable(settings.crm_path, settings.enrich.reload_interval_s).enrich,
    )
    reasons = Counter(d.get("coldReason") for d in decisions)
    print(json.dumps({**parity.as_dict(), "coldReasons": dict(reasons)}, indent=1, default=str))
    assert parity.decisions == 2 * USERS
    assert parity.cold <= USERS // 5, reasons  # the replay had live profiles to rebuild
    assert parity.all_matched, parity.as_dict()
    # the comparison is not vacuous: without the events, no live-profile decision matches
    blind = replay_parity([], decisions, FeatureSchema.from_catalog(catalog))
    assert blind.matched == 0 and len(blind.mismatches) == 2 * USERS
