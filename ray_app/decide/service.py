"""``/v1/decide`` without HTTP: a parsed request -> its answer (status, JSON body, headers).

:class:`DecisionService` joins the pieces a replica serves decisions with: the
:class:`~ray_app.decide.batcher.DecisionBatcher` (profiles, features, model, policy), the
:class:`~ray_app.decide.log.DecisionLog` (a decision is answered only once its record is queued
for ``onramp.decisions``; past the log's bound the answer is 503 with Retry-After), the metrics
hooks and the decision's trace span. Each answer's body is encoded once, by orjson; the route
(:mod:`deployments.ingress`) adds its CORS headers and sends it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

import orjson

from ray_app.catalog import (
    DecisionRequestError,
    IneligibleCandidates,
    UnknownAction,
    UnknownSlot,
)
from ray_app.decide.batcher import DecisionBatcher
from ray_app.decide.log import DecisionLog
from ray_app.decide.request import DecideRefused, DecideRequest
from ray_app.errors import DecisionLogBacklog, ErrorCode, OnrampError, error_body
from ray_app.telemetry.tracing import now_ns

__all__ = ["Answer", "DecisionService"]

#: An HTTP answer: status, JSON body, headers.
Answer = tuple[int, bytes, dict[str, str]]

#: The public codes of the catalog's refusals of a decision request (HTTP 422).
_DECISION_CODES: dict[type[DecisionRequestError], ErrorCode] = {
    UnknownSlot: ErrorCode.UNKNOWN_SLOT,
    UnknownAction: ErrorCode.UNKNOWN_ACTION,
    IneligibleCandidates: ErrorCode.INELIGIBLE_CANDIDATES,
}


#: What a decisionId is remembered by: ("user" or "anonymous", the id, the slot, the decisionId).
_AnswerKey = tuple[str, str, str, str]


class _Answered:
    """The answers a replica gave to requests that named their own ``decisionId``, for
    ``ttl_s`` and at most ``size`` of them (the oldest go first), by :data:`_AnswerKey`, each
    with the fingerprint of the request it answered (:func:`_fingerprint`). A request still
    being decided is there too, as the future of its answer: a retry sent while the first is in
    flight waits for that answer instead of being decided (and logged) a second time."""

    def __init__(self, size: int = 10_000, ttl_s: float = 600.0) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._kept: OrderedDict[_AnswerKey, tuple[float, bytes, asyncio.Future[Answer] | bytes]]
        self._kept = OrderedDict()

    def get(self, key: _AnswerKey) -> tuple[bytes, asyncio.Future[Answer] | bytes] | None:
        """(fingerprint, the answer's body or the future of the answer) or None."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        if time.monotonic() - kept[0] > self.ttl_s:
            del self._kept[key]
            return None
        return kept[1], kept[2]

    def put(
        self, key: _AnswerKey, fingerprint: bytes, answer: asyncio.Future[Answer] | bytes
    ) -> None:
        self._kept[key] = (time.monotonic(), fingerprint, answer)
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    def drop(self, key: _AnswerKey) -> None:
        self._kept.pop(key, None)


def _cancelling() -> bool:
    """Whether the running task is being cancelled (not only a future it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _fingerprint(req: DecideRequest) -> bytes:
    """What a retry must repeat to get the first answer again: its candidates and context."""
    return orjson.dumps([req.candidates, req.context], option=orjson.OPT_SORT_KEYS)


def _reused(decision_id: str) -> Answer:
    """409: a decisionId sent again with other candidates or another context."""
    refused = DecideRefused(
        409,
        "decision_id_reused",
        "decisionId",
        f"decisionId {decision_id[:128]!r} was decided for a request with other candidates or "
        "another context; a retry repeats the request, a new request takes a new decisionId",
    )
    return refused.status, orjson.dumps(refused.body()), {}


class DecisionService:
    """Answers decision requests. ``hooks`` are the replica's metrics
    (:class:`~ray_app.telemetry.OtelHooks`: ``decision``, ``kafka_unavailable``), ``tracing`` its
    tracing (:func:`~ray_app.telemetry.tracing.make_tracing`), ``retry_after_s`` the Retry-After
    of a 503."""

    def __init__(
        self,
        batcher: DecisionBatcher,
        decision_log: DecisionLog,
        hooks: Any,
        tracing: Any,
        retry_after_s: int,
    ) -> None:
        self.batcher = batcher
        self.decision_log = decision_log
        self.hooks = hooks
        self.tracing = tracing
        self.retry_after_s = retry_after_s
        # A decisionId the client sent is an idempotency key: a retry of the request gets the
        # answer it got, not a new decision from a profile that changed meanwhile (both were
        # logged, and the reward join kept the first, crediting an outcome of the second
        # answer's action to the first's). Per replica: a retry that reaches another one is
        # decided again (the same draw when the profile has not changed).
        self.answered = _Answered()

    def refuse(self, exc: OnrampError, code: ErrorCode | None = None) -> Answer:
        """The answer to an error: its ``http_status`` and :func:`~ray_app.errors.error_body`,
        with Retry-After on a 503."""
        headers = {"Retry-After": str(self.retry_after_s)} if exc.http_status == 503 else {}
        return exc.http_status, orjson.dumps(error_body(exc, code)), headers

    async def answer(
        self, req: DecideRequest | DecideRefused, traceparent: str | None = None
    ) -> Answer:
        """The answer to one request (``traceparent``: the caller's trace, if any): a decision
        (200), the reason the request was refused (4xx), or 503 when the log is behind. A
        request naming its own ``decisionId`` that this replica answered (or is answering) gets
        that answer again, or 409 when its candidates or context differ."""
        if isinstance(req, DecideRefused):
            return req.status, orjson.dumps(req.body()), {}
        if req.decision_id is None:
            return await self._decide(req, traceparent)
        kind = "user" if req.user_id is not None else "anonymous"
        key = (kind, req.user_key, req.slot, req.decision_id)
        fingerprint = _fingerprint(req)
        kept = self.answered.get(key)
        if kept is not None:
            if kept[0] != fingerprint:
                return _reused(req.decision_id)
            if isinstance(kept[1], bytes):
                return 200, kept[1], {}
            first = kept[1]  # the first is still being decided
            try:
                return await asyncio.shield(first)
            except asyncio.CancelledError:
                if first.cancelled() and not _cancelling():  # the first went away: decide
                    return await self.answer(req, traceparent)
                raise
        pending: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.answered.put(key, fingerprint, pending)
        try:
            answer = await self._decide(req, traceparent)
        except asyncio.CancelledError:  # the client went away: a retry waiting decides itself
            self.answered.drop(key)
            pending.cancel()
            raise
        except Exception as exc:
            self.answered.drop(key)
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning without a retry
            raise
        if answer[0] == 200:
            self.answered.put(key, fingerprint, answer[1])
        else:  # a refusal or a 503 is not remembered: the retry is decided
            self.answered.drop(key)
        pending.set_result(answer)
        return answer

    async def _decide(self, req: DecideRequest, traceparent: str | None) -> Answer:
        started = time.perf_counter()
        started_ns = now_ns() if self.tracing.enabled else None
        decision = await self.batcher.decide(req)
        if isinstance(decision, DecisionRequestError):
            code = _DECISION_CODES.get(type(decision), ErrorCode.INVALID_DECISION_REQUEST)
            return self.refuse(decision, code)
        span = None
        if self.tracing.enabled:
            span = self.tracing.decision_span(
                decision.slot, traceparent, decision.event_trace, started_ns
            )
            decision.trace_id = self.tracing.trace_id(span)
        if decision.chosen is not None and not self.decision_log.offer(
            [(decision.user_key.encode(), decision.record())]
        ):
            self.hooks.kafka_unavailable("decision_log")
            self.tracing.end(span, 503)
            why = "cannot reach Kafka" if self.decision_log.down else "is not keeping up"
            return self.refuse(DecisionLogBacklog(f"the decision log {why}"))
        if span is not None:
            self.tracing.end(
                span,
                200,
                **{
                    "onramp.decision_id": decision.decision_id,
                    "onramp.arm": decision.arm,
                    "onramp.chosen": decision.chosen,
                    "onramp.cold_start": decision.cold_start,
                },
            )
        self.hooks.decision(
            decision.slot, decision.arm, decision.cold_start, time.perf_counter() - started
        )
        return 200, orjson.dumps(decision.answer()), {}
