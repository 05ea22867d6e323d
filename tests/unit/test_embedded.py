"""An embedded run cleans up what no run can use, keeps and names what it carries over, and
starts clean on request (:mod:`ray_app.embedded`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_app.embedded import prepare, run_name


def _layout(d: Path, live_pid: int) -> dict[str, Path]:
    paths = {
        "legacy": d / "checkpoints" / "embedded-1700000000",  # before names carried a pid
        "dead": d / "checkpoints" / "embedded-1700000001-999999999",
        "live": d / "checkpoints" / f"embedded-1700000002-{live_pid}",
        "learner_dead": d / "learner" / "embedded-1700000001-999999999",
        "learner_live": d / "learner" / f"embedded-1700000002-{live_pid}",
        "other": d / "checkpoints" / "prod",  # not an embedded run's: never touched
    }
    for name, p in paths.items():
        if name.startswith("learner"):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"state")
        else:
            (p / "part-0").mkdir(parents=True)
    return paths


def test_earlier_runs_go_a_live_run_and_other_folders_stay(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        paths = _layout(tmp_path, live.pid)
        notes = prepare(tmp_path, tmp_path / "models" / "treatment.onramp", fresh=False)
    finally:
        live.kill()
    left = {name for name, p in paths.items() if p.exists()}
    assert left == {"live", "learner_live", "other"}
    assert notes == [
        "removed 3 earlier embedded runs (checkpoints, learner state): their broker is gone"
    ]


def test_the_served_model_is_kept_and_named_unless_fresh(tmp_path: Path) -> None:
    model = tmp_path / "models" / "treatment.onramp"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    (tmp_path / "registry").mkdir()
    notes = prepare(tmp_path, model, fresh=False)
    assert model.exists()
    assert any(n.startswith(f"kept: the served model {model}") and "--fresh" in n for n in notes)
    assert f"kept: the model registry {tmp_path / 'registry'}" in notes
    notes = prepare(tmp_path, model, fresh=True)
    assert not model.exists()
    assert notes[0] == f"fresh start: removed the served model {model}; cold-start policy"
    assert (tmp_path / "registry").exists()  # trained versions are the user's: kept


def test_fresh_never_removes_a_model_outside_the_state_folder(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "model.onramp"
    outside.parent.mkdir()
    outside.write_bytes(b"weights")
    state = tmp_path / "state"
    state.mkdir()
    notes = prepare(state, outside, fresh=True)
    assert outside.exists() and "kept: the served model" in notes[0]


def test_a_run_name_carries_this_process_id() -> None:
    import os

    assert run_name().endswith(f"-{os.getpid()}")


def test_a_model_file_of_another_feature_schema_is_named_not_served(tmp_path):
    # after an upgrade that changes the features, the banner must not say the learner starts
    # from the old model file: the learner and the replicas refuse it (another schema hash)
    from ray_app.catalog import load_catalog
    from ray_app.config import load_settings
    from ray_app.features import FEATURE_VERSION, FeatureSchema
    from ray_app.model.bundle import cold_start_bundle
    from ray_app.up import Stack

    catalog = load_catalog()
    stack = Stack(load_settings(env={"ONRAMP_STATE_DIR": str(tmp_path)}), lambda _: None)
    model = tmp_path / "models" / "treatment.onramp"
    model.parent.mkdir()
    model.write_bytes(cold_start_bundle(FeatureSchema.from_catalog(catalog), catalog).to_bytes())
    assert stack._refusal(model) is None
    assert "the learner starts from it" in prepare(tmp_path, model, False, stack._refusal)[0]

    older = FeatureSchema(FeatureSchema.from_catalog(catalog).steps, version=FEATURE_VERSION - 1)
    model.write_bytes(cold_start_bundle(older, catalog).to_bytes())
    note = prepare(tmp_path, model, False, stack._refusal)[0]
    assert note.startswith("kept, not served") and "schema_hash" in note, note
    assert "cold-start policy" in note and model.exists()
    model.write_bytes(b"garbage")
    assert "kept, not served" in prepare(tmp_path, model, False, stack._refusal)[0]


def test_stop_own_haproxy_stops_only_the_haproxy_of_this_process_config(tmp_path, monkeypatch):
    """Serve's HAProxy outlives Ray's processes when they are killed from outside; the one
    running with this process's config folder is stopped, another Onramp's is not."""
    from ray_app.up import stop_own_haproxy

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(ours / "haproxy.cfg"))
    nap = "import time; time.sleep(60)"
    procs = [  # a Python under HAProxy's name, with a config path as Serve starts it
        subprocess.Popen(
            ["haproxy", "-c", nap, "-f", f"{d}/abc/haproxy.cfg"], executable=sys.executable
        )
        for d in (ours, theirs)
    ]
    try:
        assert stop_own_haproxy() == 1
        assert procs[0].wait(timeout=10) == -15  # SIGTERM
        assert procs[1].poll() is None
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_serve_is_asked_again_when_its_proxy_dies_while_starting(caplog):
    """Serve's controller kills a proxy that is late to start and starts another; serve.start,
    waiting on the first, raises ActorDiedError. Onramp asks again (joining the running
    controller), says so, and waits until Serve reports the replacement healthy; a proxy whose
    constructor failed, a replacement that never becomes healthy, or three failed tries end in
    one OnrampError that names the cause."""
    import pytest
    from ray.exceptions import ActorDiedError, RayActorError

    from ray_app.errors import OnrampError
    from ray_app.up import start_serve

    calls: list[dict[str, object]] = []
    states = iter(["STARTING", "STARTING", "HEALTHY"])

    class Status:  # serve.status(): the replacement starts, then is healthy
        def __init__(self) -> None:  # (another node's proxy, without replicas, is drained)
            self.proxies = {"node-1": next(states), "node-2": "DRAINED"}

    def dies_once(http_options: dict[str, object]) -> None:
        calls.append(http_options)
        if len(calls) == 1:
            raise ActorDiedError()

    with caplog.at_level("WARNING", logger="ray_app.up"):
        start_serve({"host": "127.0.0.1", "port": 8000}, dies_once, status=Status)
    assert calls == [{"host": "127.0.0.1", "port": 8000}] * 2
    assert next(states, "all read") == "all read"  # it waited for HEALTHY
    assert "ActorDiedError: The actor died unexpectedly" in caplog.text
    assert "asking again (2 of 3)" in caplog.text

    class NeverHealthy:
        def __init__(self) -> None:
            self.proxies = {"node-1": "UNHEALTHY"}

    calls.clear()
    with pytest.raises(OnrampError, match="not healthy 0 s after it was restarted"):
        start_serve({"port": 8000}, dies_once, status=NeverHealthy, healthy_timeout_s=0.0)

    def always_dies(http_options: dict[str, object]) -> None:
        calls.append(http_options)
        raise ActorDiedError()

    calls.clear()
    with pytest.raises(OnrampError, match=r"Serve did not start \(3 tries; last: ActorDied"):
        start_serve({"port": 8000}, always_dies, status=NeverHealthy)
    assert len(calls) == 3

    def constructor_fails(http_options: dict[str, object]) -> None:
        calls.append(http_options)
        raise RayActorError(error_msg="RuntimeError: boom", actor_init_failed=True)

    calls.clear()
    with pytest.raises(OnrampError, match=r"proxy failed to start .*RuntimeError: boom"):
        start_serve({"port": 8000}, constructor_fails, status=NeverHealthy)
    assert len(calls) == 1  # not retried: it would fail the same way

    def refused(http_options: dict[str, object]) -> None:  # not a proxy's death: not retried
        calls.append(http_options)
        raise ValueError("bad http_options")

    calls.clear()
    with pytest.raises(ValueError, match="bad http_options"):
        start_serve({"port": 8000}, refused, status=NeverHealthy)
    assert len(calls) == 1


def test_joined_through_ray_client_the_collector_is_looked_for_on_the_head_node(tmp_path):
    """With ``ray.address=ray://head:10001`` Serve's proxies run on the cluster, not here: the
    health check and the printed URLs name the head node (they named this machine, so
    `onramp up` waited 60 s and gave up, then shut Serve down on the whole cluster)."""
    from ray_app.config import load_settings
    from ray_app.up import Stack

    env = {"ONRAMP_STATE_DIR": str(tmp_path), "ONRAMP_COLLECTOR__HOST": "0.0.0.0"}
    local = Stack(load_settings(env=env), lambda _: None)
    assert local.base_url.startswith("http://127.0.0.1:")
    joined = Stack(
        load_settings(env={**env, "ONRAMP_RAY__ADDRESS": "ray://head-node:10001"}), lambda _: None
    )
    assert joined.base_url.startswith("http://head-node:")
    assert joined.urls()["health"].startswith("http://head-node:")


def test_a_stack_that_joined_a_cluster_through_ray_address_treats_it_as_joined(
    tmp_path, monkeypatch
):
    """``ray job submit -- onramp up`` sets Ray's ``RAY_ADDRESS``: the stack joins that cluster,
    which is not its own (it was, as ``ray.address`` was empty: stopping it shut Serve down on
    the whole cluster, every application with it, and ``ray.num_cpus`` made ``ray.init``
    raise)."""
    import ray

    from ray_app.config import load_settings
    from ray_app.up import Stack

    calls: list[dict] = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    env = {
        "ONRAMP_STATE_DIR": str(tmp_path),
        "ONRAMP_RAY__NUM_CPUS": "2",
        "ONRAMP_COLLECTOR__HOST": "0.0.0.0",
    }
    monkeypatch.setenv("RAY_ADDRESS", "ray://head-node:10001")
    joined = Stack(load_settings(env=env), lambda _: None)
    joined._init_ray()
    assert calls[-1]["address"] is None and calls[-1]["num_cpus"] is None
    assert not joined._own_cluster
    assert joined.base_url.startswith("http://head-node:")
    monkeypatch.delenv("RAY_ADDRESS")
    local = Stack(load_settings(env={**env, "ONRAMP_RAY__ADDRESS": ""}), lambda _: None)
    local._init_ray()  # an empty ray.address is a local Ray, as documented
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == 2 and local._own_cluster


@pytest.mark.parametrize(
    ("host", "url"),
    [("::1", "http://[::1]:"), ("::", "http://[::1]:"), ("127.0.0.1", "http://127.0.0.1:")],
)
def test_an_ipv6_collector_host_is_bracketed_in_its_urls(tmp_path, host, url):
    from ray_app.config import load_settings
    from ray_app.up import Stack

    env = {"ONRAMP_STATE_DIR": str(tmp_path), "ONRAMP_COLLECTOR__HOST": host}
    stack = Stack(load_settings(env=env), lambda _: None)
    assert stack.base_url.startswith(url) and stack.urls()["health"].startswith(url)


def test_a_stack_on_a_joined_cluster_never_replaces_nor_deletes_an_onramp_it_found(
    tmp_path, monkeypatch
):
    """``ray.address`` at a cluster that already runs ``serve deploy``'s Onramp: the stack
    refuses to start (serve.run would have replaced it), and a stack that failed before it
    deployed anything does not delete it on the way out (it did: a failed ``onramp up`` took
    the production collector down)."""
    from types import SimpleNamespace

    import ray
    from ray import serve

    from ray_app.config import load_settings
    from ray_app.errors import OnrampError
    from ray_app.up import APP_NAME, Stack

    env = {"ONRAMP_STATE_DIR": str(tmp_path), "ONRAMP_RAY__ADDRESS": "ray://head-node:10001"}
    stack = Stack(load_settings(env=env), lambda _: None)
    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(applications={APP_NAME: object()}))
    with pytest.raises(OnrampError, match="already runs a Serve application 'onramp'"):
        stack._refuse_a_running_onramp()
    deleted: list[str] = []
    monkeypatch.setattr(serve, "delete", deleted.append)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    stack.stop()
    assert deleted == []
    stack._deployed = True  # one it deployed itself is deleted
    stack.stop()
    assert deleted == [APP_NAME]


def test_a_state_directory_holds_one_embedded_run_at_a_time(tmp_path):
    """Two runs in one state directory published to one served model file (each run's replicas
    served the other's, learned from another broker's traffic), and a second --fresh removed
    the model the first one served. A run's folder is refused while its run is going, and
    taken once it is over (a crashed run leaves no stale lock)."""
    import subprocess
    import sys

    from ray_app.config import load_settings
    from ray_app.embedded import LOCK_NAME, claim, release
    from ray_app.errors import OnrampError
    from ray_app.up import Stack

    hold = (
        "import sys, time; from pathlib import Path; from ray_app.embedded import claim; "
        "claim(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        with pytest.raises(OnrampError, match=f"another Onramp run \\(pid {other.pid}\\)"):
            claim(tmp_path)
        stack = Stack(load_settings(env={"ONRAMP_STATE_DIR": str(tmp_path)}), lambda _: None)
        with pytest.raises(OnrampError, match="uses the state directory"):
            stack.start()  # refused before any broker starts
        assert stack.broker is None
        stack.stop()
        assert (tmp_path / LOCK_NAME).read_text() == str(other.pid), "not ours to release"
    finally:
        other.kill()  # a crash: no release
        other.wait()
    claim(tmp_path)  # its run is over: taken
    assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
    release(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()


def _claim_after(barrier, state_dir, results) -> None:
    from ray_app.embedded import claim
    from ray_app.errors import OnrampError

    barrier.wait()
    try:
        claim(state_dir)
        results.put("took")
        barrier.wait()  # hold it while the other one tries
    except OnrampError:
        results.put("refused")
        barrier.wait()


def test_two_runs_starting_at_once_do_not_both_take_a_state_directory(tmp_path):
    """The claim was read, then write: two runs started together both took it (2 in 15)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for trial in range(8):
        state_dir = tmp_path / str(trial)
        state_dir.mkdir()
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_claim_after, args=(barrier, state_dir, results)) for _ in "ab"]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert sorted(results.get(timeout=5) for _ in procs) == ["refused", "took"], trial
