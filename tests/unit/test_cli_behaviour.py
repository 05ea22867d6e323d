"""How every ``onramp`` command behaves at the shell (issue 19, "CLI"): the common options in
every position, the same exit statuses for every command, Ctrl-C, progress, where outputs went,
strict JSON, and ``report``/``audit`` reading what ``archive`` writes."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from deployments.onramp import main
from ray_app.cli.output import Progress, dumps
from ray_app.config import Settings, load_settings
from ray_app.kafka.archive import archive_topics
from ray_app.kafka.client import OutRecord
from ray_app.kafka.memory import InMemoryBroker, InMemoryConsumer, InMemoryProducer
from tests.unit.test_audit import decisions as audit_decisions
from tests.unit.test_experiment_report import _logs

ROOT = Path(__file__).resolve().parents[2]
TOPICS = Settings().topics


def _strict(text: str) -> Any:
    """JSON as a strict parser reads it: NaN, Infinity are errors."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(autouse=True)
def _root_logger():
    """The commands set the root logger's level: put it back."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    f = tmp_path / "prod.yaml"
    f.write_text("kafka:\n  partitions: 7\n")
    return f


# -- 1. the common options, before or after the command ------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{f}", "config", "show"],
        ["config", "--config", "{f}", "show"],
        ["config", "show", "--config", "{f}"],
        ["--config=/nowhere.yaml", "config", "show", "--config", "{f}"],  # the last one wins
    ],
)
def test_config_is_honoured_before_or_after_the_command(argv, settings_file, capsys) -> None:
    assert main([a.replace("{f}", str(settings_file)) for a in argv]) == 0
    assert "partitions: 7" in capsys.readouterr().out


def test_a_missing_settings_file_is_exit_2_naming_it_in_every_position(tmp_path, capsys) -> None:
    missing = str(tmp_path / "missing.yaml")
    for argv in (
        ["--config", missing, "config", "show"],
        ["config", "show", "--config", missing],
        ["--config", missing, "report", "--table", "t.csv"],
        ["--config", missing, "train", "--data", str(tmp_path)],
        ["train", "--data", str(tmp_path), "--config", missing],
        ["--config", missing, "evaluate", "--logs", "x.jsonl"],
        ["evaluate", "--logs", "x.jsonl", "--config", missing],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "configuration error" in err and "missing.yaml" in err, argv
    # --config "$CFG" with CFG unset used to run on the defaults (or on $ONRAMP_CONFIG's file)
    assert main(["--config", "", "config", "show"]) == 2
    assert "--config: an empty path" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["--log-level", "DEBUG", "config", "describe"], logging.DEBUG),
        (["config", "describe", "--log-level", "ERROR"], logging.ERROR),
        (["--verbose", "config", "describe"], logging.INFO),
        (["config", "describe", "-v"], logging.INFO),
        (["-v", "--log-level", "ERROR", "schema"], logging.ERROR),
    ],
)
def test_log_level_and_verbose_are_honoured_in_every_position(argv, level, capsys) -> None:
    logging.getLogger().setLevel(logging.CRITICAL)
    assert main(argv) == 0
    assert logging.getLogger().level == level


def test_train_and_evaluate_take_the_common_options(tmp_path, capsys) -> None:
    """They parse their own options: the common ones are among them, and those given before the
    command reach them (today: 'unrecognized arguments', or ignored)."""
    logging.getLogger().setLevel(logging.CRITICAL)
    assert main(["-v", "evaluate", "--logs", str(tmp_path / "nope.jsonl")]) == 1
    assert "nope.jsonl: cannot read" in capsys.readouterr().err
    assert logging.getLogger().level == logging.INFO
    assert main(["--log-level", "DEBUG", "train", "--data", str(tmp_path / "nope")]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    assert logging.getLogger().level == logging.DEBUG
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE" in out and "--verbose" in out and "exit status" in out


# -- 2. one set of exit statuses; Ctrl-C -----------------------------------------------------------


def test_help_documents_the_exit_statuses(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit status" in out
    for line in ("0    ok", "1    runtime error", "2    usage or configuration", "3    drift",
                 "130  interrupted"):  # fmt: skip
        assert line in out


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "show"],
        ["report", "--table", "t.csv"],
        ["audit", "--reference", "a", "--recent", "b"],
        ["models", "list"],
        ["train", "--data", "nope"],
        ["evaluate", "--logs", "x.jsonl"],
    ],
)
def test_invalid_settings_are_exit_2_for_every_command(argv, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ONRAMP_KAFKA__PARTITIONS", "lots")
    assert main(argv) == 2
    assert "kafka.partitions" in capsys.readouterr().err


def test_runtime_errors_are_1_and_usage_errors_2_for_train_and_evaluate(tmp_path, capsys) -> None:
    # a missing input is a runtime error, as for every command (train said 2 for any error)
    assert main(["train", "--data", str(tmp_path / "nope")]) == 1
    assert main(["evaluate", "--logs", str(tmp_path / "nope.jsonl")]) == 1
    assert main(["report", "--decisions", str(tmp_path / "n"), "--rewards", "n"]) == 1
    # options out of range are usage errors
    assert main(["train", "--data", str(tmp_path), "--workers", "0"]) == 2
    with pytest.raises(SystemExit) as usage:  # refused by argparse, as every command's options
        main(["evaluate", "--logs", "x", "--n-bootstrap", "0"])
    assert usage.value.code == 2
    assert main(["report", "--table", "t.csv", "--level", "2"]) == 2
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--logs", "x", "--epochs", "5"], "--epochs applies to --obd-policy only"),
        (["evaluate", "--logs", "x", "--temperature", "0.5"], "--temperature applies to"),
        (["evaluate", "--logs", "x", "--campaign", "men"], "--campaign applies to --obd and"),
        (["evaluate", "--obd", "--model", "m.bin"], "--model applies to --logs only"),
        (["evaluate", "--obd-policy", "--censor-s", "0"], "--censor-s applies to --logs only"),
        (["evaluate", "--obd", "--epochs", "2"], "--epochs applies to --obd-policy only"),
        (["evaluate", "--obd-policy", "--temperature", "-1"], "expected a finite number > 0"),
        (["train", "--data", "x", "--campaign", "men"], "--campaign applies to --obd only"),
        (["train", "--data", "x", "--n-bootstrap", "50"], "--n-bootstrap applies to --obd only"),
        (["train", "--obd", "--note", "x"], "--note applies to --data only"),
    ],
)
def test_an_option_of_another_mode_is_a_usage_error(argv, message, capsys) -> None:
    """Options that did nothing in the mode given (`evaluate --logs --epochs 5`, `train --data
    --campaign men`, `--temperature -1`) were accepted in silence."""
    with pytest.raises(SystemExit) as usage:
        main(argv)
    assert usage.value.code == 2
    assert message in capsys.readouterr().err


def _interrupt(*_: Any, **__: Any) -> Any:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("argv", "target"),
    [
        (["config", "show"], "ray_app.cli.config.yaml.safe_dump"),
        (["report", "--table", "t.csv"], "ray_app.experiments.report.read_user_table"),
        (["train", "--data", "x"], "training.train.train"),
        (["evaluate", "--logs", "x"], "training.evaluate.read_jsonl"),
    ],
)
def test_ctrl_c_is_one_line_and_exit_130(argv, target, monkeypatch, capsys) -> None:
    monkeypatch.setattr(target, _interrupt)
    try:
        rc = main(argv)
    except KeyboardInterrupt:  # today's code: a traceback
        rc = None
    assert rc == 130
    err = capsys.readouterr().err
    assert err.strip().endswith("interrupted") and "Traceback" not in err


@pytest.mark.slow  # a Python process of its own
@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_in_a_real_process_leaves_no_traceback(tmp_path, attempt) -> None:
    """SIGINT while `onramp evaluate` reads its input (a FIFO whose writer never writes).

    The process is stopped as soon as it has opened the FIFO, given SIGINT, then continued: the
    signal is handled wherever it stopped, often after the open and before the blocking read.
    A plain blocking read missed such a signal for good (1 run in 12 hung this way, and the
    suite saw it hang under load); `ray_app.storage.read_stream` does not."""
    fifo = tmp_path / "logs.jsonl"
    os.mkfifo(fifo)
    # The command starts as from a terminal, with SIGINT at its default. A process inherits an
    # ignored SIGINT, and a shell's background job has it ignored (`make test &` from a script,
    # then the pytest-xdist worker); Python then installs no handler and the command rightly
    # never sees a Ctrl-C. A handler of our own here is reset to the default by exec.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.onramp", "evaluate", "--logs", str(fifo)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:  # None: a handler set outside Python, which cannot be put back from here
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    opened = threading.Event()
    holder: list[int] = []

    def writer() -> None:  # returns once the command has opened the FIFO to read it
        holder.append(os.open(fifo, os.O_WRONLY))
        opened.set()

    threading.Thread(target=writer, daemon=True).start()
    try:
        assert opened.wait(60), "the command never opened its input"
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # a writer still waiting: released
        for fd in holder:
            os.close(fd)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().endswith("onramp evaluate: interrupted")


def _archive_env(monkeypatch, broker: InMemoryBroker, consumer: Any = None) -> None:
    import ray_app.kafka.client as client
    import ray_app.kafka.topics as topics

    monkeypatch.setenv("ONRAMP_KAFKA__BOOTSTRAP_SERVERS", "memory:9092")
    monkeypatch.setenv("ONRAMP_KAFKA__PARTITIONS", "2")
    monkeypatch.setattr(client, "make_consumer", lambda *_: consumer or InMemoryConsumer(broker))
    monkeypatch.setattr(topics, "verify_topics", lambda *_: None)  # no admin API in memory


def _fill(broker: InMemoryBroker, topic: str, rows: list[dict[str, Any]]) -> None:
    p = InMemoryProducer(broker)
    p.send_all(
        [
            OutRecord(topic, json.dumps(r).encode(), key=str(i % 5).encode())
            for i, r in enumerate(rows)
        ]
    ).result(5)


class _InterruptedConsumer(InMemoryConsumer):
    """Ctrl-C (a real SIGINT to this process) after the first poll that brought records."""

    def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list[Any]:
        out = super().poll(timeout_s, max_records=40)
        if out:
            signal.raise_signal(signal.SIGINT)
        return out


def test_ctrl_c_in_archive_writes_what_it_read(tmp_path, monkeypatch, capsys) -> None:
    broker = InMemoryBroker(partitions=2)
    _fill(broker, TOPICS.rewards, [{"n": i} for i in range(500)])
    _archive_env(monkeypatch, broker, _InterruptedConsumer(broker))
    previous = signal.getsignal(signal.SIGINT)
    out = tmp_path / "archive"
    try:
        rc = main(["archive", "--topics", "rewards", "--out", str(out), "--idle", "5"])
    except KeyboardInterrupt:  # today's code: a traceback and nothing written
        rc = None
    assert signal.getsignal(signal.SIGINT) == previous  # the handler is put back
    assert rc == 130
    captured = capsys.readouterr()
    report = _strict(captured.out)
    assert report["interrupted"] is True and 0 < report["records"][TOPICS.rewards] < 500
    written = sum(1 for f in out.rglob("*.jsonl") for _ in f.open())
    assert written == report["records"][TOPICS.rewards]
    assert "interrupted" in captured.err and f"under {out}" in captured.err


# -- 3. progress, where outputs went, strict JSON ----------------------------------------------


def test_archive_progress_off_a_terminal_is_plain_lines(tmp_path, monkeypatch, capsys) -> None:
    broker = InMemoryBroker(partitions=2)
    _fill(broker, TOPICS.rewards, [{"n": i} for i in range(300)])
    _archive_env(monkeypatch, broker)
    out = tmp_path / "archive"
    assert main(["archive", "--topics", "rewards", "--out", str(out), "--idle", "0.05"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err  # stderr is not a terminal here
    assert "archived: 300 records" in captured.err
    assert f"under {out}" in captured.err
    assert _strict(captured.out)["records"] == {TOPICS.rewards: 300}


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = Progress("training", total=10, stream=stream, every_s=0, tty_every_s=0)
        for _ in range(10):
            p.update(1)
        p.close()
    assert tty.getvalue().count("\r") >= 10 and "[" in tty.getvalue()
    assert "100% 10/10 steps" in tty.getvalue()
    lines = pipe.getvalue().splitlines()
    assert "\r" not in pipe.getvalue() and len(lines) == 11
    assert lines[-1].startswith("training: [########################] 100% 10/10 steps")


def _fake_obd(policy: str = "random", campaign: str = "all", cache_dir: Any = None) -> Any:
    from training.obd import ObdLogs

    rng = np.random.default_rng(0 if policy == "random" else 1)
    n, items, positions = 600, 4, 2
    return ObdLogs(
        policy, campaign, pd.DataFrame({"t": range(n)}), rng.integers(0, items, n),
        rng.integers(0, positions, n), rng.binomial(1, 0.2, n).astype(float),
        np.full(n, 1 / items), np.eye(3)[rng.integers(0, 3, n)], np.eye(items), items, positions,
    )  # fmt: skip


def test_evaluate_obd_reports_each_long_step(tmp_path, monkeypatch, capsys) -> None:
    """`evaluate --obd` says what it is doing, step by step, and gets the reproduction's
    numbers (today: one line for minutes of work)."""
    import training.obd as obd

    monkeypatch.setattr(obd, "load_obd", _fake_obd)
    monkeypatch.setattr(obd, "load_bts_prior", lambda *_: (np.full(4, 2.0), np.full(4, 9.0)))
    want = obd.reproduce_quickstart("all", None, n_sim=2000, n_bootstrap=20, seed=3)
    argv = ["evaluate", "--obd", "--n-sim", "2000", "--n-bootstrap", "20", "--seed", "3",
            "--plot", str(tmp_path / "p.png")]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    for step in ("loading the Random logs", "BTS action distribution (2,000 Monte Carlo",
                 "outcome model", "20 bootstrap resamples"):  # fmt: skip
        assert f"{step}" in captured.err and captured.err.count("done in") == 4
    summary = _strict(captured.out.strip().splitlines()[-1])
    assert summary["estimates"] == json.loads(dumps(want.to_json()))["estimates"]
    assert f"plot: {tmp_path / 'p.png'}" in captured.err


def test_evaluate_and_train_print_strict_json(monkeypatch, capsys) -> None:
    """NaN (an AUC with one class, a CI with no data) is null, never the bare NaN json writes."""
    import training.evaluate as ev
    import training.train as tr

    monkeypatch.setattr(ev, "_run", lambda *_: {"plot": "p.png", "snips": float("nan")})
    assert main(["evaluate", "--logs", "x"]) == 0
    assert _strict(capsys.readouterr().out.splitlines()[-1]) == {"plot": "p.png", "snips": None}
    monkeypatch.setattr(tr, "train", lambda *_: {"metrics": {"val_auc": np.float32("nan")}})
    assert main(["train", "--data", "x"]) == 0
    assert _strict(capsys.readouterr().out) == {"metrics": {"val_auc": None}}


def test_dumps_is_strict() -> None:
    assert _strict(dumps({"a": [float("inf"), np.float64("nan"), np.int64(3)]})) == {
        "a": [None, None, 3]
    }


# -- 4. report and audit read what archive writes ----------------------------------------------


def _archive(root: Path, topic: str, rows: list[dict[str, Any]]) -> None:
    broker = InMemoryBroker(partitions=3)
    _fill(broker, topic, rows)
    archive_topics(InMemoryConsumer(broker), [topic], root, partitions=3, idle_s=0.01)


def _rounded(x: Any) -> Any:
    """``x`` with floats to 9 significant digits (sums in another order differ in the last)."""
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return float(f"{x:.9g}") if isinstance(x, float) else x


def test_report_reads_an_archive_root_or_its_topic_folders(tmp_path, capsys) -> None:
    _, decisions, rewards = _logs()
    root = tmp_path / "archive"
    _archive(root, TOPICS.decisions, decisions)
    _archive(root, TOPICS.rewards, rewards)
    assert len(list((root / TOPICS.decisions).glob("part-*.jsonl"))) == 3  # one per partition
    files = tmp_path / "files"
    files.mkdir()
    (files / "d.jsonl").write_text("\n".join(json.dumps(x) for x in decisions))
    (files / "r.jsonl").write_text("\n".join(json.dumps(x) for x in rewards))
    rewards_uri = f"file://{root / TOPICS.rewards}"
    runs = {
        "files": ["--decisions", str(files / "d.jsonl"), "--rewards", str(files / "r.jsonl")],
        "root": ["--archive", str(root)],
        "folders": ["--decisions", str(root / TOPICS.decisions), "--rewards", rewards_uri],
    }
    summaries = {}
    for name, args in runs.items():
        assert main(["report", *args, "--out", str(tmp_path / name)]) == 0, name
        summary = _strict((tmp_path / name / "summary.json").read_text())["onboarding"]
        summaries[name] = _rounded({k: summary[k] for k in ("users", "arms", "srm")})
    capsys.readouterr()
    assert summaries["root"] == summaries["files"] == summaries["folders"]


def test_audit_reads_archives_and_says_where_it_wrote(tmp_path, capsys) -> None:
    ref, recent = tmp_path / "ref", tmp_path / "recent"
    _archive(ref, TOPICS.decisions, audit_decisions(1, n=600))
    _archive(recent, TOPICS.decisions, audit_decisions(2, n=600, shift=True))
    out = tmp_path / "audit"
    argv = ["audit", "--reference", str(ref), "--recent", str(recent / TOPICS.decisions),
            "--out", str(out), "--fail-on-drift"]  # fmt: skip
    assert main(argv) == 3
    printed = capsys.readouterr().out
    assert "reference: 600 decisions, recent: 600" in printed
    assert str(out / "audit.html") in printed and str(out / "audit.json") in printed
    _strict((out / "audit.json").read_text())
    assert main(["audit", "--reference", str(tmp_path / "empty"), "--recent", str(recent)]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    # an empty archive, or one of another topic, used to pass --fail-on-drift as "nothing
    # drifted": a cron job pointed at the wrong folder always passed
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"type": "track", "event": "Signed Up", "userId": "u1"}))
    for wrong, said in ((empty, "no records"), (events, "1 records, none of a decision")):
        argv = ["audit", "--reference", str(ref), "--recent", str(wrong), "--fail-on-drift",
                "--out", str(out)]  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"--recent {wrong}: {said}" in err and "nothing to compare" in err


def test_up_prints_the_console_with_its_read_key_and_no_console_without_one(capsys) -> None:
    from types import SimpleNamespace

    from ray_app.cli.up import print_urls

    stack = SimpleNamespace(
        http_mode="proxy", notes=[], bootstrap="127.0.0.1:9092", broker=None,
        base_url="http://127.0.0.1:8000", urls=lambda: {"health": "http://127.0.0.1:8000/healthz"},
    )  # fmt: skip
    settings = Settings.model_validate(
        {"collector": {"read_keys": {"ops": "read-key-0123456789abcdef"}}}
    )
    print_urls(stack, settings)
    out = capsys.readouterr().out
    assert "console         : http://127.0.0.1:8000/console/" in out
    assert "read-key-0123456789abcdef" in out
    print_urls(stack, Settings.model_validate({"collector": {"read_keys": {}}}))
    assert "/console/" not in capsys.readouterr().out


def test_up_on_a_reachable_deployment_prints_no_read_key_and_needs_no_write_key(capsys) -> None:
    """The read key reads every user's profile and CRM row: a deployment others can reach
    (its output goes to systemd's or Kubernetes' logs) used to print it on the console line, and
    in the decide example when it had no decide key. No write key used to be a StopIteration
    after minutes of starting; `onramp demo` and `onramp sim`, which send events, refuse it
    before starting."""
    from types import SimpleNamespace

    from ray_app.cli.common import write_key
    from ray_app.cli.up import print_urls
    from ray_app.errors import ConfigError

    secret = "SUPERSECRET-read-key-0123"
    stack = SimpleNamespace(
        http_mode="haproxy", notes=[], bootstrap="kafka-1.prod:9092", broker=None,
        base_url="http://10.0.0.5:8000", urls=lambda: {"health": "http://10.0.0.5:8000/healthz"},
    )  # fmt: skip
    reachable = Settings.model_validate(
        {
            "collector": {"host": "0.0.0.0", "read_keys": {"ops": secret}, "decide_keys": {}},
            "kafka": {"bootstrap_servers": "kafka-1.prod:9092"},
        }
    )
    print_urls(stack, reachable)
    out = capsys.readouterr().out
    assert "/console/  (log in with a key of collector.read_keys)" in out
    assert secret not in out
    no_writes = reachable.model_copy(
        update={"collector": reachable.collector.model_copy(update={"write_keys": {}})}
    )
    print_urls(stack, no_writes)
    assert "write key" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"collector\.write_keys is empty: onramp demo"):
        write_key(no_writes, "onramp demo")


@pytest.mark.parametrize("argv", [["-v", "evaluate", "--obd-policy"], ["evaluate", "--obd-policy"]])
def test_evaluate_obd_policy_passes_verbose_to_its_training_run(argv, monkeypatch) -> None:
    """`evaluate --obd-policy` trains with Ray Train like `train --obd`: --verbose shows Ray's
    lines there too (it was dropped on the way)."""
    import training.train as tr

    seen: list[bool] = []

    def fake_train_obd(opts: Any, settings: Any) -> Any:
        seen.append(opts.verbose)
        raise KeyboardInterrupt  # stop here: the rest is the OBD evaluation's

    monkeypatch.setattr(tr, "train_obd", fake_train_obd)
    assert main(argv) == 130
    assert seen == ["-v" in argv]


def test_archive_of_a_topic_written_on_stops_at_the_ends_it_began_with(tmp_path) -> None:
    """On a live topic a poll is never empty: the archive read on, past the end offsets it had
    taken, until --max-seconds (10 minutes by default), holding every record in memory."""
    from ray_app.kafka.client import Record

    class Live:
        """One partition, its end at 5 when the archive starts, a producer writing on."""

        def __init__(self) -> None:
            self.next = 0

        def assign(self, tps: Any, from_beginning: bool = True) -> None:
            pass

        def highwater(self, topic: str, partition: int) -> int:
            return 5

        def lowwater(self, topic: str, partition: int) -> int:
            return 0

        def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list:
            self.next += 1
            return [Record("t", 0, self.next - 1, b"k", b'{"a": %d}' % (self.next - 1))]

    report = archive_topics(Live(), ["t"], tmp_path, partitions=1, idle_s=0.2, max_seconds=30)
    assert report.records == 5 and report.truncated == [] and report.seconds < 10
    assert [Path(f).name for f in report.files] == ["part-0000-000000000000-000000000004.jsonl"]

    class Marker(Live):
        """Records at 0..3, a transaction marker at 4 (no record), the end at 5."""

        def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list:
            self.next += 1
            at = self.next - 1 if self.next <= 4 else self.next
            return [Record("t", 0, at, b"k", b'{"a": %d}' % at)]

    report = archive_topics(Marker(), ["t"], tmp_path / "m", partitions=1, idle_s=0.2,
                            max_seconds=30)  # fmt: skip
    assert report.records == 4 and report.truncated == [] and report.seconds < 10


def test_archive_waits_for_a_partition_whose_end_is_not_known_yet(tmp_path) -> None:
    """A consumer knows a partition's end from its first fetch of it (confluent-kafka's cached
    watermarks); on a loaded machine that fetch came back after more than one idle period, and
    the archive ended with none of that topic's records (CI, 2026-12-07)."""

    class SlowFirstFetch(InMemoryConsumer):
        """Nothing, and no end offsets, for the first three polls."""

        def __init__(self, broker: InMemoryBroker) -> None:
            super().__init__(broker)
            self.polls = 0

        def highwater(self, topic: str, partition: int) -> int | None:
            return None if self.polls <= 3 else super().highwater(topic, partition)

        def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list:
            self.polls += 1
            if self.polls <= 3:
                time.sleep(timeout_s)
                return []
            return super().poll(timeout_s, max_records)

    broker = InMemoryBroker(partitions=2)
    _fill(broker, "t", [{"n": i} for i in range(6)])
    report = archive_topics(SlowFirstFetch(broker), ["t"], tmp_path, partitions=2, idle_s=0.05)
    assert report.records == 6


