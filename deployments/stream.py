"""Stream supervision as a Serve deployment, for ``serve deploy``: one replica that runs the stream
supervisor (and through it the stream workers) and the online learner as Ray actors.

``onramp up`` starts those actors itself (:class:`ray_app.up.Stack`); a cluster deployed with
``serve deploy deployments/serve_config.yaml`` gets them from this deployment instead, so one
Serve config brings up the whole of Onramp and Serve keeps it up: the replica's health check
pings both actors, and when one is gone Serve replaces the replica, whose new actors resume from
the checkpoints (stream) and the saved learner state. A dead stream worker is not a failed check:
the supervisor restarts it (a check that waited on every worker failed whenever one was being
restarted, and replaced every actor for the one).

The actors are owned by the replica (not detached): they go when it goes, so a replaced or
deleted replica never leaves a stale supervisor holding the actor name.

``user_config`` (changed at runtime, without a restart): ``workers``, the number of stream
workers; a change rescales them (each partition's state moves with it through its checkpoint).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve

from ray_app.config import Settings

__all__ = ["StreamSupervision", "USER_CONFIG_KEYS"]

log = logging.getLogger("onramp.stream")

#: ``user_config`` keys of this deployment and the setting each one changes.
USER_CONFIG_KEYS = {"workers": "stream.workers"}


def _wait_name_free(name: str, namespace: str, timeout_s: float = 60.0) -> None:
    """Wait until no live actor holds ``name`` (a replica being replaced may still be stopping
    its own); an error naming the actor if one still does."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        if time.monotonic() > deadline:
            from ray_app.errors import OnrampError

            raise OnrampError(
                f"actor {name!r} in namespace {namespace!r} is still running: another Onramp "
                "(`onramp up`, or a second StreamSupervision) owns it",
                actor=name,
            )
        time.sleep(0.5)


@serve.deployment(
    name="StreamSupervision",
    num_replicas=1,
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=180,
)
class StreamSupervision:
    """Starts the stream supervisor and the learner; stops them (final checkpoints) on shutdown."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        from ray_app.kafka.topics import ensure_topics

        logging.basicConfig(level=logging.INFO)
        self.settings = settings
        self.bootstrap = bootstrap
        self.supervisor: Any = None
        self.learner: Any = None
        self.workers = settings.stream.workers
        ensure_topics(bootstrap, settings.kafka)
        # The actors start in the first reconfigure (Serve calls it right after this with the
        # user_config, which build_stream_app always sets): with the configured worker count
        # at once, instead of starting the settings' count and rescaling.

    def _start(self, workers: int) -> None:
        from ray_app.learn.service import LEARNER_NAME, start_learner_actor
        from ray_app.stream.supervisor import SUPERVISOR_NAME, start_supervisor_actor

        namespace = self.settings.ray.namespace
        stream = self.settings.stream.model_copy(update={"workers": workers})
        settings = self.settings.model_copy(update={"stream": stream})
        _wait_name_free(SUPERVISOR_NAME, namespace)
        self.supervisor = start_supervisor_actor(settings, self.bootstrap)
        self.workers = workers
        if settings.learn.enabled:
            _wait_name_free(LEARNER_NAME, namespace)
            self.learner = start_learner_actor(settings, self.bootstrap)
        log.info(
            "stream supervision up: %d workers, learner %s",
            workers,
            "on" if self.learner is not None else "off",
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's ``user_config``: ``{"workers": n}`` rescales the stream workers."""
        import ray

        from ray_app.config import StreamSettings

        unknown = set(config) - set(USER_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"user_config: unknown keys {sorted(unknown)}")
        workers = self.workers
        if "workers" in config:
            workers = StreamSettings(workers=config["workers"]).workers  # validated as the setting
        if self.supervisor is None:
            self._start(workers)
        elif workers != self.workers:
            ray.get(self.supervisor.rescale.remote(workers), timeout=600)
            log.info("stream workers: %d -> %d", self.workers, workers)
            self.workers = workers

    def check_health(self) -> None:
        """Serve replaces this replica (and so its actors) when this raises."""
        import ray

        if self.supervisor is None:
            self._start(self.workers)
        # the supervisor, not every worker: a worker being restarted is the supervisor's job,
        # and failing this check would replace the replica and every actor with it
        error = ray.get(self.supervisor.ping.remote(), timeout=20)
        if error is not None:
            raise RuntimeError(f"the stream supervisor cannot keep its workers up: {error}")
        if self.learner is not None:
            error = ray.get(self.learner.ping.remote(), timeout=20)
            if error is not None:
                raise RuntimeError(f"the online learner stopped: {error}")

    async def __call__(self, request: Any = None) -> dict[str, Any]:
        """Totals of the stream workers and the learner's status (for ``serve`` handles)."""
        totals = await self.supervisor.totals.remote()
        learner = await self.learner.status.remote() if self.learner is not None else None
        return {"workers": self.workers, "totals": totals, "learner": learner}

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: the learner saves its state and the workers
        # write final checkpoints before the actors go.
        import ray

        for name in ("learner", "supervisor"):
            actor = getattr(self, name, None)
            if actor is None:
                continue
            try:
                ray.get(actor.stop.remote(), timeout=120)
            except Exception:
                log.warning("%s did not stop cleanly", name, exc_info=True)
            try:
                ray.kill(actor)
            except Exception:
                pass
            setattr(self, name, None)
