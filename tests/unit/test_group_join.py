"""Segment's ``group`` call names the user's account: the profile keeps the latest ``groupId``
(by event order, so any arrival order and any merge give the same one), and the CRM join finds
the account's row by it."""

from __future__ import annotations

import itertools

from ray_app.enrich.crm import CrmTable
from ray_app.state import SessionShard
from ray_app.state.event import decode_event
from ray_app.state.identity import (
    event_from_json,
    event_to_json,
    profile_from_state,
    profile_to_state,
)
from ray_app.state.profile import Profile, apply, merge_into
from tests.unit.test_state import T0, record


def _group(mid: str, group: str, ts: int, user: str = "u1") -> tuple[bytes, bytes]:
    return record(mid, user=user, kind="group", ts=ts, step=None, groupId=group, traits={})


def test_the_latest_group_call_wins_whatever_the_order() -> None:
    calls = [_group("g1", "acme", T0), _group("g2", "globex", T0 + 1000), record("t", ts=T0 + 500)]
    seen = set()
    for order in itertools.permutations(calls):
        shard = SessionShard(0)
        shard.process(list(order))
        seen.add(shard.profile("u1")["groupId"])
    assert seen == {"globex"}


def test_a_merge_keeps_the_newer_group_and_records_carry_it() -> None:
    a, b = Profile("anon"), Profile("u1")
    apply(a, decode_event(_group("g1", "acme", T0 + 2000, "anon")[1]))
    apply(b, decode_event(_group("g2", "globex", T0, "u1")[1]))
    merge_into(b, a)
    assert b.group_id == "acme"  # the later call, though it came through the merge
    assert profile_from_state(profile_to_state(b), b.config).as_dict() == b.as_dict()
    e = decode_event(_group("g3", "initech", T0)[1])
    assert event_from_json(event_to_json(e), "u1").group_id == "initech"  # forwarded as well


def test_the_crm_join_finds_the_account_by_group_id(tmp_path) -> None:
    crm = tmp_path / "crm.csv"
    crm.write_text("accountId,plan,industry,employees,region\nacme,enterprise,retail,900,eu\n")
    table = CrmTable(crm)
    found = table.enrich({"userKey": "u1", "groupId": "acme", "traits": {}})
    assert (found["found"], found["by"], found["plan"]) == (True, "groupId", "enterprise")
    by_trait = table.enrich({"userKey": "u2", "traits": {"accountId": "acme"}})
    assert by_trait["by"] == "accountId"  # the trait still works without a group call
    assert table.enrich({"userKey": "u3", "groupId": "nope", "traits": {}})["found"] is False