def test_archive_refuses_a_read_that_could_not_end_and_a_broker_that_never_answered(
    tmp_path, monkeypatch, capsys
) -> None:
    """``--idle -5`` became a poll timeout of -5 (librdkafka: wait for ever; Ctrl-C and
    --max-seconds never got a turn), NaN ended the read at once: both are refused by name. A
    broker that reports none of the partitions is exit 1, not a successful empty archive."""
    for bad in ("-5", "0", "nan", "inf", "soon"):
        with pytest.raises(SystemExit) as stopped:
            main(["archive", "--idle", bad])
        assert stopped.value.code == 2
        assert f"argument --idle: expected a finite number of seconds > 0, got '{bad}'" in (
            capsys.readouterr().err
        )
    with pytest.raises(SystemExit):
        main(["archive", "--max-seconds", "-1"])
    assert "argument --max-seconds" in capsys.readouterr().err

    class Silent(InMemoryConsumer):
        def highwater(self, topic: str, partition: int) -> int | None:
            return None

        def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list:
            time.sleep(timeout_s)
            return []

    broker = InMemoryBroker(partitions=2)
    _archive_env(monkeypatch, broker, Silent(broker))
    rc = main(["archive", "--topics", "rewards", "--out", str(tmp_path / "a"), "--idle", "0.05",
               "--max-seconds", "0.3"])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "reported none of the 2 partitions" in err and "nothing was written" in err


