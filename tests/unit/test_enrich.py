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
