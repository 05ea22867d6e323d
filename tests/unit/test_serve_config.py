"""deployments/serve_config.yaml: Serve's schema accepts it, and Onramp's stricter check names the
fields Serve would silently ignore (by path), unknown settings in args and unknown user_config."""

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.app import ARGS, _settings_from, ingress_options
from deployments.check import USER_CONFIG_KEYS, check_serve_config, serve_config_problems
from deployments.stream import USER_CONFIG_KEYS as STREAM_USER_CONFIG
from ray_app.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "deployments" / "serve_config.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(SERVE.read_text())


def test_shipped_config_passes_serve_schema_and_the_strict_check(config):
    parsed = check_serve_config(SERVE)
    apps = {a.name: a for a in parsed.applications}
    assert set(apps) == {"onramp", "onramp-stream"}
    assert apps["onramp"].import_path == "deployments.app:build_app"
    assert apps["onramp-stream"].import_path == "deployments.app:build_stream_app"
    assert apps["onramp-stream"].route_prefix is None  # not on HTTP
    collector = apps["onramp"].deployments[0]
    assert "autoscaling_config" not in config["applications"][0]["deployments"][0]  # settings
    settings = _settings_from(None, apps["onramp"].args["settings"])
    options = ingress_options(settings)
    auto = options["autoscaling_config"]
    assert auto["min_replicas"] >= 1 and auto["max_replicas"] > auto["min_replicas"]
    assert auto["initial_replicas"] == 2 and auto["downscale_delay_s"] == 300
    assert auto["look_back_period_s"] == 30.0  # Serve's own default, from decide.*
    assert options["ray_actor_options"] == {"num_cpus": 2, "resources": {"onramp_decide": 1}}
    assert set(collector.user_config) <= set(USER_CONFIG_KEYS["Collector"])
    assert apps["onramp-stream"].deployments[0].num_replicas == 1
    assert serve_config_problems(config) == []


def test_serve_schema_silently_accepts_unknown_fields_ours_names_them(config):
    bad = copy.deepcopy(config)
    bad["http_options"]["prot"] = 9000
    bad["applications"][0]["deployments"][0]["autoscaling_confg"] = {"max_replicas": 3}
    bad["applications"][1]["deployments"][0]["ray_actor_options"]["num_cpu"] = 1
    ServeDeploySchema.model_validate(bad)  # Serve: no complaint
    assert serve_config_problems(bad) == [
        "http_options.prot: unknown field",
        "applications[0].deployments[0].autoscaling_confg: unknown field",
        "applications[1].deployments[0].ray_actor_options.num_cpu: unknown field",
    ]
    with pytest.raises(ConfigError) as info:
        check_serve_config(bad)
    assert "applications[0].deployments[0].autoscaling_confg: unknown field" in str(info.value)


def test_nested_models_are_walked(config):
    bad = copy.deepcopy(config)
    bad["applications"][0]["deployments"][0]["autoscaling_config"] = {"upscale_delay": 1}
    bad["logging_config"]["levle"] = "INFO"
    problems = serve_config_problems(bad)
    assert "applications[0].deployments[0].autoscaling_config.upscale_delay: unknown field" in (
        problems
    )
    assert "logging_config.levle: unknown field" in problems


def test_args_are_checked_against_onramp_settings(config):
    bad = copy.deepcopy(config)
    bad["applications"][0]["args"]["settings"]["decide"]["epsilonn"] = 0.2
    bad["applications"][0]["args"]["settings"]["kafka"] = {"partitions": 0}
    bad["applications"][1]["args"]["bootstrap_servers"] = "x:9092"
    assert serve_config_problems(bad) == [
        "applications[0].args.settings.kafka.partitions: Input should be greater than or equal to 1",
        "applications[0].args.settings.decide.epsilonn: unknown setting",
        f"applications[1].args.bootstrap_servers: unknown argument (known: {list(ARGS)})",
    ]