def _garbage_inputs(tmp: Path) -> list[tuple[list[str], int, str]]:
    (tmp / "r.parquet").write_bytes(b"PAR1 not really")
    (tmp / "users.csv").write_text("user,arm,positives,activated\nu1,control,1,1\n")
    (tmp / "cov.csv").write_text("user,covariate\nu1,abc\n")
    (tmp / "m.txt").write_text("not prometheus { text\n")
    (tmp / "ref.jsonl").write_text('{"decisionId": "d1", "arm": "control", "features": [0.0]}')
    # a report's inputs edited by hand: each was a traceback (KeyError, DateParseError, ...)
    decision = {"decisionId": "d1", "userKey": "u1", "arm": "control", "chosen": "welcome",
                "timestamp": "2026-01-01T00:00:00Z", "experiment": "e"}  # fmt: skip
    (tmp / "no-arm.jsonl").write_text(json.dumps({**decision, "arm": None}))
    (tmp / "when.jsonl").write_text(json.dumps({**decision, "timestamp": "yesterday"}))
    (tmp / "d.jsonl").write_text(json.dumps(decision))
    (tmp / "lots.jsonl").write_text(json.dumps({"decisionId": "d1", "reward": "lots"}))
    (tmp / "r.jsonl").write_text(json.dumps({"decisionId": "d1", "reward": 1.0}))
    (tmp / "t.csv").write_text("user,arm,decisions,positives,activated\nu1,control,abc,1,1\n")
    report = ["report", "--out", str(tmp / "out")]
    return [
        ([*report, "--decisions", str(tmp / "no-arm.jsonl"), "--rewards", str(tmp / "r.jsonl")],
         1, "decision d1: arm: missing or not a text"),
        ([*report, "--decisions", str(tmp / "when.jsonl"), "--rewards", str(tmp / "r.jsonl")],
         1, "decision d1: timestamp: expected epoch ms or an ISO-8601 time, got 'yesterday'"),
        ([*report, "--decisions", str(tmp / "d.jsonl"), "--rewards", str(tmp / "lots.jsonl")],
         1, "reward d1: reward: not a number: 'lots'"),
        ([*report, "--table", str(tmp / "t.csv")], 1, "decisions must be a number, got 'abc' (row 2)"),
        ([*report, "--decisions", str(tmp / "d.jsonl"), "--rewards", str(tmp / "r.jsonl"),
          "--control", "bogus"], 2, "--control: no user of experiment 'e' is in arm 'bogus'"),
        (["report", "--table", str(tmp / "absent.csv")], 1, "absent.csv: No such file or directory"),
        (["report", "--table", str(tmp)], 1, "Is a directory"),
        (["report", "--table", str(tmp / "r.parquet")], 1, "not a parquet table"),
        (["report", "--table", str(tmp / "users.csv"), "--covariates", str(tmp / "cov.csv")], 2,
         "covariate must be a finite number, got 'abc' (row 2)"),
        (["audit", "--reference", str(tmp / "ref.jsonl"), "--recent", str(tmp / "ref.jsonl"),
          "--metrics", str(tmp / "m.txt")], 1, "not Prometheus text"),
        (["audit", "--reference", "x", "--recent", "y", "--psi-threshold", "nan"], 2,
         "argument --psi-threshold: expected a finite number > 0"),
        (["broker", "--port", "70000"], 2, "argument --port: expected a port from 0 to 65535"),
        (["sim", "--truth", str(tmp), "--users", "1", "--url", "http://127.0.0.1:1"], 1,
         "Is a directory"),
        (["train", "--data", str(tmp / "absent"), "--lr", "nan"], 2, "lr: must be a finite number > 0"),
        (["train", "--data", ""], 2, "data: empty"),
        (["sim", "--users", "0"], 2, "--users: Input should be greater than or equal to 1"),
        (["sim", "--write-key", ""], 2, "--write-key: empty"),
        (["sim", "--url", "not-a-url", "--users", "1"], 2, "--url: expected the collector's"),
    ]  # fmt: skip


