"""The ``POST /v1/decide`` fast path of the HTTP app (deployments.api): a registered POST is
answered ahead of FastAPI's routing, anything else is not; its answers carry the headers a
FastAPI JSON response would; its body reading stops past the limit and notices a client gone."""

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.responses import Response

from deployments.api import _FAST_POST, _FastPost, fast_post, read_body, send_json


@pytest.fixture(autouse=True)
def no_other_fast_routes() -> Iterator[None]:
    """The registry is per process: an ingress built by an earlier test (it registers the
    tracking routes too) is set aside while these run."""
    registered = dict(_FAST_POST)
    _FAST_POST.clear()
    yield
    _FAST_POST.clear()
    _FAST_POST.update(registered)


def _scope(method: str, path: str, root_path: str = "") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []}


def _route(scope: dict[str, Any]) -> str:
    """Where ``scope`` goes with only ``POST /v1/decide`` registered."""
    seen: list[str] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append("fastapi")

    async def handler(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append("fast")

    fast_post("/v1/decide", handler)
    try:
        asyncio.run(_FastPost(app)(scope, None, None))  # type: ignore[arg-type]
    finally:
        fast_post("/v1/decide", None)
    return seen[0]


def test_only_a_registered_post_takes_the_fast_path():
    assert _route(_scope("POST", "/v1/decide")) == "fast"
    assert _route(_scope("POST", "/onramp/v1/decide", root_path="/onramp")) == "fast"
    assert _route(_scope("GET", "/v1/decide")) == "fastapi"
    assert _route(_scope("POST", "/v1/decide/")) == "fastapi"
    assert _route(_scope("POST", "/v1/batch")) == "fastapi"
    assert _route({"type": "lifespan"}) == "fastapi"


def test_a_route_given_back_goes_to_fastapi():
    seen: list[str] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append("fastapi")

    asyncio.run(_FastPost(app)(_scope("POST", "/v1/decide"), None, None))  # type: ignore[arg-type]
    assert seen == ["fastapi"]


def test_answers_carry_the_headers_of_a_fastapi_json_response():
    sent: list[dict[str, Any]] = []

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    headers = {"Retry-After": "5", "Access-Control-Allow-Origin": "https://app.example"}
    asyncio.run(send_json(send, 503, b'{"error":"x"}', headers))
    like = Response(b'{"error":"x"}', 503, headers, media_type="application/json")
    assert sent[0] == {"type": "http.response.start", "status": 503, "headers": like.raw_headers}
    assert sent[1] == {"type": "http.response.body", "body": b'{"error":"x"}'}


def _receiver(*messages: dict[str, Any]):  # type: ignore[no-untyped-def]
    queue = list(messages)

    async def receive():  # type: ignore[no-untyped-def]
        return queue.pop(0)

    return receive


def test_the_body_is_read_up_to_one_chunk_past_the_limit():
    chunks = [{"type": "http.request", "body": b"x" * 10, "more_body": True} for _ in range(5)]
    last = {"type": "http.request", "body": b"y", "more_body": False}
    assert asyncio.run(read_body(_receiver(*chunks, last), 100)) == b"x" * 50 + b"y"
    assert asyncio.run(read_body(_receiver(*chunks, last), 15)) == b"x" * 20  # 413 follows
    assert asyncio.run(read_body(_receiver({"type": "http.request"}), 10)) == b""
    gone = {"type": "http.disconnect"}
    assert asyncio.run(read_body(_receiver(chunks[0], gone), 100)) is None
