"""`onramp audit`: a shifted feature, a changed segment mix and a risen late share are found and
named; unchanged traffic drifts nothing."""

import base64
import json
import re

import numpy as np
import pytest

from ray_app.audit import audit, mix_shift, rates_from_metrics
from ray_app.cli import main
from ray_app.telemetry.stream import stream_metrics_text


def decisions(seed: int, n: int = 3000, shift: bool = False, mobile: float = 0.5):
    rng = np.random.default_rng(seed)
    x = rng.beta(2, 5, size=(n, 4))
    if shift:
        x[:, 2] = rng.beta(5, 2, size=n)  # progress moved up
    return [
        {"decisionId": f"{seed}-{i}", "arm": "control" if i % 2 else "treatment",
         "features": row.tolist(), "featureSchema": "abc",
         "context": {"device": "mobile" if rng.random() < mobile else "desktop"}}
        for i, row in enumerate(x)
    ]  # fmt: skip


def metrics(applied: int, late: int, rejected: int) -> str:
    status = [
        {"worker": "w0",
         "partitions": {"0": {"applied": applied, "duplicates": 0, "late": late,
                              "rejected": rejected, "buffered": 0, "lag": 0}},
         "freshnessBucketsMs": [10], "freshnessCounts": [0, 0], "freshnessSumMs": 0.0}
    ]  # fmt: skip
    accepted = applied + late + rejected
    return (
        "# TYPE onramp_events_accepted_total counter\n"
        f'onramp_events_accepted_total{{source="web"}} {accepted}\n' + stream_metrics_text(status)
    )


NAMES = ["tenure", "count:views", "progress", "cold"]


def test_unchanged_traffic_drifts_nothing():
    r = audit(decisions(1), decisions(2), NAMES, metrics(10_000, 20, 30), metrics(9_000, 18, 27))
    assert r["drifted"] == []
    assert max(f["psi"] for f in r["features"]) < 0.05


def test_a_shifted_feature_a_new_mix_and_late_events_are_named():
    r = audit(
        decisions(1),
        decisions(2, shift=True, mobile=0.8),
        NAMES,
        metrics(10_000, 400, 30),
        metrics(10_000, 20, 30),
    )
    assert r["features"][0]["name"] == "progress" and r["features"][0]["drifted"]
    assert [f["name"] for f in r["features"] if f["drifted"]] == ["progress"]
    assert any(d.startswith("feature progress (PSI") for d in r["drifted"])
    assert any(d.startswith("segment mix context.device (moved 3") for d in r["drifted"])
    assert not any("segment mix arm" in d for d in r["drifted"])
    assert "late_share 3.84%" in r["drifted"]  # 400 late of 10,430 records
    assert not any(d.startswith("dlq_share") for d in r["drifted"])


def test_rates_from_the_real_metrics_text():
    rates = rates_from_metrics(metrics(900, 50, 50))
    assert rates["late_share"] == pytest.approx(50 / 1000)
    assert rates["dlq_share"] == pytest.approx(50 / 1000)


def test_mix_shift_needs_significance_and_a_real_move():
    big = mix_shift("device", {"a": 500_000, "b": 500_000}, {"a": 505_000, "b": 495_000})
    assert big.p_value < 0.001 and not big.drifted  # significant, but a 0.5-point move
    new = mix_shift("plan", {"free": 1000}, {"free": 900, "team": 100})
    assert new.drifted and new.recent["team"] == pytest.approx(0.1)


def test_different_feature_schemas_are_refused():
    from ray_app.errors import FieldError

    other = [dict(d, featureSchema="xyz") for d in decisions(2)]
    with pytest.raises(FieldError, match="different feature schemas"):
        audit(decisions(1), other)


