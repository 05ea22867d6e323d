"""Multi-node stream workers on one machine (``ray.cluster_utils.Cluster``: a head and worker nodes,
each its own raylet), against a real Kafka-protocol broker. Run by ``test_multinode.py`` in a
subprocess (a Cluster is its own Ray; it must not meet the test session's Ray).

1. head + 1 node: 2 stream workers land on 2 different nodes (placement ``spread``), and so do
   2 decision replicas (Serve's own spread);
2. a node is removed mid-stream (its raylet killed, no graceful stop): its worker is restarted
   on a live node from its partitions' checkpoints;
3. a node is added: the supervisor moves a worker onto it (final checkpoint, resume there);
4. every record is taken exactly once per partition and the live profiles equal one ordered
   in-process pass over each partition (the exactly-once checks of the stream tests).

Prints one JSON line (``RESULT {...}``) with what it saw; exits non-zero on any failed check.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

PARTITIONS = 4


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _scrape(port: int) -> tuple[dict[str, float], set[str]]:
    """Refused bodies by replica, and every replica any series is labelled with."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    refused = {
        s.labels.get("replica", "?"): s.value
        for s in samples
        if s.name == "onramp_events_rejected_total" and s.labels.get("reason") == "invalid_json"
    }
    return refused, {s.labels["replica"] for s in samples if "replica" in s.labels}


def _scrapes_add_up(port: int, settings: Any) -> list[Any]:
    """Bodies sent, then /metrics scraped again and again: whichever replica answers (Serve
    prefers the one on the proxy's node), both replicas' series are there, each once and
    labelled, and the counts add up to what was sent, the same in every scrape. (Bodies that
    are not JSON: counted and sent to the DLQ, they leave the stream's event time alone.)"""
    key = next(iter(settings.collector.write_keys.values())).get_secret_value()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(key, "")) as http:
        for n in range(60):
            sent = http.post("/v1/track", content=b"not json %d" % n)
            assert sent.status_code == 400, sent.text

    def settled() -> bool:
        accepted, replicas = _scrape(port)
        return sum(accepted.values()) == 60 and len(replicas) == 2

    _wait(settled, 30, "both replicas' series in a scrape")
    scrapes = [_scrape(port) for _ in range(8)]
    assert all(s == scrapes[0] for s in scrapes), scrapes  # the same, whoever answered
    return [scrapes[0][0], sorted(scrapes[0][1])]


def _replica_nodes() -> list[str]:
    """Node ids of the live replicas of the decision (Collector) deployment."""
    from ray._private.state import state

    return [
        a["Address"]["NodeID"]
        for a in state.actor_table(None).values()
        if a.get("State") == "ALIVE"
        and "Collector" in (a.get("Name") or "")
        and "SERVE_REPLICA" in (a.get("Name") or "")
    ]


