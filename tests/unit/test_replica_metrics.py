"""Every replica's series in every scrape (:mod:`ray_app.telemetry.replicas`): merged families,
each sample labelled with its replica, so sums are the same whichever replica answers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ray_app.telemetry import replicas
from ray_app.telemetry.replicas import Publisher, ReplicaMetricsStore, merge_expositions


def _replica(accepted: int, latency: list[float]) -> str:
    r = CollectorRegistry()
    c = Counter("onramp_events_accepted", "events accepted", ["source"], registry=r)
    c.labels("web").inc(accepted)
    h = Histogram("onramp_decide_seconds", "decide latency", registry=r)
    for v in latency:
        h.observe(v)
    return generate_latest(r).decode()


def _samples(text: bytes, name: str) -> dict[tuple, float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
        if s.name == name
    }


def test_two_replicas_appear_once_each_and_add_up() -> None:
    texts = {"r1": _replica(3, [0.01]), "r2": _replica(5, [0.2, 0.3])}
    merged = merge_expositions(texts)
    accepted = _samples(merged, "onramp_events_accepted_total")
    assert accepted == {
        (("replica", "r1"), ("source", "web")): 3.0,
        (("replica", "r2"), ("source", "web")): 5.0,
    }
    counts = _samples(merged, "onramp_decide_seconds_count")
    assert sum(counts.values()) == 3.0 and len(counts) == 2
    # one HELP and TYPE per family: a valid exposition, whatever the number of replicas
    assert merged.decode().count("# TYPE onramp_events_accepted_total counter") == 1
    # the same figures whichever replica answers: the merge does not depend on who asks
    assert merge_expositions(dict(reversed(list(texts.items())))) == merged


def test_a_silent_replica_drops_out_after_the_ttl() -> None:
    store = ReplicaMetricsStore(ttl_s=10)
    store.put("r1", "a", now=0)
    store.put("r2", "b", now=5)
    assert store.texts(now=9) == {"r1": "a", "r2": "b"}
    assert store.texts(now=12) == {"r2": "b"}
    store.put("r1", "c", now=13)  # back (a replacement with the same id, say)
    assert store.texts(now=14) == {"r1": "c", "r2": "b"}


def test_without_ray_the_publisher_never_starts_one(monkeypatch) -> None:
    """Publishing and scraping outside Ray (a process whose Ray was shut down, at its exit) must
    not reach for the hub actor: Ray's auto-init would start a Ray of its own."""
    import asyncio
    import threading

    import ray

    called = threading.Event()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(replicas, "metrics_hub", lambda namespace: called.set())
    monkeypatch.setattr(replicas, "PUBLISH_INTERVAL_S", 0.01)
    pub = Publisher("ns", "r1", lambda: b"onramp_x_total 1.0\n")
    pub.start()
    try:
        text = asyncio.run(pub.scrape()).decode()
        assert not called.wait(0.3), "the hub was reached for without Ray"
    finally:
        pub.stop()
    assert 'onramp_x_total{replica="r1"} 1.0' in text  # its own series, labelled
