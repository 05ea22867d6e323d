"""Scoped keys and the refusal to expose the shipped demo keys (ray_app.config)."""

import doctest

import pytest

import ray_app.config as config
from ray_app.config import DEMO_KEYS, Settings, key_exposure, local_only, require_safe_keys
from ray_app.errors import ConfigError


def test_doctests():
    assert doctest.testmod(config).failed == 0


CHECKPOINT = {"checkpoint_key": "ck-0123456789abcdef0123"}


def _own_keys(**over):
    keys = {
        "write_keys": {"web": "w-0123456789abcdef"},
        "decide_keys": {"web": "d-0123456789abcdef"},
        "read_keys": {"ops": "r-0123456789abcdef"},
    }
    keys.update(over)
    return keys


@pytest.mark.parametrize(
    "host, bootstrap, local",
    [
        ("127.0.0.1", "", True),
        ("localhost", "localhost:9092", True),
        ("::1", "[::1]:9092", True),
        ("0.0.0.0", "", False),
        ("127.0.0.1", "127.0.0.1:9092,kafka-2.prod:9092", False),
        ("127.0.0.1", "SASL_SSL://kafka.prod:9093", False),
        ("10.0.0.5", "127.0.0.1:9092", False),
    ],
)
def test_local_only_needs_both_http_and_kafka_on_loopback(host, bootstrap, local):
    s = Settings(collector={"host": host}, kafka={"bootstrap_servers": bootstrap})
    assert local_only(s) is local


def test_a_reachable_onramp_refuses_every_shipped_key_by_scope():
    s = Settings(collector={"host": "0.0.0.0"})
    problems = key_exposure(s)
    assert [p.split(" ")[0] for p in problems] == [
        "collector.write_keys.demo",
        "collector.decide_keys.demo",
        "collector.read_keys.demo",
        "stream.checkpoint_key",
    ]
    with pytest.raises(ConfigError, match="refusing to start a reachable Onramp"):
        require_safe_keys(s)


def test_the_readme_recipe_that_sets_only_write_keys_is_refused():
    # the shipped read key would otherwise keep reading every profile
    s = Settings(
        collector={"host": "0.0.0.0", "write_keys": {"web": "w-0123456789abcdef"}},
        kafka={"bootstrap_servers": "kafka.prod:9092"},
    )
    problems = key_exposure(s)
    assert any("decide_keys.demo" in p for p in problems)
    assert any("read_keys.demo" in p for p in problems)


def test_a_demo_secret_under_another_name_is_still_refused():
    keys = _own_keys(read_keys={"ops": DEMO_KEYS["read"]})
    s = Settings(collector={"host": "0.0.0.0", **keys}, stream=CHECKPOINT)
    assert key_exposure(s) == [
        "collector.read_keys.ops is the shipped demo key: set your own (or remove it)"
    ]


def test_own_keys_start_anywhere_and_demo_keys_start_on_loopback():
    require_safe_keys(Settings(collector={"host": "0.0.0.0", **_own_keys()}, stream=CHECKPOINT))
    require_safe_keys(Settings())  # make demo: embedded broker, loopback ingress


def test_no_write_key_at_all_is_refused_when_reachable():
    s = Settings(collector={"host": "0.0.0.0", **_own_keys(write_keys={})}, stream=CHECKPOINT)
    assert key_exposure(s) == ["collector.write_keys is empty: no source could send events"]


def test_a_reachable_onramp_needs_a_checkpoint_key_every_node_shares():
    s = Settings(collector={"host": "0.0.0.0", **_own_keys()})
    assert [p.split(" ")[0] for p in key_exposure(s)] == ["stream.checkpoint_key"]


def test_short_keys_and_a_read_secret_shared_with_a_browser_key_are_refused():
    keys = _own_keys(decide_keys={"web": "short"}, read_keys={"ops": "w-0123456789abcdef"})
    s = Settings(collector={"host": "0.0.0.0", **keys}, stream=CHECKPOINT)
    assert key_exposure(s) == [
        "collector.decide_keys.web is shorter than 16 characters",
        "collector.read_keys.ops is also collector.write_keys.web: a browser would hold read scope",
    ]


def test_serve_deploy_counts_as_reachable_whatever_collector_host_says():
    # Serve's proxy binds http_options.host (0.0.0.0 in serve_config.yaml), not collector.host:
    # only `onramp up`, which starts Serve itself, says where it binds
    from deployments.app import build_app, build_stream_app

    local_kafka = Settings(kafka={"bootstrap_servers": "127.0.0.1:9092"})
    for build in (build_app, build_stream_app):
        with pytest.raises(ConfigError, match="shipped demo key"):
            build({"settings": local_kafka})
    assert build_app({"settings": local_kafka, "http_host": "127.0.0.1"}) is not None
    assert local_only(local_kafka, http_host="127.0.0.1")
    assert not local_only(local_kafka, http_host="0.0.0.0")
