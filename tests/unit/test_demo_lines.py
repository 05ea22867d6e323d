"""What `onramp demo` prints for the decision it samples each tick (the HTTP call is replaced by a
canned answer: the real one is asserted in tests/integration/test_cli_demo.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from ray_app.cli.demo import _sample_decision
from ray_app.config import Settings


def _line(monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any]) -> str | None:
    def get(url: str, **kw: Any) -> httpx.Response:
        assert kw["params"] == {"user_id": "u7-000001", "slot": "next_step"}
        return httpx.Response(200, json=answer, request=httpx.Request("GET", url))

    monkeypatch.setattr(httpx, "get", get)
    stack = SimpleNamespace(urls=lambda: {"decide": "http://127.0.0.1:1/v1/decide"})
    sim = SimpleNamespace(
        plan=SimpleNamespace(sends=[(0.0, {"userId": "u7-000001"})]),
        stats=SimpleNamespace(sent=1),
    )
    return _sample_decision(stack, Settings(), sim, tick=3)


def test_a_decision_shows_its_step_arm_model_and_propensity(monkeypatch):
    answer = {"chosen": "goals", "arm": "treatment", "modelVersion": 4, "propensity": 0.25,
              "coldStart": False}  # fmt: skip
    assert _line(monkeypatch, answer) == (
        "decide next_step for u7-000001: goals  (arm treatment, model v4, propensity 0.25, "
        "live profile)"
    )


def test_a_user_with_no_eligible_step_says_so_instead_of_none(monkeypatch):
    answer = {"chosen": None, "arm": "control", "modelVersion": 0, "propensity": None,
              "coldStart": False}  # fmt: skip
    line = _line(monkeypatch, answer)
    assert line == "decide next_step for u7-000001: nothing left to show (no step is eligible)"
