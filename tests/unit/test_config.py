from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ray_app.cli import main
from ray_app.config import Settings, described, load_settings
from ray_app.config.base import DEMO_KEYS
from ray_app.errors import ConfigError


def test_defaults_are_embedded():
    s = load_settings(env={})
    assert s.kafka.bootstrap_servers is None and s.ray.address is None
    assert s.kafka.client == "confluent" and s.collector.max_request_bytes == 500 * 1024


def test_yaml_then_env_precedence(tmp_path):
    f = tmp_path / "onramp.yaml"
    f.write_text("kafka:\n  partitions: 3\n  bootstrap_servers: a:9092\ncollector:\n  port: 9000\n")
    s = load_settings(f, env={"ONRAMP_KAFKA__PARTITIONS": "5"})
    assert (s.kafka.partitions, s.kafka.bootstrap_servers, s.collector.port) == (5, "a:9092", 9000)
    s = load_settings(env={"ONRAMP_CONFIG": str(f)})
    assert s.kafka.partitions == 3


def test_unknown_keys_are_named(tmp_path):
    f = tmp_path / "onramp.yaml"
    f.write_text("kafka:\n  partiton: 3\nbogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(f, env={})
    assert "kafka.partiton: unknown setting" in str(info.value)
    assert "bogus: unknown setting" in str(info.value)
    with pytest.raises(ConfigError, match=r"collector\.prot: unknown setting"):
        load_settings(env={"ONRAMP_COLLECTOR__PROT": "1"})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("kafka: [1, 2]", "kafka: Input should be"),
        ("- a\n- b\n", "mapping at the top"),
        ("a: [", "not YAML"),
        # the first kafka block used to vanish without a word
        (
            "kafka:\n  partitions: 4\nkafka:\n  client: confluent\n",
            "line 3, column 1: duplicate key 'kafka'",
        ),
        ("a: " + "[" * 5000, "not YAML: nested too deeply"),  # a RecursionError before
    ],
)
def test_bad_files_are_explained(tmp_path, text, needle):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings(f, env={})


def test_missing_file_is_explained():
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings("/nonexistent/onramp.yaml", env={})


def test_bad_values_name_the_field():
    with pytest.raises(
        ConfigError, match=r"kafka.client: Input should be 'kafka-python' or 'confluent'"
    ):
        load_settings(env={"ONRAMP_KAFKA__CLIENT": "librdkafka"})
    with pytest.raises(ConfigError, match=r"collector\.port"):
        load_settings(env={"ONRAMP_COLLECTOR__PORT": "70000"})


def test_frozen():
    s = load_settings(env={})
    with pytest.raises(ValidationError):
        s.kafka.partitions = 3  # type: ignore[misc]


def test_every_field_is_described():
    for key, text in described(Settings):
        assert text, f"{key} has no description"


