"""No input yields a 5xx: the running collector under schemathesis and 10,000 adversarial requests.

The write key ships in every browser, so anybody can send anything. Two independent generators
look for a server error over real HTTP (Serve, the replica, Kafka):

* schemathesis (the OpenAPI fuzzer) against ``/openapi.json``: every route, the examples,
  coverage and fuzzing phases, checking that no answer is a 5xx and that every answer is one the
  document declares, with the declared content type and schema;
* a seeded generator of hostile requests (mutated batches, deep nesting, huge numbers, lone
  surrogates, timestamps at the ends of the calendar, wrong types, broken gzip, bad keys) sent
  10,000 times to the collector's routes and to ``/v1/decide``.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import random
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.conftest import WRITE_KEY

pytestmark = pytest.mark.slow

DECIDE_KEY = "onramp-demo-decide-key"
#: The schemathesis CLI, with room for Hypothesis's recursive strategies: near Python's default
#: recursion limit, CPython 3.11's ``ast.parse`` (which Hypothesis calls to describe a strategy)
#: fails with "AST constructor recursion depth mismatch" and the generator crashes.
ST = [
    sys.executable,
    "-c",
    "import sys; sys.setrecursionlimit(20000); sys.argv[0] = 'st'; "
    "from schemathesis.cli import schemathesis; schemathesis()",
]
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "fuzz"


#: CPython 3.11's ``ast.parse`` sometimes fails inside Hypothesis's description of a recursive
#: strategy ("AST constructor recursion depth mismatch"): the generator crashes, not the server.
GENERATOR_CRASH = "AST constructor recursion depth mismatch"


def _schemathesis(base: str, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the schemathesis CLI; its whole report is kept in tests/artifacts/fuzz/NAME.txt. A run
    whose only problem is the generator's own crash is reported apart (see :func:`_assert_clean`)."""
    return _schemathesis_once(base, name, "1515", *args)


#: An error section's title line in schemathesis' report (``____ POST /v1/alias ____``).
_SECTION = re.compile(r"^_{3,} .+ _{3,}$", re.MULTILINE)


def _only_generator_crashes(report: str) -> bool:
    """The run found no failure, and every error section of its report is the generator's own
    crash. The crash comes in several forms (its message alone, with its traceback, or inside
    "Inconsistent results" with an exception group): each section only has to contain it, and
    there must be as many sections as the summary's runtime errors."""
    if "FAILURES" in report or "Failures:" in report or "ERRORS" not in report:
        return False
    errors = report.split("ERRORS", 1)[1].split("Need more help?", 1)[0]
    bodies = _SECTION.split(errors)[1:]
    counted = re.search(r"Runtime Error: (\d+)", report)
    return (
        bool(bodies)
        and all(GENERATOR_CRASH in body for body in bodies)
        and counted is not None
        and int(counted.group(1)) == len(bodies)
    )


def test_a_report_whose_only_error_is_the_generator_crash_is_told_apart():
    crash = f"{GENERATOR_CRASH} (before=228, after=191)"
    head = "===== ERRORS =====\n____ POST /v1/alias ____\nRuntime Error\n\n"
    tail = "\nNeed more help?\n===== SUMMARY =====\nErrors:\n  Runtime Error: 1\n"
    assert _only_generator_crashes(head + crash + tail)
    traced = f"{crash}\n    Traceback ...\n    SystemError: {crash}\n"
    assert _only_generator_crashes(head + traced + tail)  # the traceback repeats it
    grouped = f"Inconsistent results: ...\n  + Exception Group\n    | SystemError: {crash}\n"
    assert _only_generator_crashes(head + grouped + tail)
    other = f"{crash}\n____ POST /v1/b ____\nRuntime Error\n\nConnection refused\n"
    assert not _only_generator_crashes(head + other + tail.replace(": 1", ": 2"))
    assert not _only_generator_crashes(head + crash + "\nFAILURES\n" + tail)
    assert not _only_generator_crashes("===== SUMMARY =====\n  Runtime Error: 1\n")