def test_garbage_on_the_command_line_is_one_line_and_an_exit_status(tmp_path, capsys) -> None:
    """Files that are missing, folders or no table, numbers that are no number, a port past
    65535, an empty --data: each a one-line error and the documented exit status (found in
    review as tracebacks, or a NaN threshold that found nothing drifted)."""
    from deployments import onramp

    for argv, status, message in _garbage_inputs(tmp_path):
        try:
            rc = onramp.main(argv)
        except SystemExit as exc:  # argparse's refusal of an argument
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == status, (argv, rc, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err, (argv, err)


def test_archive_interrupted_before_any_partition_answered_is_an_interruption(
    tmp_path, monkeypatch, capsys
) -> None:
    """Ctrl-C before the broker reported anything is exit 130, not "is Kafka running?"."""

    class SilentThenInterrupted(InMemoryConsumer):
        def highwater(self, topic: str, partition: int) -> int | None:
            return None

        def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list:
            signal.raise_signal(signal.SIGINT)
            return []

    broker = InMemoryBroker(partitions=2)
    _archive_env(monkeypatch, broker, SilentThenInterrupted(broker))
    rc = main(["archive", "--topics", "rewards", "--out", str(tmp_path / "a"), "--idle", "5"])
    assert rc == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "is it running" not in err


def test_archive_readers_refuse_another_topics_folder_and_a_corrupt_gzip(tmp_path) -> None:
    """A reader given the rewards folder for decisions read the rewards as decisions; a corrupt
    .gz was a zlib traceback."""
    from ray_app.errors import FieldError
    from ray_app.experiments.report import read_json_lines

    root = tmp_path / "archive"
    _archive(root, TOPICS.rewards, [{"decisionId": "d1", "reward": 1.0}])
    with pytest.raises(FieldError, match=f"folder of topic '{TOPICS.rewards}'"):
        read_json_lines(root / TOPICS.rewards, TOPICS.decisions)
    assert read_json_lines(root / TOPICS.rewards, TOPICS.rewards)  # its own topic reads
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage")
    with pytest.raises(FieldError, match="cannot read"):
        read_json_lines(bad)


def test_an_archive_cut_short_by_max_seconds_says_so(tmp_path) -> None:
    """The read ran out of --max-seconds before the partitions' end offsets: it exited 0 and
    looked complete."""
    broker = InMemoryBroker(partitions=2)
    _fill(broker, "t", [{"i": i} for i in range(50)])

    class Slow(InMemoryConsumer):  # a few records a poll, a poll every 50 ms
        def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list[Any]:
            time.sleep(0.05)
            return super().poll(timeout_s, max_records=4)

    slow = Slow(broker)
    report = archive_topics(slow, ["t"], tmp_path, partitions=2, max_seconds=0.3, idle_s=0.05)
    assert report.truncated and report.as_dict()["truncated"] == report.truncated
    whole = archive_topics(
        InMemoryConsumer(broker), ["t"], tmp_path / "b", partitions=2, idle_s=0.01
    )
    assert whole.truncated == [] and whole.records == 50


def test_file_uris_are_paths_on_this_machine(tmp_path) -> None:
    from ray_app.errors import FieldError
    from ray_app.storage import Storage

    spaced = tmp_path / "my dir"
    Storage(f"file://localhost{spaced}").write("a.txt", b"x")
    assert (spaced / "a.txt").read_bytes() == b"x"
    assert Storage(f"file://{str(spaced).replace(' ', '%20')}").read("a.txt") == b"x"
    with pytest.raises(FieldError, match="not on host 'elsewhere'"):
        Storage("file://elsewhere/data", field="out")


def test_repeated_topics_are_read_once(tmp_path) -> None:
    from ray_app.cli.archive import _topic_names

    settings = load_settings(env={})
    assert _topic_names(settings, ["rewards", settings.topics.rewards]) == [settings.topics.rewards]


def test_archive_refuses_topics_of_another_partition_count(tmp_path, monkeypatch, capsys) -> None:
    """It reads kafka.partitions partitions of each topic: one with more was archived in part
    and exited 0."""
    import ray_app.kafka.topics as topics
    from ray_app.errors import ConfigError

    broker = InMemoryBroker(partitions=4)
    _fill(broker, TOPICS.rewards, [{"n": i} for i in range(100)])
    _archive_env(monkeypatch, broker)

    def four_partitions(bootstrap, kafka, names, timeout_s=10.0):
        raise ConfigError(f"existing topics do not match the settings: {names[0]} has 4 partitions")

    monkeypatch.setattr(topics, "verify_topics", four_partitions)
    out = tmp_path / "archive"
    assert main(["archive", "--topics", "rewards", "--out", str(out), "--idle", "0.05"]) == 2
    assert "has 4 partitions" in capsys.readouterr().err and not out.exists()


def test_an_archive_does_not_wait_for_a_partition_whose_records_all_expired(tmp_path) -> None:
    """Its end offset stays where it was, and its log is empty: the read waited the whole
    --max-seconds for it (600 s by default) and then called it cut short."""
    broker = InMemoryBroker(partitions=2)
    _fill(broker, "t", [{"i": i} for i in range(40)])
    expired = len(broker.topics["t"][1])

    class Expired(InMemoryConsumer):  # partition 1's records are gone, its end offset stays
        def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list[Any]:
            return [r for r in super().poll(timeout_s, max_records) if r.partition == 0]

        def lowwater(self, topic: str, partition: int) -> int | None:
            return expired if partition == 1 else 0

    started = time.monotonic()
    report = archive_topics(Expired(broker), ["t"], tmp_path, partitions=2, idle_s=0.05)
    assert time.monotonic() - started < 5 and report.truncated == []
    assert report.records == len(broker.topics["t"][0])


@pytest.mark.parametrize("command", ["up", "demo"])
def test_ctrl_c_while_starting_stops_what_started_and_exits_130(command, monkeypatch, tmp_path):
    """Startup waits minutes for workers, the learner and Serve; Ctrl-C during it only set an
    event read once the start was over (operators reached for kill -9, which left processes
    and ports behind)."""
    import os
    import signal
    import time as _time

    import ray_app.up as up

    stopped: list[bool] = []

    class SlowStack(up.Stack):
        def start(self):
            os.kill(os.getpid(), signal.SIGINT)  # the operator's Ctrl-C, mid-start
            _time.sleep(30)  # a long wait of the start (never reached its end)
            raise AssertionError("the interrupt did not stop the start")

        def stop(self):
            stopped.append(True)

    monkeypatch.setattr(up, "Stack", SlowStack)
    monkeypatch.setenv("ONRAMP_STATE_DIR", str(tmp_path))
    before = signal.getsignal(signal.SIGINT)
    try:
        started = _time.monotonic()
        assert main([command]) == 130
        assert _time.monotonic() - started < 20 and stopped == [True]
    finally:
        signal.signal(signal.SIGINT, before)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_a_failed_metrics_scrape_is_a_gap_in_the_demo_summary_not_a_traceback() -> None:
    """`onramp demo` scrapes /metrics every line; one scrape past its timeout (a worker
    restarting) or a non-Prometheus answer ended the demo with a traceback."""
    import socket
    from types import SimpleNamespace

    from ray_app.cli.demo import _summary_line

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    stack = SimpleNamespace(urls=lambda: {"metrics": f"http://127.0.0.1:{dead}/metrics"})
    sim = SimpleNamespace(stats=SimpleNamespace(sent=12))
    line, elapsed = _summary_line(stack, Settings(), sim, None, time.monotonic())
    assert "sent 12" in line and "/metrics: ConnectError" in line and elapsed >= 0


@pytest.mark.parametrize(
    "argv",
    [["demo", "--every", "0"], ["demo", "--every", "nan"], ["demo", "--duration", "-1"],
     ["demo", "--plot", "learning.txt"], ["demo", "--learning-users", "-5"]],
)  # fmt: skip
def test_demo_refuses_a_busy_loop_or_a_plot_it_cannot_write_before_starting(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "expected" in capsys.readouterr().err


def test_with_identity_verification_the_cli_decides_with_a_read_key_and_never_prints_it() -> None:
    """With collector.identity_secret a decide key's request for a user id needs the user's
    hash: the demo's samples and simulated users (no hash) got 403 and the simulation died. The
    CLI's clients decide with a read key then, as a server does; on a reachable deployment the
    example line still names no read key."""
    from types import SimpleNamespace

    from ray_app.cli.common import decide_key
    from ray_app.cli.up import print_urls

    secret_cfg = {"identity_secret": "identity-secret-0123456789"}
    local = Settings.model_validate({"collector": secret_cfg})
    assert decide_key(local) == "onramp-demo-read-key"
    assert decide_key(Settings()) == "onramp-demo-decide-key"
    reachable = Settings.model_validate(
        {
            "collector": {
                **secret_cfg, "host": "0.0.0.0", "read_keys": {"ops": "SECRET-read-key-0123"},
                "decide_keys": {"web": "public-decide-key-0123"},
            },
            "kafka": {"bootstrap_servers": "kafka-1.prod:9092"},
        }
    )  # fmt: skip
    stack = SimpleNamespace(
        http_mode="haproxy", notes=[], bootstrap="kafka-1.prod:9092", broker=None,
        base_url="http://10.0.0.5:8000", urls=lambda: {},
    )  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_urls(stack, reachable)
    assert "SECRET-read-key-0123" not in out.getvalue()
