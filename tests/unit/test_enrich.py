import os
import time

import pandas as pd

from ray_app.enrich import DEFAULTS, CrmTable, write_demo_crm
from ray_app.sim.population import Population, crm_accounts


def test_user_rows_win_over_account_rows(tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text("userId,accountId,plan\nu1,a1,vip\n,a1,team\n")
    table = CrmTable(path)
    assert table.enrich({"userId": "u1", "traits": {"accountId": "a1"}})["plan"] == "vip"
    assert table.enrich({"userId": "u2", "traits": {"accountId": "a1"}})["plan"] == "team"
    assert (table.hits, table.misses) == (2, 0)


def test_reload_on_change_and_keep_the_last_good_table(tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text("accountId,plan\na1,team\n")
    table = CrmTable(path, reload_interval_s=0.0)
    assert table.enrich({"traits": {"accountId": "a1"}})["plan"] == "team"
    path.write_text("accountId,plan\na1,enterprise\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert table.enrich({"traits": {"accountId": "a1"}})["plan"] == "enterprise"
    path.write_bytes(b"\x00\xff not,a\ncsv")  # broken: the last good table stays
    os.utime(path, (time.time() + 10, time.time() + 10))
    got = table.enrich({"traits": {"accountId": "a1"}})
    assert got["plan"] == "enterprise" and table.error is not None
    assert table.health()["error"] == table.error and table.health()["accounts"] == 1


def test_missing_rows_and_files_give_the_defaults(tmp_path):
    table = CrmTable(tmp_path / "absent.csv")
    assert table.enrich({"userId": "u"}) == {"found": False, "by": None, **DEFAULTS}
    assert table.misses == 1


def test_parquet(tmp_path):
    path = tmp_path / "crm.parquet"
    pd.DataFrame([{"accountId": "a1", "employees": 12}]).to_parquet(path)
    assert CrmTable(path).enrich({"traits": {"accountId": "a1"}})["employees"] == 12


def test_the_simulator_writes_a_crm_table_with_some_accounts_missing(tmp_path):
    pop = Population(seed=3, size=300)
    accounts = crm_accounts(pop)
    table = CrmTable(write_demo_crm(tmp_path / "crm.csv", accounts))
    found = [table.enrich({"userId": u.user_id, "traits": u.traits})["found"] for u in pop.users]
    assert 0.75 < sum(found) / len(found) < 0.98


def test_a_table_that_cannot_serve_says_why_in_the_log_and_the_health(tmp_path, caplog):
    """A missing file, a file that is not a table, or a table with no column to join by used
    to leave every user with the defaults and nothing said (``error`` was never read): each is
    logged once and shown in ``/healthz``'s details; repeated ids are counted and logged."""
    import logging

    with caplog.at_level(logging.WARNING, logger="onramp.enrich"):
        absent = CrmTable(tmp_path / "absent.csv", reload_interval_s=0.0)
        absent.enrich({"userId": "u"})
        absent.enrich({"userId": "u"})
        assert absent.error is not None and "does not exist" in absent.error
        assert caplog.text.count("does not exist") == 1  # once, not on every read
        wrong = tmp_path / "crm.csv"
        wrong.write_text("user_id,plan\nu1,team\n")
        table = CrmTable(wrong)
        assert table.error is not None and "neither a userId nor an accountId" in table.error
        assert "user_id" in table.error and "neither a userId" in caplog.text
        garbage = tmp_path / "crm.parquet"
        garbage.write_bytes(b"PAR1 not really")
        assert "cannot read" in (CrmTable(garbage).error or "")
        twice = tmp_path / "twice.csv"
        twice.write_text("userId,plan\nu1,team\nu1,enterprise\n")
        again = CrmTable(twice)
    assert again.error is None and again.health()["repeatedRows"] == 1
    assert again.enrich({"userId": "u1"})["plan"] == "enterprise"
    assert "repeat a userId or accountId" in caplog.text


def test_numeric_ids_join_as_written(tmp_path):
    """A userId column with blanks reads as floats (1001.0) and drops leading zeros (007 -> 7)
    unless read as text: those users were all misses."""
    path = tmp_path / "crm.csv"
    path.write_text("userId,accountId,plan\n1001,,pro\n,42,enterprise\n007,,team\n")
    t = CrmTable(path)
    assert t.enrich({"userId": "1001"})["plan"] == "pro"
    assert t.enrich({"userId": "007"})["plan"] == "team"
    assert t.enrich({"userId": "u9", "traits": {"accountId": "42"}})["plan"] == "enterprise"
    pq = tmp_path / "crm.parquet"
    pd.DataFrame(
        {"userId": [1001.0, None], "accountId": [None, 42.0], "plan": ["a", "b"]}
    ).to_parquet(pq)
    t = CrmTable(pq)
    assert t.enrich({"userId": "1001"})["plan"] == "a"
    assert t.enrich({"userId": "x", "traits": {"accountId": "42"}})["plan"] == "b"
    assert t.misses == 0


def test_any_parquet_cell_becomes_json_and_reserved_columns_stay_out(tmp_path):
    """A list column used to raise on every reload attempt (and stop a replica starting on the
    file); a time column made the profile answer unserializable; a column named ``found``
    overwrote the join's own field."""
    import json

    pq = tmp_path / "crm.parquet"
    pd.DataFrame(
        {
            "userId": ["u1", "u2"],
            "tags": [["a", "b"], ["c"]],
            "signedAt": [pd.Timestamp("2026-01-02T03:04:05Z"), pd.NaT],
            "found": ["no", "no"],
            "by": ["x", "x"],
        }
    ).to_parquet(pq)
    t = CrmTable(pq)
    assert t.error is None
    got = t.enrich({"userId": "u1"})
    assert got["found"] is True and got["by"] == "userId"
    assert got["tags"] == ["a", "b"] and got["signedAt"].startswith("2026-01-02T03:04:05")
    assert t.enrich({"userId": "u2"})["signedAt"] is None
    json.dumps(got)  # what the profile answer does with it


def test_a_background_table_reads_a_changed_file_off_the_caller_thread(tmp_path, monkeypatch):
    """A serving replica's enrich() read a changed table on the event loop every request
    shares (most of a second for 100k rows, every replica at once): in the background
    instead, and lookups meanwhile answer from the last table read."""
    import threading

    import ray_app.enrich.crm as crm

    path = tmp_path / "crm.csv"
    path.write_text("accountId,plan\na1,team\n")
    table = CrmTable(path, reload_interval_s=0.05, background=True)
    try:
        readers: list[str] = []
        real = crm.CrmTable._maybe_reload

        def spy(self, force=False):
            readers.append(threading.current_thread().name)
            return real(self, force)

        monkeypatch.setattr(crm.CrmTable, "_maybe_reload", spy)
        path.write_text("accountId,plan\na1,enterprise\n")
        os.utime(path, (time.time() + 5, time.time() + 5))
        deadline = time.monotonic() + 10
        while table.enrich({"traits": {"accountId": "a1"}})["plan"] != "enterprise":
            assert time.monotonic() < deadline, "never read again"
            time.sleep(0.02)
        assert readers and set(readers) == {"crm-reload"}
    finally:
        table.close()