def _assert_clean(done: subprocess.CompletedProcess[str]) -> None:
    report = done.stdout + done.stderr
    assert "Server error" not in report, report[-6000:]
    if done.returncode != 0 and _only_generator_crashes(done.stdout):
        # The generator crashed on one operation's coverage phase; everything else ran and
        # passed (this still fails on any failure the checks report).
        warnings.warn(
            "schemathesis generator crashed on one operation (CPython 3.11 ast bug)", stacklevel=2
        )
        return
    assert done.returncode == 0, report[-6000:]


def _schemathesis_once(
    base: str, name: str, seed: str, *args: str
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [
            *ST, "run", f"{base}/openapi.json",
            "--checks", CHECKS,
            "--phases", os.environ.get("ONRAMP_FUZZ_PHASES", "examples,coverage,fuzzing"),
            "--max-examples", os.environ.get("ONRAMP_FUZZ_EXAMPLES", "40"),
            "--workers", "2",
            "--seed", seed,
            "--request-timeout", "30",
            "--suppress-health-check", "all",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.txt").write_text(done.stdout + done.stderr)
    return done


def test_schemathesis_finds_no_server_error_on_the_collector_routes(collector):
    done = _schemathesis(
        collector.base_url,
        "collector",
        "--exclude-path-regex", "^/v1/decide",
        "--auth", f"{WRITE_KEY}:",
    )  # fmt: skip
    _assert_clean(done)


def test_schemathesis_finds_no_server_error_on_decide(collector):
    done = _schemathesis(
        collector.base_url,
        "decide",
        "--include-path-regex", "^/v1/decide",
        "--header", f"Authorization: Bearer {DECIDE_KEY}",
    )  # fmt: skip
    _assert_clean(done)


def test_schemathesis_finds_no_server_error_with_a_read_key(collector, broker, tmp_path):
    # profiles and the health details answer 200 only to a read key; profiles need stream
    # workers (without them the answer is a documented 503 with Retry-After)
    import ray

    from ray_app.stream import start_supervisor_actor
    from tests.conftest import make_settings

    settings = make_settings(broker.bootstrap, ONRAMP_STREAM__CHECKPOINT_URI=str(tmp_path))
    sup = start_supervisor_actor(settings, broker.bootstrap)
    try:
        deadline = time.monotonic() + 60
        read = {"authorization": "Bearer onramp-demo-read-key"}
        while time.monotonic() < deadline:
            r = httpx.get(f"{collector.base_url}/v1/profiles/nobody", headers=read, timeout=10)
            if r.status_code == 404:
                break
            time.sleep(0.5)
        done = _schemathesis(
            collector.base_url,
            "read",
            "--include-path-regex", "^/(v1/profiles|healthz)",
            "--header", "Authorization: Bearer onramp-demo-read-key",
        )  # fmt: skip
    finally:
        ray.get(sup.stop.remote(), timeout=120)
        ray.kill(sup)
    _assert_clean(done)


# -- the hostile generator ----------------------------------------------------------------------

ROUTES = ("/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/b", "/v1/t", "/v1/alias")
TIMES = (
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999Z", "0000-00-00", "2026-13-45T99:99",
    "1970-01-01T00:00:00Z", "2026-06-01T12:00:00-23:59", "not a time", "", 1e308, -1, True,
)  # fmt: skip
STRINGS = (
    "\ud800", "\udfff", "a\x00b", "\u202e", "🚀" * 50, "x" * 4_000, "", " ", "null", "' OR 1=1",
)  # fmt: skip


def _deep(depth: int, kind: str) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


#: Values built once (deep nesting and long integers are slow to build for every request).
HOSTILE = (
    *STRINGS,
    *TIMES,
    int("9" * 20),
    int("9" * 400),
    int("9" * 4200),
    -(2**63) - 1,
    2**64,
    1e308,
    -0.0,
    None,
    True,
    [],
    {},
    _deep(40, "list"),
    _deep(40, "dict"),
    _deep(900, "list"),  # within what a JSON encoder writes; far past the 32-level limit
    _deep(900, "dict"),
)


def _scalar(rng: random.Random) -> object:
    return rng.choice(HOSTILE)


def _event(rng: random.Random) -> dict:
    event: dict = {
        "type": rng.choice(["track", "identify", "page", "alias", "group", "screen", "bogus"]),
        "userId": f"fz-{rng.randrange(1000)}",
        "event": "Step Completed",
        "messageId": f"m-{rng.getrandbits(48):x}",
        "timestamp": "2026-06-01T12:00:00Z",
        "properties": {"stepId": "welcome"},
        "context": {"traits": {"role": "dev"}},
    }
    for _ in range(rng.randint(1, 4)):
        where = rng.choice(
            ["userId", "anonymousId", "timestamp", "sentAt", "originalTimestamp", "messageId",
             "event", "type", "properties", "context", "traits", "previousId", "groupId",
             "properties.stepId", "context.onramp", "context.traits", "integrations"]
        )  # fmt: skip
        value = _scalar(rng)
        if "." in where:
            outer, inner = where.split(".")
            if isinstance(event.get(outer), dict):
                event[outer][inner] = value
        else:
            event[where] = value
    return event


def _body(rng: random.Random) -> tuple[str, bytes, dict[str, str]]:
    """(route, body, headers) of one hostile request."""
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"authorization": f"Basic {auth}", "content-type": "application/json"}
    kind = rng.random()
    if kind < 0.08:  # the decide route, with hostile bodies
        headers = {"authorization": f"Bearer {DECIDE_KEY}"}
        payload: object = {"userId": _scalar(rng), "slot": rng.choice(["next_step", _scalar(rng)])}
        if rng.random() < 0.5:
            payload["context"] = {"deep": _deep(rng.choice((3, 60, 900)), "dict")}  # type: ignore[index]
        return "/v1/decide", _dumps(payload, rng), headers
    route = rng.choice(ROUTES)
    if kind < 0.55:
        payload = {
            "batch": [_event(rng) for _ in range(rng.randint(1, 30))],
            "sentAt": rng.choice((*TIMES[:3], "2026-06-01T12:00:01Z")),
            "context": rng.choice(
                [{"ip": "1.2.3.4"}, {"pad": "p" * 3_000}, "str", None, {"big": "x" * 40_000}]
            ),
        }
        route = rng.choice(("/v1/batch", "/v1/b"))
    elif kind < 0.8:
        payload = _event(rng)
    elif kind < 0.83:  # nesting past what JSON decoders follow, as raw text
        depth = rng.choice((1100, 5000, 20_000))
        return route, b"[" * depth + b"]" * depth, headers
    else:
        payload = _scalar(rng)
    if rng.random() < 0.1:
        payload = {"writeKey": rng.choice((*STRINGS, WRITE_KEY)), "batch": [_event(rng)]}
        headers.pop("authorization")
    if rng.random() < 0.05:
        headers["authorization"] = rng.choice(["Basic \udc80", "Basic !!!", "Bearer x", "Basic"])
        headers["authorization"] = headers["authorization"].encode("utf-8", "replace").decode()
    body = _dumps(payload, rng)
    mutate = rng.random()
    if mutate < 0.1:  # flip bytes
        raw = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        body = bytes(raw)
    elif mutate < 0.15:
        body = body[: rng.randrange(len(body) + 1)]
    elif mutate < 0.22:
        headers["content-encoding"] = "gzip"
        body = gzip.compress(body) if rng.random() < 0.7 else body
    elif mutate < 0.24:
        headers["content-encoding"] = rng.choice(["br", "deflate", "gzip, gzip"])
    return route, body, headers


def _dumps(payload: object, rng: random.Random) -> bytes:
    try:
        text = json.dumps(payload, ensure_ascii=rng.random() < 0.5)
    except (RecursionError, ValueError):
        text = "[" * 5000 + "]" * 5000
    return text.encode("utf-8", "surrogatepass")  # lone surrogates stay as the bytes a client sent


REQUESTS = int(os.environ.get("ONRAMP_FUZZ_REQUESTS", "10000"))


def _broker_was_slow(headers: Mapping[str, str], text: str) -> bool:
    """The collector's 503 for Kafka not acknowledging in time (``kafka.ack_timeout_s``):
    ``kafka_unavailable`` with a Retry-After, which the README tells clients to honour."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return False
    return error == "kafka_unavailable" and "Retry-After" in headers


def test_only_the_slow_broker_answer_is_sent_again():
    slow = '{"success":false,"error":"kafka_unavailable","message":"...","retryAfter":5}'
    assert _broker_was_slow({"Retry-After": "5"}, slow)
    assert not _broker_was_slow({}, slow)  # without Retry-After it is not the documented answer
    assert not _broker_was_slow({"Retry-After": "5"}, '{"error":"internal"}')
    assert not _broker_was_slow({"Retry-After": "5"}, "Internal Server Error")
    assert not _broker_was_slow({"Retry-After": "5"}, "[1]")


def test_ten_thousand_hostile_requests_get_no_5xx(collector):
    rng = random.Random(20261203)
    cases = [_body(rng) for _ in range(REQUESTS)]
    statuses: dict[int, int] = {}
    errors: list[str] = []
    retried: list[str] = []

    async def run() -> None:
        # aiohttp rather than httpx: the load generator shares the 2 cores with the server, and
        # httpx took about three times its time (this test: 57 s with httpx, 18 s with aiohttp)
        queue: asyncio.Queue = asyncio.Queue()
        for case in cases:
            queue.put_nowait(case)
        connector = aiohttp.TCPConnector(limit=64)
        timeout = aiohttp.ClientTimeout(total=60)
        # no Content-Type of its own on a body: the bytes and headers are the case's, as sent
        async with aiohttp.ClientSession(
            collector.base_url,
            connector=connector,
            timeout=timeout,
            skip_auto_headers=("Content-Type", "User-Agent"),
            auto_decompress=False,
        ) as c:

            async def send(route: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
                """One request as a Segment library sends it: a 503 that says Kafka did not
                acknowledge (with Retry-After) is the documented answer to a slow broker, not
                to the input, and is sent again (at most 3 times); any other 5xx is kept."""
                for attempt in range(4):
                    async with c.post(route, data=body, headers=headers) as r:
                        text = await r.text(errors="replace")
                    if not (r.status == 503 and _broker_was_slow(r.headers, text)) or attempt == 3:
                        return r.status, text
                    retried.append(route)
                    await asyncio.sleep(1.0)
                raise AssertionError("unreachable")

            async def worker() -> None:
                while not queue.empty():
                    route, body, headers = queue.get_nowait()
                    status, text = await send(route, body, headers)
                    statuses[status] = statuses.get(status, 0) + 1
                    if status >= 500 and len(errors) < 10:
                        errors.append(f"{status} {route} {body[:300]!r}: {text[:300]}")

            await asyncio.gather(*[worker() for _ in range(64)])

    asyncio.run(run())
    assert sum(statuses.values()) == REQUESTS
    assert not errors, (statuses, errors)
    # a broker that stalls now and then on a loaded machine, not one that fails the input: a
    # request refused with 503 for its content would be refused again, and fail above
    assert len(retried) <= REQUESTS // 100, (len(retried), statuses)
    # the generator reaches every kind of answer, not only one rejection
    assert {200, 400, 401} <= set(statuses), statuses
