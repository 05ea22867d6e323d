"""cluster.yaml: Ray's own validator accepts it (as `ray up` runs it, offline), and Onramp's
stricter check finds keys Ray lets through."""

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from deployments.check import (
    AWS_PROVIDER_KEYS,
    check_cluster_config,
    cluster_config_problems,
    main,
    ray_validate_cluster_config,
)
from ray_app.config import load_settings
from ray_app.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_validator_accepts_the_shipped_cluster(config):
    prepared = check_cluster_config(CLUSTER)
    # what prepare_config did: every node type has min/max workers, setup merged per role
    types = prepared["available_node_types"]
    assert set(types) == {"head", "stream", "decide", "train"}
    assert prepared["head_node_type"] == "head" and types["head"]["max_workers"] == 0
    assert prepared["provider"]["type"] == "aws"
    assert (
        prepared["head_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]
    )
    assert sum(t["min_workers"] for t in types.values()) <= prepared["max_workers"]


def test_node_types_are_sized_for_their_work(config):
    types = config["available_node_types"]
    assert types["stream"]["node_config"]["InstanceType"].startswith("r")  # memory for state
    assert types["decide"]["node_config"]["InstanceType"].startswith("c")  # CPU for forwards
    assert types["train"]["node_config"]["InstanceType"].startswith(("g", "p"))  # GPU
    assert types["train"]["min_workers"] == 0 and types["stream"]["min_workers"] >= 1
    # every custom resource the Serve config asks for exists on some node type
    offered = {r for t in types.values() for r in t.get("resources", {})}
    serve = yaml.safe_load((ROOT / "deployments" / "serve_config.yaml").read_text())
    asked = {
        r
        for app in serve["applications"]
        for d in app["deployments"]
        for r in d.get("ray_actor_options", {}).get("resources", {})
    }
    assert asked and asked <= offered


def test_setup_installs_onramp_and_start_commands_load_the_environment(config):
    assert config["file_mounts"]["~/onramp"] == "."
    assert any("pip install" in c and "$HOME/onramp" in c for c in config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all(". ~/onramp.env" in c for c in start), key
    # the environment file's example lines are real Onramp settings
    header = CLUSTER.read_text().split("cluster_name:")[0]
    env = dict(  # as `set -a; . ~/onramp.env` reads it: shell words
        shlex.split(line.removeprefix("#   "))[0].split("=", 1)
        for line in header.splitlines()
        if re.match(r"#   ONRAMP_[A-Z_]+=", line)
    )
    assert "ONRAMP_KAFKA__BOOTSTRAP_SERVERS" in env and "ONRAMP_STREAM__CHECKPOINT_URI" in env
    settings = load_settings(env=env)
    assert settings.kafka.bootstrap_servers.startswith("b-1.")
    assert set(settings.collector.decide_keys) == {"web"}
    for c in config["setup_commands"]:
        shlex.split(c)  # each command is valid shell quoting


def test_ray_rejects_an_unknown_top_level_or_node_type_key(config):
    bad = copy.deepcopy(config)
    bad["max_wokers"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_wokers"):
        ray_validate_cluster_config(bad)
    bad = copy.deepcopy(config)
    bad["available_node_types"]["stream"]["min_worker"] = 1
    with pytest.raises(ConfigError, match="min_worker"):
        check_cluster_config(bad)


def test_strict_check_finds_what_ray_lets_through(config):
    bad = copy.deepcopy(config)
    bad["provider"]["regoin"] = "eu-west-1"
    bad["available_node_types"]["decide"]["node_config"]["InstanceTyp"] = "c6i.4xlarge"
    ray_validate_cluster_config(bad)  # Ray's validator: fine
    assert cluster_config_problems(bad) == [
        "provider.regoin: unknown key for the aws provider",
        "available_node_types.decide.node_config.InstanceTyp: not an EC2 RunInstances parameter",
    ]
    with pytest.raises(ConfigError) as info:
        check_cluster_config(bad)
    assert "provider.regoin" in str(info.value) and "InstanceTyp" in str(info.value)
    assert cluster_config_problems(config) == []


def test_known_provider_keys_are_ones_ray_reads():
    """Each key the strict check allows appears in Ray's schema or its launcher/AWS code."""
    pkg = Path(ray.__file__).parent / "autoscaler"
    files = [*(pkg / "_private").glob("*.py"), *(pkg / "_private" / "aws").rglob("*.py")]
    source = (pkg / "ray-schema.json").read_text() + "".join(p.read_text() for p in files)
    for key in AWS_PROVIDER_KEYS:
        assert f'"{key}"' in source, key


def test_cli_reports_problems(tmp_path, config, capsys):
    bad = copy.deepcopy(config)
    bad["provider"]["regoin"] = "x"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main([str(CLUSTER)]) == 0
    assert main([str(path)]) == 1
    assert "provider.regoin: unknown key for the aws provider" in capsys.readouterr().out


def test_check_module_examples_run():
    """deployments/ is outside pytest's doctest paths: run deployments.check's examples here."""
    import doctest

    import deployments.check

    result = doctest.testmod(deployments.check)
    assert result.attempted >= 2 and result.failed == 0


def test_worker_nodes_get_credentials_and_cpu_nodes_the_cpu_torch(config):
    """Ray gives its IAM role to the head only: every worker type names an instance profile, so
    s3:// checkpoints and archives work there; CPU nodes install torch's CPU build (the default
    wheel pulls CUDA libraries), the GPU type the CUDA one; S3 support comes from the declared
    `s3` extra at the tested versions."""
    types = config["available_node_types"]
    for name, t in types.items():
        if name != "head":
            assert t["node_config"].get("IamInstanceProfile"), name
    setup = " ".join(config["setup_commands"])
    assert "download.pytorch.org/whl/cpu" in setup and "torch==2.13.0" in setup
    assert "[confluent,s3]" in setup and "constraints.txt" in setup
    assert "s3fs" not in setup  # through the extra, not by hand
    assert any("torch" in c for c in types["train"]["worker_setup_commands"])


def test_direct_imports_are_declared_and_the_tested_set_is_pinned():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"]}
    assert {"numpy", "pandas", "pyarrow", "fsspec", "torch"} <= declared
    assert project["optional-dependencies"]["s3"] == ["s3fs>=2024.6"]
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert {"numpy", "pandas", "pyarrow", "fsspec", "ray", "torch"} <= set(pins)
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_the_always_up_stream_nodes_hold_the_serve_configs_stream_workers(config):
    """Each stream worker asks the onramp_stream resource the env file documents; the spread
    placement pins workers to the nodes there are, so the stream nodes always up must hold the
    workers serve_config.yaml runs (one unit a node held one of 8 workers: six never started)."""
    stream = config["available_node_types"]["stream"]
    per_worker = 1.0  # ONRAMP_STREAM__WORKER_RESOURCES='{"onramp_stream": 1}' (cluster.yaml)
    assert "ONRAMP_STREAM__WORKER_RESOURCES='{\"onramp_stream\": 1}'" in CLUSTER.read_text()
    serve = yaml.safe_load((ROOT / "deployments" / "serve_config.yaml").read_text())
    [workers] = [
        d["user_config"]["workers"]
        for app in serve["applications"]
        for d in app["deployments"]
        if d["name"] == "StreamSupervision"
    ]
    held = stream["min_workers"] * stream["resources"]["onramp_stream"] // per_worker
    assert held >= workers, (held, workers)