def test_user_config_is_checked_per_deployment(config):
    bad = copy.deepcopy(config)
    bad["applications"][0]["deployments"][0]["user_config"]["epsilon"] = 2
    bad["applications"][0]["deployments"][0]["user_config"]["lr"] = 0.1
    bad["applications"][1]["deployments"][0]["user_config"]["workers"] = 0
    problems = serve_config_problems(bad)
    assert (
        problems[0]
        == "applications[0].deployments[0].user_config.epsilon: Input should be less than or equal to 1"
    )
    assert problems[1].startswith(
        "applications[0].deployments[0].user_config.lr: unknown user_config key of Collector"
    )
    assert (
        problems[2]
        == "applications[1].deployments[0].user_config.workers: Input should be greater than or equal to 1"
    )
    assert STREAM_USER_CONFIG == USER_CONFIG_KEYS["StreamSupervision"]


def test_runtime_env_fields_are_checked(config):
    bad = copy.deepcopy(config)
    bad["applications"][0]["runtime_env"] = {"env_vars": {"A": "1"}, "envvars": {"B": "2"}}
    assert serve_config_problems(bad) == [
        "applications[0].runtime_env.envvars: unknown runtime_env field"
    ]


def test_user_config_keys_are_what_reconfigure_accepts():
    """The strict check and the replica's reconfigure know the same keys, both ways (gamma
    passed reconfigure and was refused by the check)."""
    from deployments.collector import CollectorIngress
    from deployments.stream import StreamSupervision
    from ray_app.config import load_settings

    for name, deployment in (
        ("Collector", CollectorIngress),
        ("StreamSupervision", StreamSupervision),
    ):
        cls = deployment.func_or_class
        # reconfigure checks the keys before it touches the replica
        bare = SimpleNamespace(settings=load_settings(env={}))
        for key in USER_CONFIG_KEYS[name]:
            with pytest.raises(ValueError) as info:
                cls.reconfigure(bare, {key: None, "zz_unknown": 1})
            assert str(info.value).startswith("user_config: unknown keys ['zz_unknown']")
    from ray_app.decide.user_config import USER_CONFIG_KEYS as DECIDE

    assert set(USER_CONFIG_KEYS["Collector"]) == set(DECIDE)


@pytest.mark.parametrize(
    ("user_config", "refused"),
    [
        ({"epsilon": "0.2"}, None),  # as the setting reads it: both take it
        ({"gamma": 50.0, "policy": "squarecb"}, None),
        ({"temperature": float("inf")}, "temperature"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"model_b_path": 5}, "model_b_path"),
    ],
)
def test_the_check_and_reconfigure_answer_a_value_alike(user_config, refused):
    """A value the pre-deploy check passes must not make reconfigure raise: Serve stops a
    replica whose reconfigure raises, so a config the check approved took every decision
    replica down."""
    from ray_app.config import load_settings
    from ray_app.decide.user_config import decide_user_config

    config = {"applications": [{"name": "onramp", "import_path": "deployments.app:build_app",
              "deployments": [{"name": "Collector", "user_config": user_config}]}]}  # fmt: skip
    problems = [p for p in serve_config_problems(config) if "user_config" in p]
    if refused is None:
        assert problems == []
        decide_user_config(load_settings(env={}), user_config)
    else:
        assert len(problems) == 1 and f"user_config.{refused}" in problems[0], problems
        with pytest.raises(ValueError, match=f"user_config.{refused}"):
            decide_user_config(load_settings(env={}), user_config)


def test_args_settings_sit_between_the_file_and_the_environment(tmp_path, monkeypatch):
    f = tmp_path / "onramp.yaml"
    f.write_text("kafka:\n  partitions: 3\n  topic_prefix: fromfile\n")
    monkeypatch.setenv("ONRAMP_KAFKA__PARTITIONS", "6")
    s = _settings_from(str(f), {"kafka": {"topic_prefix": "fromargs"}, "stream": {"workers": 3}})
    assert (s.kafka.partitions, s.kafka.topic_prefix, s.stream.workers) == (6, "fromargs", 3)
    with pytest.raises(ConfigError, match=r"args.settings: stream.wrkers: unknown setting"):
        _settings_from(None, {"stream": {"wrkers": 3}})


