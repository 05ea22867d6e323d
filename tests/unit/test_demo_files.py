"""deployments/demo.py: what /demo/ serves, and which keys the demo page may see."""

import doctest

import deployments.demo as demo
from ray_app.config import Settings


def test_doctests():
    assert doctest.testmod(demo).failed == 0


def test_only_the_listed_files_are_served():
    body, media = demo.demo_file("")  # /demo/ is the page
    assert media.startswith("text/html") and b"app.js" in body
    assert demo.demo_file("sdk/onramp.js")[1].startswith("text/javascript")
    for name in ("../collector.py", "demo/app.js", "/etc/passwd", "sdk/../../pyproject.toml"):
        assert demo.demo_file(name) is None, name


def test_only_keys_named_demo_reach_the_page():
    config = demo.demo_config(Settings())
    assert config["writeKey"] == "onramp-demo-write-key"
    assert config["readKey"] == "onramp-demo-read-key"
    production = Settings(
        collector={"write_keys": {"web": "w-secret"}, "read_keys": {"ops": "r-secret"}}
    )
    assert demo.demo_config(production) is None
    no_read = Settings(collector={"write_keys": {"demo": "w"}, "read_keys": {"ops": "r-secret"}})
    assert demo.demo_config(no_read)["readKey"] is None


def test_the_demo_exists_only_where_nobody_else_can_reach_it():
    assert demo.demo_config(Settings())["decideKey"] == "onramp-demo-decide-key"
    reachable = Settings(collector={"host": "0.0.0.0"})
    assert not demo.demo_enabled(reachable) and demo.demo_config(reachable) is None
    remote_kafka = Settings(kafka={"bootstrap_servers": "kafka.internal:9092"})
    assert demo.demo_config(remote_kafka) is None
    # a broker on loopback given explicitly (a test broker) is as private as the embedded one
    assert demo.demo_enabled(Settings(kafka={"bootstrap_servers": "127.0.0.1:9092,[::1]:9093"}))