def main() -> dict[str, Any]:
    import logging

    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from deployments.app import build_app
    from ray_app.config import SimSettings
    from ray_app.kafka import EmbeddedBroker, OutRecord, ensure_topics, make_consumer, make_producer
    from ray_app.kafka.broker import free_port
    from ray_app.kafka.client import partition_for
    from ray_app.sim import TrafficPlan
    from ray_app.state import SessionShard
    from ray_app.stream import StreamSupervisor, state_config
    from ray_app.up import configure_http_mode
    from tests.conftest import make_settings
    from validation.batch import BatchValidator

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ray_app.stream").setLevel(logging.INFO)
    started = time.monotonic()
    port = free_port()
    configure_http_mode(False)  # the default proxy (the test session may have set HAProxy's)
    result: dict[str, Any] = {"phases": {}}

    def phase(name: str) -> None:
        result["phases"][name] = round(time.monotonic() - started, 1)

    plan = TrafficPlan.build(
        SimSettings(users=150, seed=11, duplicate_share=0.05, out_of_order_share=0.1)
    )
    records = plan.normalized(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    produced = len(records)
    third = produced // 3
    waves = [records[:third], records[third : 2 * third], records[2 * third :]]
    ckpt = Path(tempfile.mkdtemp(prefix="onramp-multinode-"))

    with EmbeddedBroker() as broker:
        settings = make_settings(
            broker.bootstrap,
            ONRAMP_KAFKA__TOPIC_PREFIX="multinode",
            ONRAMP_KAFKA__PARTITIONS=str(PARTITIONS),
            ONRAMP_STREAM__CHECKPOINT_INTERVAL_S="0.3",
            ONRAMP_STREAM__POLL_MAX_RECORDS="200",
            ONRAMP_STREAM__PLACEMENT="spread",
            ONRAMP_STREAM__REBALANCE_INTERVAL_S="0.5",
            ONRAMP_DECIDE__MIN_REPLICAS="2",
            ONRAMP_DECIDE__MAX_REPLICAS="2",
        )
        ensure_topics(broker.bootstrap, settings.kafka)
        topic = settings.topics.events
        producer = make_producer(broker.bootstrap, settings.kafka)

        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": False,
                # 2 shared cores can starve a raylet for seconds: do not declare it dead for that.
                # A check of a starved raylet fails only at its timeout (10 s): 20 of them in a
                # row take over 200 s. A killed raylet refuses the check at once: 20 checks
                # 0.5 s apart declare it dead in ~10 s (at Ray's 3 s period, 60 s of waiting for
                # Serve to replace the decision replica that was on it).
                "_system_config": {
                    "health_check_failure_threshold": 20,
                    "health_check_period_ms": 500,
                },
            },
        )
        nodes = [cluster.add_node(num_cpus=1)]
        ray.init(address=cluster.address, log_to_driver=False, namespace="onramp-multinode")
        cluster.wait_for_nodes()
        # two decision replicas (the Serve app), deployed while the stream workers start
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve._run(
            build_app({"settings": settings, "http_host": "127.0.0.1"}),
            name="onramp",
            route_prefix="/",
            _blocking=False,
        )
        phase("cluster")
        sup = StreamSupervisor(
            settings, broker.bootstrap, workers=2, checkpoint_uri=str(ckpt)
        ).start()
        try:
            phase("workers")
            placement = sup.placement()
            result["startPlacement"] = len(placement)
            assert len(sup.nodes()) == 2, sup.nodes()
            assert len(placement) == 2 and "?" not in placement, placement  # one per node
            _wait(lambda: _healthy(port), 120, "the Serve app")
            # /healthz answers once one replica is up; the second may still be starting
            _wait(lambda: len(_replica_nodes()) >= 2, 120, "both decision replicas")
            phase("serve")
            replicas = _replica_nodes()
            result["decisionReplicaNodes"] = len(set(replicas))
            assert len(replicas) == 2 and len(set(replicas)) == 2, replicas
            result["metricsScrapes"] = _scrapes_add_up(port, settings)
            phase("metrics")

            producer.send_all([OutRecord(topic, v, key=k) for k, v in waves[0]]).result(60)
            _wait(lambda: sup.totals().get("records", 0) > 0, 60, "the first records taken")

            # a node dies mid-stream: the worker on it is restarted on a live node
            victim = nodes[0]
            victim_id = victim.node_id
            on_victim = placement.get(victim_id, [])
            assert len(on_victim) == 1, (victim_id, placement)
            cluster.remove_node(victim, allow_graceful=False)
            producer.send_all([OutRecord(topic, v, key=k) for k, v in waves[1]]).result(60)
            _wait(lambda: sup.restarts >= 1, 90, "the dead node's worker restarted")
            phase("nodeLost")
            after_loss = sup.placement()
            result["afterLoss"] = {k[:8]: v for k, v in after_loss.items()}
            assert victim_id not in after_loss, after_loss
            assert sorted(i for ws in after_loss.values() for i in ws) == [0, 1]

            # a node joins: the supervisor moves a worker onto it
            joined = cluster.add_node(num_cpus=1)
            # (not cluster.wait_for_nodes(): Ray lists the lost node as alive until its health
            # checks fail, which the raised threshold above makes slower than that wait)
            _wait(lambda: joined.node_id in sup.placement(), 90, "a worker moved to the new node")
            producer.send_all([OutRecord(topic, v, key=k) for k, v in waves[2]]).result(60)
            phase("nodeJoined")
            final = sup.placement()
            result["afterJoin"] = {k[:8]: v for k, v in final.items()}
            assert len(final) == 2 and all(len(v) == 1 for v in final.values()), final
            # Serve keeps two decision replicas, on live nodes, and they answer
            alive = {cluster.head_node.node_id, joined.node_id}  # what is really left
            _wait(
                lambda: len(r := _replica_nodes()) == 2 and set(r) <= alive and _healthy(port),
                120,
                "two decision replicas on live nodes",
            )
            decided = httpx.get(
                f"http://127.0.0.1:{port}/v1/decide",
                params={"user_id": "u-multinode", "slot": "next_step"},
                headers={"authorization": "Bearer onramp-demo-read-key"},
                timeout=30,
            )
            assert decided.status_code == 200, decided.text
            phase("replicasBack")

            totals = sup.wait_for(produced, timeout_s=120)
            result.update(totals=totals, produced=produced, restarts=sup.restarts, moves=sup.moves)
            assert totals["records"] == produced, totals
            assert (
                totals["applied"]
                + totals["duplicates"]
                + totals["late"]
                + totals["rejected"]
                + totals["buffered"]
                + totals["forwarded"]
                - totals["relayed"]
                == produced
            ), totals
            # a forward record that the lost node's worker wrote again on its replay is dropped
            # once more where it lands, as a duplicate or as late (a forward may be late on its
            # first arrival too, after the restart: test_stream_chaos counts those exactly)
            replayed = totals["relayed"] - totals["forwarded"]
            assert replayed >= 0, totals
            planned = plan.count("duplicate")
            assert planned <= totals["duplicates"] <= planned + replayed, totals
            live = sup.profiles()
            phase("allTaken")
        finally:
            sup.stop()
            producer.close()
            serve.shutdown()
            ray.shutdown()
            cluster.shutdown()

        consumer = make_consumer(broker.bootstrap, settings.kafka)
        consumer.assign([(topic, p) for p in range(PARTITIONS)])
        by_partition: dict[int, list[Any]] = {p: [] for p in range(PARTITIONS)}
        seen = 0
        # the topic also holds the link, merge and forward records of identity stitching
        in_topic = produced + totals["control"] + totals["relayed"]
        deadline = time.monotonic() + 60
        while seen < in_topic and time.monotonic() < deadline:
            for r in consumer.poll(0.2, 10_000):
                by_partition[r.partition].append((r.offset, r.key, r.value))
                seen += 1
        consumer.close()
        assert seen == in_topic, (seen, in_topic)
        reference: dict[str, Any] = {}
        cfg = state_config(settings)  # the workers' state settings and validation
        for p, recs in by_partition.items():
            recs.sort()
            assert all(partition_for(k, PARTITIONS) == p for _, k, _ in recs)
            shard = SessionShard(p, cfg, BatchValidator.for_state(cfg))
            shard.process([(k, v) for _, k, v in recs])
            reference.update(shard.profiles_as_dicts())
        result["users"] = len(live)
        assert len(live) == len(reference) >= 100, (len(live), len(reference))
        assert live == reference, "live profiles differ from one ordered pass"
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    import os

    # Raylets on 2 shared cores can take more than Ray's default 30 s to register.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    out = main()
    print("RESULT " + json.dumps(out), flush=True)
    sys.exit(0)