def test_config_show_masks_secrets(capsys, monkeypatch):
    monkeypatch.setenv("ONRAMP_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("ONRAMP_COLLECTOR__WRITE_KEYS", '{"web": "s3cret-key"}')
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "s3cret-key" not in out
    shown = yaml.safe_load(out)
    assert shown["kafka"]["sasl_password"] == "**********"
    assert shown["collector"]["write_keys"] == {"web": "**********"}


def test_cli_reports_config_errors_with_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("ONRAMP_KAFKA__PARTITIONS", "many")
    assert main(["config", "show"]) == 2
    assert "kafka.partitions" in capsys.readouterr().err


def test_cli_schema_is_json_schema(capsys):
    import json

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "TrackCall" in schema["$defs"]
    assert main(["schema", "--reasons"]) == 0
    out = capsys.readouterr().out
    assert "invalid_timestamp" in out and "413" in out


def test_a_settings_file_that_is_not_utf8_is_explained(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_bytes(b"\xff\xfe kafka: {}")
    with pytest.raises(ConfigError, match="is not UTF-8 text: invalid start byte at byte 0"):
        load_settings(f, env={})


def test_environment_values_as_yaml_are_explained_and_text_settings_are_taken_as_written():
    """A list or map setting's value is YAML/JSON text: garbage is a configuration error naming
    the variable, without repeating the value (a traceback that printed it before). A text
    setting (a key) is taken as written even when it starts with a bracket."""
    with pytest.raises(
        ConfigError, match=r"ONRAMP_DECIDE__ARMS: not YAML/JSON: line 1, column 7"
    ) as info:
        load_settings(env={"ONRAMP_DECIDE__ARMS": "{a: [1"})
    assert "{a: [1" not in str(info.value)
    key = "{my-secret-key-1234567890abcdef"
    s = load_settings(env={"ONRAMP_STREAM__CHECKPOINT_KEY": key})
    assert s.stream.checkpoint_key is not None
    assert s.stream.checkpoint_key.get_secret_value() == key
    listed = "[not-a-list-but-a-key-0123456789]"
    assert (
        load_settings(
            env={"ONRAMP_STREAM__CHECKPOINT_KEY": listed}
        ).stream.checkpoint_key.get_secret_value()
        == listed
    )  # type: ignore[union-attr]
    assert load_settings(env={"ONRAMP_DECIDE__ARMS": "{control: 1}"}).decide.arms == {"control": 1}
    one = load_settings(env={"ONRAMP_COLLECTOR__WRITE_KEYS__WEB": "[web-key-0123456789abcdef]"})
    assert one.collector.write_keys["web"].get_secret_value() == "[web-key-0123456789abcdef]"


def test_a_settings_file_may_use_yaml_merge_keys(tmp_path):
    """``<<: *anchor`` merges as yaml.safe_load merges it (the duplicate-key check skips it)."""
    f = tmp_path / "s.yaml"
    f.write_text(
        "collector:\n"
        "  write_keys: &keys {web: web-key-0123456789abcdefghij}\n"
        "  read_keys:\n    <<: *keys\n    ops: ops-key-0123456789abcdefghij\n"
    )
    s = load_settings(f, env={})
    assert sorted(s.collector.read_keys) == ["ops", "web"]


def test_an_empty_path_is_its_default_or_refused_never_the_current_directory():
    """``Path("")`` is ``.``: an empty ONRAMP_DECIDE__MODEL_PATH served and published the
    model at the working directory, an empty ONRAMP_STATE_DIR wrote state there."""
    s = load_settings(env={"ONRAMP_DECIDE__MODEL_PATH": "", "ONRAMP_ENRICH__CRM_PATH": " "})
    assert s.decide.model_path is None and s.enrich.crm_path is None
    assert s.model_path == Path(".onramp") / "models" / "treatment.onramp"
    with pytest.raises(ConfigError, match=r"state_dir: .*an empty path"):
        load_settings(env={"ONRAMP_STATE_DIR": ""})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        # accepted, then "cannot convert float infinity to integer" in every stream worker
        ("stream: {profile_idle_ttl_s: .inf}", "stream.profile_idle_ttl_s"),
        ("stream: {attribution_window_s: .nan}", "stream.attribution_window_s"),
        ("decide: {replica_cpus: .inf}", "decide.replica_cpus"),
        # Ray refused these only when it created the actor
        ("stream: {worker_resources: {stream: -1}}", "stream.worker_resources.stream"),
        ("stream: {worker_resources: {CPU: 1}}", "stream.worker_resources.CPU"),
        ("decide: {replica_resources: {decide: .nan}}", "decide.replica_resources"),
        # max_replicas was raised to min_replicas silently
        ("decide: {min_replicas: 6, max_replicas: 2}", "decide.min_replicas (6)"),
        # the experiment refused these when a replica started (and `onramp report` crashed)
        ("decide: {arms: {control: 0, treatment: 0}}", "sum to more than 0"),
        ("decide: {arms: {control: -1, treatment: 2}}", "decide.arms.control"),
        ("decide: {arms: {treatment: 1}}", "must name control"),
        # accepted, and a 2 MB event was then refused by the producer on every retry (503)
        ("collector: {max_event_bytes: 4000000}", "collector.max_event_bytes"),
    ],
)
def test_settings_that_fail_later_are_refused_when_read(tmp_path, text, needle):
    path = tmp_path / "onramp.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("collector", "needle"),
    [
        ({"identity_secret": DEMO_KEYS["decide"]}, "is a shipped demo key"),
        (
            {"decide_keys": {"web": "web-decide-key-0123456789"},
             "identity_secret": "web-decide-key-0123456789"},
            "is also collector.decide_keys.web",
        ),
        (
            {"write_keys": {"site": "site-write-key-0123456789"},
             "identity_secret": "site-write-key-0123456789"},
            "is also collector.write_keys.site",
        ),
    ],
)  # fmt: skip
def test_the_identity_secret_is_no_key_that_browsers_hold(tmp_path, collector, needle):
    """With the identity secret equal to a decide or write key, which ship in every browser,
    anyone could compute any user's userHash: nothing refused it."""
    path = tmp_path / "onramp.yaml"
    path.write_text(yaml.safe_dump({"collector": collector}))
    with pytest.raises(ConfigError, match="identity_secret") as err:
        load_settings(path, env={})
    assert needle in str(err.value)