def test_scaling_set_in_the_serve_config_is_refused_as_a_silent_override(config):
    """Serve lets a config's autoscaling_config and ray_actor_options override the builder's:
    the settings would be ignored without a word, so the check names both."""
    bad = copy.deepcopy(config)
    collector = bad["applications"][0]["deployments"][0]
    collector["autoscaling_config"] = {"min_replicas": 1}
    collector["ray_actor_options"] = {"num_cpus": 0.25}
    ServeDeploySchema.model_validate(bad)  # Serve: no complaint
    problems = serve_config_problems(bad)
    for key in ("autoscaling_config", "ray_actor_options"):
        assert any(
            p.startswith(f"applications[0].deployments[0].{key}: set by Onramp's settings")
            for p in problems
        ), problems


def test_the_settings_scale_onramp_up_and_serve_deploy_alike():
    from ray_app.config import load_settings

    s = load_settings(env={"ONRAMP_DECIDE__MAX_REPLICAS": "5", "ONRAMP_DECIDE__REPLICA_CPUS": "1"})
    options = ingress_options(s)
    assert options["autoscaling_config"]["max_replicas"] == 5
    assert options["ray_actor_options"] == {"num_cpus": 1.0}


def test_a_user_config_is_the_settings_with_it_over_them_each_time():
    """A key removed from user_config is its setting again, as on a replica started later (it
    kept the last value on running replicas, so old and new replicas explored differently);
    an empty model path is the settings' default, not the working directory."""
    from ray_app.config import load_settings
    from ray_app.decide.user_config import decide_user_config

    settings = load_settings(env={})
    first = decide_user_config(settings, {"policy": "epsilon_greedy", "model_path": "/m/a.onramp"})
    assert first.policy.kind == "epsilon_greedy" and str(first.paths["treatment"]) == "/m/a.onramp"
    again = decide_user_config(settings, {})
    assert again.policy.kind == settings.decide.policy == "squarecb"
    assert again.paths == {"treatment": settings.model_path, "treatment_b": None}
    assert (
        decide_user_config(settings, {"model_path": ""}).paths["treatment"] == settings.model_path
    )


def test_the_shipped_serve_config_explores_with_the_default_policy(config):
    """serve_config.yaml pinned epsilon_greedy after squarecb became the default: serve deploy
    ran another policy than onramp up, and left the learner's published gamma unused."""
    from ray_app.config import load_settings

    [collector] = [d for d in config["applications"][0]["deployments"] if d["name"] == "Collector"]
    assert collector["user_config"]["policy"] == load_settings(env={}).decide.policy


def test_the_check_refuses_duplicate_keys_and_names_an_unreadable_file(tmp_path, capsys):
    """A Serve config with two ``collector:`` maps passed as ok, the first silently gone; a
    missing file was a traceback."""
    from deployments.check import main as check_main

    dup = tmp_path / "serve.yaml"
    dup.write_text(
        "applications:\n- name: onramp\n  import_path: deployments.app:build_app\n"
        "  args:\n    settings:\n      collector: {port: 1}\n      collector: {port: 2}\n"
    )
    assert check_main([str(dup), str(tmp_path / "missing.yaml")]) == 1
    out = capsys.readouterr().out
    assert "duplicate key 'collector'" in out and "line 7" in out
    assert "missing.yaml: 1 problem(s)" in out and "cannot read it" in out
    latin = tmp_path / "latin.yaml"  # a Latin-1 comment: a UnicodeDecodeError traceback before
    latin.write_bytes(b"# caf\xe9\napplications: []\n")
    assert check_main([str(latin)]) == 1
    out = capsys.readouterr().out
    assert "latin.yaml: 1 problem(s)" in out and "not UTF-8 text" in out
