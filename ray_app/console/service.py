"""The console's aggregator: one small named actor per Ray namespace that reads Onramp's topics and
keeps :class:`~ray_app.console.state.ConsoleState` up to date, so that the ingress replicas answer
the console's polls from panels built here (:class:`~ray_app.console.feed.ConsoleFeed`).

Its loop, on one thread (Kafka consumers are not thread-safe): poll ``onramp.decisions``,
``onramp.rewards``, ``onramp.events.dlq`` and ``onramp.events`` from their beginning (the
aggregation is rebuilt from the topics, never stored) -> feed the state -> every
:data:`REFRESH_S`: read the exposition ``/metrics`` serves (every replica's series from the
replica-metrics hub, the stream workers' and the learner's status, rendered by the same
functions), the learner's status, the model files and the registry -> render the panels.

Started by the first replica whose console is asked for data (:func:`console_aggregator`), and
owned by it like the replica-metrics hub: if that replica goes, so does the aggregator, and the
next poll starts another, which reads the topics again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ray_app.config import Settings
from ray_app.console.models import ModelHistory
from ray_app.console.state import ConsoleState

__all__ = ["AGGREGATOR_NAME", "REFRESH_S", "ConsoleAggregator", "console_aggregator"]

log = logging.getLogger(__name__)

#: The aggregator's actor name (in ``settings.ray.namespace``).
AGGREGATOR_NAME = "onramp-console"
#: How often the panels are rendered (a poll sees them at most about this old, plus the
#: replica's own refresh).
REFRESH_S = 2.0
#: Seconds a call to another actor (hub, supervisor, learner) may take during a refresh.
_CALL_TIMEOUT_S = 3.0


#: The longest pause of the loop after a failure.
_MAX_PAUSE_S = 30.0


def _close_quietly(consumer: Any) -> None:
    try:
        consumer.close()
    except Exception:
        log.debug("closing the console's consumer", exc_info=True)


def _shares(settings: Settings) -> dict[str, float]:
    """The configured split, as ``onramp report`` reads it."""
    from ray_app.experiments import Experiment

    d = settings.decide
    return Experiment(name=d.experiment, salt=d.salt, arms=d.arms, holdout=d.holdout).shares()


class ConsoleAggregator:
    """See the module docstring. A plain class; :func:`console_aggregator` runs it as an actor."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        from ray_app.catalog import load_catalog
        from ray_app.model.registry import ModelRegistry

        self.settings = settings
        self.bootstrap = bootstrap
        catalog = load_catalog(settings.decide.catalog_path)
        self.state = ConsoleState(_shares(settings), steps=catalog.known_steps)
        self.models = ModelHistory(
            {"treatment": settings.model_path, "treatment_b": settings.decide.model_b_path},
            ModelRegistry.from_settings(settings),
        )
        t = settings.topics
        self.topics = {
            t.decisions: "decisions",
            t.rewards: "rewards",
            t.dlq: "dlq",
            t.events: "events",
        }
        self._lock = threading.Lock()
        self._panels: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refreshed = 0.0
        self.refresh_ms: float | None = None
        #: The last failure of the loop (it goes on after one), and how many there were.
        self.error: str | None = None
        self.failures = 0

    def start(self) -> bool:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="onramp-console", daemon=True)
            self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        """Read the topics from the beginning and refresh the panels, until stopped. A failure
        (Kafka answering with an error, a refresh that raised) is logged and counted, and the
        loop goes on from the next offset of each partition after a pause (1 s, doubling up to
        30 s): it used to end for good, the console showing its last figures for ever."""
        from ray_app.kafka.client import make_consumer

        parts = range(self.settings.kafka.partitions)
        offsets = {(topic, p): 0 for topic in self.topics for p in parts}
        consumer = None
        pause = 1.0
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = make_consumer(self.bootstrap, self.settings.kafka)
                    consumer.assign_at(dict(offsets))
                batch = consumer.poll(timeout_s=0.2, max_records=5_000)
                if batch:
                    with self._lock:
                        for rec in batch:
                            self.state.feed(self.topics[rec.topic], rec.value, rec.timestamp_ms)
                            offsets[(rec.topic, rec.partition)] = rec.offset + 1
                if time.monotonic() - self._refreshed >= REFRESH_S:
                    self.refresh()
                pause = 1.0
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                self.failures += 1
                log.exception("console aggregator: going on in %.0f s", pause)
                if consumer is not None:
                    _close_quietly(consumer)
                    consumer = None
                self._stop.wait(pause)
                pause = min(2 * pause, _MAX_PAUSE_S)
        if consumer is not None:
            _close_quietly(consumer)

    def refresh(self) -> None:
        """Read the figures kept elsewhere and render the panels."""
        started = time.perf_counter()
        self._refreshed = time.monotonic()
        learner = self._learner_status()
        exposition = self._exposition(learner)
        self.models.poll()
        with self._lock:
            self.state.learner = learner or {}
            self.state.model_events = self.models.as_list()
            if exposition is not None:
                self.state.metrics(exposition)
            self._panels = self.state.panels()
        self.refresh_ms = (time.perf_counter() - started) * 1000

    def _call(self, name: str, method: str) -> Any:
        """``name.method()`` of an actor in this namespace; None when it is not running."""
        import ray

        try:
            actor = ray.get_actor(name, namespace=self.settings.ray.namespace)
            return ray.get(getattr(actor, method).remote(), timeout=_CALL_TIMEOUT_S)
        except ValueError:
            return None  # not running in this deployment
        except Exception as exc:
            log.debug("%s.%s unavailable: %s", name, method, exc)
            return None

    def _learner_status(self) -> dict[str, Any] | None:
        from ray_app.learn.service import LEARNER_NAME

        status = self._call(LEARNER_NAME, "status")
        return status if isinstance(status, dict) else None

    def _exposition(self, learner: dict[str, Any] | None) -> str | None:
        """The text ``/metrics`` answers, built by the same functions from the same sources."""
        from ray_app.stream.reader import SUPERVISOR_NAME
        from ray_app.telemetry.learn import learner_metrics_text
        from ray_app.telemetry.replicas import HUB_NAME, merge_expositions
        from ray_app.telemetry.stream import stream_metrics_text

        texts = self._call(HUB_NAME, "texts")
        text = merge_expositions(texts).decode() if texts else ""
        stream = self._call(SUPERVISOR_NAME, "metrics_status")
        if stream:
            text += stream_metrics_text(stream)
        if learner:
            text += learner_metrics_text(learner)
        return text or None

    # -- what replicas ask ---------------------------------------------------------------------

    def panels(self) -> dict[str, bytes]:
        """The latest rendered panels (name -> JSON bytes)."""
        return self._panels

    def user(self, user_key: str) -> list[dict[str, Any]] | None:
        """The user's recent decisions and rewards, in time order (None: none kept)."""
        with self._lock:
            return self.state.user(user_key)

    def status(self) -> dict[str, Any]:
        return {
            "running": self._thread is not None and self._thread.is_alive(),
            "error": self.error,
            "failures": self.failures,
            "refreshMs": self.refresh_ms,
            "counts": dict(self.state.counts),
        }


def console_aggregator(settings: Settings, bootstrap: str) -> Any:
    """The aggregator actor of this namespace, started (and its loop running) if it was not."""
    import ray

    actor = (
        ray.remote(ConsoleAggregator)
        .options(
            name=AGGREGATOR_NAME,
            namespace=settings.ray.namespace,
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=4,
        )
        .remote(settings, bootstrap)
    )
    actor.start.remote()  # type: ignore[attr-defined]
    return actor