def test_cli_prints_what_drifted_and_writes_plots(tmp_path, capsys):
    ref, cur = tmp_path / "ref.jsonl", tmp_path / "cur.jsonl"
    ref.write_text("\n".join(json.dumps(d) for d in decisions(1, n=1000)))
    cur.write_text("\n".join(json.dumps(d) for d in decisions(2, n=1000, shift=True)))
    m = tmp_path / "metrics.txt"
    m.write_text(metrics(10_000, 20, 30))
    out = tmp_path / "audit"
    args = ["audit", "--reference", str(ref), "--recent", str(cur), "--metrics", str(m)]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "drifted:" in printed and "feature f2 (PSI" in printed  # 4 features: not the catalog's
    assert main([*args, "--out", str(out), "--fail-on-drift"]) == 3
    page = (out / "audit.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 2 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    summary = json.loads((out / "audit.json").read_text())
    assert summary["features"][0]["name"] == "f2" and summary["rates"][1]["name"] == "late_share"
    same = tmp_path / "same.jsonl"
    same.write_text("\n".join(json.dumps(d) for d in decisions(3, n=1000)))
    assert main(["audit", "--reference", str(ref), "--recent", str(same), "--fail-on-drift",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "nothing drifted" in capsys.readouterr().out


def test_the_audit_reads_the_decision_records_onramp_writes_and_counts_odd_ones():
    """Decision records carry their features sparse ({"size", "indices", "values"}): the audit
    read only dense lists, and failed on every record Onramp writes. A record of another width
    or with unreadable features is counted, not a reason to compare nothing."""
    import orjson

    from ray_app.records.decision import DecisionRecord

    def written(seed: int, shift: bool = False) -> list[dict]:
        out = []
        for d in decisions(seed, 2000, shift=shift):
            record = DecisionRecord(
                decision_id=d["decisionId"], user_key=d["decisionId"], slot="next_step",
                chosen="role", propensity=0.5, action_index=1, features=d["features"],
                at_ms=1767225600000, arm=d["arm"], context=d["context"],
            )  # fmt: skip
            out.append(orjson.loads(record.encode()))
        return out

    reference, recent = written(1), written(2, shift=True)
    assert isinstance(recent[0]["features"], dict)
    recent += [{**recent[0], "decisionId": "w", "features": {"size": 9, "indices": [0], "values": [1.0]}},
               {**recent[0], "decisionId": "g", "features": "garbage"},
               {**recent[0], "decisionId": "c", "context": ["x"]}]  # fmt: skip
    r = audit(reference, recent, NAMES)
    assert r["recent"]["withFeatures"] == 2001
    assert (r["recent"]["otherWidth"], r["recent"]["unreadableFeatures"]) == (1, 1)
    assert [f["name"] for f in r["features"] if f["drifted"]] == ["progress"]


def test_each_decision_counts_once_in_the_audit():
    """An archive run again over the same offsets writes the records again, and the stream's
    copy of a decision forwarded to a merged id's survivor is not another decision: both
    weighed those decisions twice in the feature and segment comparisons."""
    reference, recent = decisions(1, 500), decisions(2, 500)
    again = recent + recent[:200] + [{**recent[0], "userKey": "u", "hops": 1, "forwardedFrom": "a"}]
    assert audit(reference, again, NAMES)["recent"]["decisions"] == 500


def test_the_parity_replay_leaves_out_decisions_forwarded_to_a_survivor():
    """A forwarded copy carries the merged-away id's features under the survivor's key: the
    replay rebuilt the survivor's profile for it and reported a false mismatch."""
    import orjson

    from ray_app.catalog import load_catalog
    from ray_app.features import FeatureSchema
    from ray_app.records.decision import DecisionRecord
    from training.replay import replay_parity

    schema = FeatureSchema.from_catalog(load_catalog())
    original = orjson.loads(
        DecisionRecord(
            decision_id="d1", user_key="anon", slot="next_step", chosen="role", propensity=0.5,
            action_index=1, features=[0.0] * schema.dim, at_ms=1767225600000,
            feature_schema=schema.hash, cold_start=True, cold_reason="unknown_user",
        ).encode()
    )  # fmt: skip
    copy = {**original, "userKey": "user", "hops": 1, "forwardedFrom": "anon"}
    report = replay_parity([], [original, copy, original], schema)
    assert report.decisions == 1 and report.skipped == {"forwarded": 1, "duplicate": 1}


def test_the_parity_replay_leaves_out_events_the_stream_sent_to_the_late_topic():
    """An event that came behind the watermark went to onramp.events.late and was never
    applied, but its record stays in onramp.events: the replay applied it and reported a
    mismatch the serving path never had."""
    import base64
    import datetime as dt

    import orjson

    from ray_app.catalog import load_catalog
    from ray_app.collect.parse import parse_request
    from ray_app.features import FeatureSchema
    from ray_app.records.decision import DecisionRecord
    from ray_app.state import Profile, apply, decode_event
    from training.replay import replay_parity

    schema = FeatureSchema.from_catalog(load_catalog())
    received = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def record(step: str, at: dt.datetime) -> dict:
        body = orjson.dumps({"type": "track", "userId": "u", "event": "Step Completed",
                             "properties": {"stepId": step}})  # fmt: skip
        key = "k" * 20
        parsed = parse_request(
            "track", body, content_encoding=None, received_at=at, write_keys={"web": key},
            authorization="Basic " + base64.b64encode(f"{key}:".encode()).decode(),
        )  # fmt: skip
        return orjson.loads(parsed.events[0][1])

    applied = record("welcome", received)
    late = record("role", received + dt.timedelta(seconds=1))
    profile = Profile("u")
    apply(profile, decode_event(orjson.dumps(applied)))
    at_ms = int((received + dt.timedelta(seconds=2)).timestamp() * 1000)
    x = schema.featurize(profile.as_dict(), None, {}, now_ms=at_ms)
    decision = orjson.loads(
        DecisionRecord(
            decision_id="d1", user_key="u", slot="next_step", chosen="role", propensity=0.5,
            action_index=1, features=np.round(x.astype(np.float64), 6).tolist(), at_ms=at_ms,
            feature_schema=schema.hash, profile_age_ms=0, context={},
        ).encode()
    )  # fmt: skip
    events = [
        {**applied, "_kafka": {"partition": 0, "offset": 0}},
        {**late, "_kafka": {"partition": 0, "offset": 1}},
        {**applied, "_kafka": {"partition": 0, "offset": 2}},  # a retry of it, which came late
    ]
    assert replay_parity(events, [decision], schema).matched == 0
    origin = {"stage": "stream", "topic": "onramp.events", "partition": 0}
    late_topic = [
        {"schema": "onramp.late/1", "event": late, "origin": {**origin, "offset": 1}},
        {"schema": "onramp.late/1", "event": applied, "origin": {**origin, "offset": 2}},
    ]
    assert replay_parity(events, [decision], schema, late=late_topic).matched == 1


def test_the_audit_page_draws_any_context_value_as_text():
    """A decide request's context value like "$\\foo$" is matplotlib math markup: drawing it
    as a tick label failed, and with it the whole audit page."""
    from ray_app.audit import render_audit_html

    ref = decisions(1, 300)
    recent = [{**d, "context": {"plan": "$\\foo$"}} for d in decisions(2, 300)]
    result = audit(ref, recent, NAMES)
    assert "context.plan" in [m["segment"] for m in result["segments"]]
    assert "Segment mix" in render_audit_html(result)  # drawn (it raised before)


def test_cli_fail_on_drift_fails_when_nothing_could_be_compared(tmp_path, capsys):
    """Decisions whose feature vectors are all unreadable, or a --metrics scrape of another
    service, compared nothing, and --fail-on-drift passed them as "nothing drifted"."""
    ref, cur, m = tmp_path / "ref.jsonl", tmp_path / "cur.jsonl", tmp_path / "m.txt"
    ref.write_text("\n".join(json.dumps(d) for d in decisions(1, n=200)))
    cur.write_text("\n".join(json.dumps(dict(d, features="?")) for d in decisions(2, n=200)))
    base = ["audit", "--reference", str(ref), "--fail-on-drift", "--out", str(tmp_path / "a")]
    assert main([*base, "--recent", str(cur)]) == 1
    assert "recent: no decision with a readable feature vector (200 unreadable)" in (
        capsys.readouterr().err
    )
    m.write_text("# TYPE http_requests_total counter\nhttp_requests_total 7\n")
    assert main([*base, "--recent", str(ref), "--metrics", str(m)]) == 1
    assert "none of Onramp's collector or stream counters" in capsys.readouterr().err
