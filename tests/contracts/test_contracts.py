"""Every check of its family over every subject (see :mod:`tests.contracts`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.contracts.checks import CHECKS
from tests.contracts.subjects import FOLDS, LEARNERS, POLICIES, SCORERS, SHARDS

SUBJECTS: dict[str, list[Any]] = {
    "scorer": SCORERS,
    "learner": LEARNERS,
    "policy": POLICIES,
    "shard": SHARDS,
    "fold": FOLDS,
}

#: Contract violations the suite found and the owner has not fixed yet: (check, subject) ->
#: why. Strict: the case fails the run once it passes (then remove it here), and only the
#: named exception counts, so no other failure of the same check hides behind it.
KNOWN: dict[tuple[str, str], tuple[type[BaseException], str]] = {}


def _cases() -> list[Any]:
    cases = []
    for family, checks in CHECKS.items():
        for check in checks:
            for subject in SUBJECTS[family]:
                known = KNOWN.get((check.__name__, str(subject)))
                marks = (
                    [pytest.mark.xfail(raises=known[0], reason=known[1], strict=True)]
                    if known
                    else []
                )
                name = f"{check.__name__.removeprefix('check_')}[{subject}]"
                cases.append(pytest.param(check, subject, id=name, marks=marks))
    return cases


@pytest.mark.parametrize(("check", "subject"), _cases())
def test_contract(check: Callable[[Any], None], subject: Any) -> None:
    check(subject)


def test_every_known_violation_names_a_case() -> None:
    names = {(c.__name__, str(s)) for f, cs in CHECKS.items() for c in cs for s in SUBJECTS[f]}
    assert set(KNOWN) <= names
