"""The daemon and operator commands, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DAEMON = [sys.executable, str(ROOT / "scripts" / "continuous_loop.py")]
CLI = [sys.executable, "-m", "afs_continuous.cli"]

TRAIN_MODULE = '''
import json, os, pathlib, time

def train(data_path):
    n = sum(1 for _ in open(data_path, encoding="utf-8"))
    out = pathlib.Path(os.environ["ADAPTERS"]) / f"adapter-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text(json.dumps({"samples": n}))
    return {"model_path": str(out), "samples": n, "train_loss": 1.25}

def broken(data_path):
    raise RuntimeError("CUDA out of memory (simulated by the user's train_fn)")
'''


def run(args, cwd, env=None, check=False, timeout=120):
    full_env = {**os.environ, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if not k.startswith("AFS_CONTINUOUS_") or k in (env or {})}
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "user_training.py").write_text(TRAIN_MODULE)
    config = {"db_path": str(tmp_path / "usage.db"), "data_dir": str(tmp_path / "data"),
              "check_interval_seconds": 0.05, "trigger_config": {"min_new_samples": 20}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def _fill(workdir: Path, n: int = 30) -> None:
    from afs_continuous import UsageLogger

    with UsageLogger(workdir / "usage.db") as logger:
        for i in range(n):
            rid = logger.log(f"question number {i}", f"a good answer {i}", "base", quality_score=0.9, latency_ms=12.5)
            logger.record_feedback(rid, 1)


def test_status_human_and_json(workdir):
    _fill(workdir)
    human = run(DAEMON + ["--config", "config.json", "--status"], workdir, check=True)
    assert "afs_continuous status" in human.stdout and "records          30" in human.stdout
    machine = run(DAEMON + ["--config", "config.json", "--status", "--json"], workdir, check=True)
    summary = json.loads(machine.stdout)  # nothing but JSON on stdout
    assert summary["usage_stats"]["total"] == 30
    assert summary["status"]["champion_model"] == "base"
    assert summary["status"]["eligible_samples"] == 30


def test_trigger_no_train_prepares_data_only(workdir):
    _fill(workdir)
    proc = run(DAEMON + ["--config", "config.json", "--trigger", "--no-train", "--json"], workdir, check=True)
    result = json.loads(proc.stdout)
    assert result["retrain"]["status"] == "data_ready"
    data = Path(result["retrain"]["data_path"])
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(lines) == 30 and lines[0]["messages"][1]["role"] == "assistant"


def test_daemon_trains_with_named_train_fn_and_stops_at_max_iterations(workdir):
    _fill(workdir)
    env = {"ADAPTERS": str(workdir / "adapters")}
    proc = run(DAEMON + ["--config", "config.json", "--train-fn", "user_training:train", "--max-iterations", "2"],
               workdir, env=env, check=True)
    assert "daemon stopped after 2 iteration(s)" in proc.stderr
    versions = json.loads(run(CLI + ["versions", "--config", "config.json", "--json"], workdir, check=True).stdout)
    assert [v["status"] for v in versions] == ["champion", "challenger"]
    assert versions[1]["metrics"]["samples"] == 30


def test_failing_train_fn_is_a_failed_run_not_a_crash(workdir):
    _fill(workdir)
    proc = run(DAEMON + ["--config", "config.json", "--train-fn", "user_training:broken", "--trigger"], workdir)
    assert proc.returncode == 1
    assert "failed" in proc.stdout and "CUDA out of memory" in proc.stdout
    runs = json.loads(run(CLI + ["runs", "--config", "config.json", "--json"], workdir, check=True).stdout)
    assert runs[0]["status"] == "failed" and "Traceback" in runs[0]["error"]
    report = json.loads(run(CLI + ["report", str(runs[0]["id"]), "--config", "config.json", "--json"], workdir,
                            check=True).stdout)
    assert report["counts"]["new_samples"] == 30
    assert report["decision"]["reasons"] == ["RuntimeError: CUDA out of memory (simulated by the user's train_fn)"]
    human = run(CLI + ["report", str(runs[0]["id"]), "--config", "config.json"], workdir, check=True).stdout
    assert f"Training run #{runs[0]['id']}: failed" in human and "CUDA out of memory" in human


def test_sigterm_stops_the_daemon_cleanly(workdir):
    config = json.loads((workdir / "config.json").read_text())
    config["check_interval_seconds"] = 3600
    (workdir / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    proc = subprocess.Popen(DAEMON + ["--config", "config.json"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    from afs_continuous import Store

    while time.monotonic() < deadline:
        if (workdir / "usage.db").exists() and Store(str(workdir / "usage.db")).get_state("last_iteration_at"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "received SIGTERM" in err and "daemon stopped after 1 iteration(s)" in err


def test_config_typo_exits_2_naming_the_key(workdir):
    (workdir / "bad.json").write_text(json.dumps({"trigger_config": {"min_new_sampels": 5}}))
    proc = run(DAEMON + ["--config", "bad.json", "--status"], workdir)
    assert proc.returncode == 2
    assert "trigger_config.min_new_sampels" in proc.stderr and "min_new_samples" in proc.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"check_interval_seconds": Infinity}', "check_interval_seconds: Input should be a finite number"),
        (b'{"trigger_config": {"min_new_samples": true}}', "trigger_config.min_new_samples: Input should be a valid integer"),
        (b'{"trigger_config": {"cooldown_hours": "1"}}', "trigger_config.cooldown_hours: Input should be a valid number"),
        (b'{"enable_ab_testing": 1}', "enable_ab_testing: Input should be a valid boolean"),
        ('{"champion_model": "caf\u00e9"}'.encode("latin-1"), "bad.json: not valid UTF-8 (byte 0xe9 at position 23)"),
    ],
)
def test_bad_config_values_exit_2_naming_the_key_without_a_traceback(workdir, content, expected):
    (workdir / "bad.json").write_bytes(content)
    for command in (DAEMON + ["--config", "bad.json", "--status"], CLI + ["status", "--config", "bad.json"],
                    DAEMON + ["--config", "bad.json", "--max-iterations", "1"]):
        proc = run(command, workdir)
        assert proc.returncode == 2, (command, proc.stderr)
        assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (workdir / "usage.db").exists()


def test_relative_paths_in_the_config_file_resolve_against_its_folder(workdir, tmp_path):
    conf = workdir / "conf"
    conf.mkdir()
    (conf / "config.json").write_text(json.dumps({
        "db_path": "state/usage.db", "data_dir": "data", "trigger_config": {"min_new_samples": 5},
        "generator_config": {"existing_data_path": "buffer/rehearsal.jsonl"}}))
    (conf / "buffer").mkdir()
    (conf / "buffer" / "rehearsal.jsonl").write_text(
        json.dumps({"prompt": "an old question", "completion": "an old answer"}) + "\n")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    from afs_continuous import UsageLogger

    with UsageLogger(conf / "state" / "usage.db") as logger:
        for i in range(10):
            logger.record_feedback(logger.log(f"question number {i}", f"a good answer {i}", "base", quality_score=0.9), 1)
    proc = run(DAEMON + ["--config", "../conf/config.json", "--trigger", "--no-train", "--json"], elsewhere, check=True)
    retrain = json.loads(proc.stdout)["retrain"]
    assert retrain["status"] == "data_ready" and retrain["counts"]["rehearsal_samples"] == 1
    assert Path(retrain["data_path"]).parent.parent == conf / "data"
    summary = json.loads(run(CLI + ["status", "--config", str(conf / "config.json"), "--json"], tmp_path,
                             check=True).stdout)
    assert summary["usage_stats"]["total"] == 10
    assert summary["status"]["rehearsal_buffer"] == str(conf / "buffer" / "rehearsal.jsonl")
    assert list(elsewhere.iterdir()) == []  # nothing was created in the current directory


def test_status_shows_the_configuration_the_daemon_recorded(workdir):
    _fill(workdir)
    run(DAEMON + ["--config", "config.json", "--trigger", "--no-train"], workdir, check=True)
    for command in (CLI + ["status"], DAEMON + ["--status"]):  # no --config: the daemon's, from the store
        summary = json.loads(run(command + ["--db", "usage.db", "--json"], workdir, check=True).stdout)
        assert summary["status"]["min_new_samples"] == 20  # config.json's, not the default 1000
        assert summary["status"]["rehearsal_buffer"] == str(workdir / "data" / "rehearsal_buffer.jsonl")
        assert summary["configuration"]["source"] == "daemon" and summary["configuration"]["recorded_at"]
        text = run(command + ["--db", "usage.db"], workdir, check=True).stdout
        assert "configuration    as recorded by the daemon at " in text and " / 20 since" in text
    (workdir / "other.json").write_text(json.dumps({"db_path": "usage.db", "trigger_config": {"min_new_samples": 7}}))
    summary = json.loads(run(CLI + ["status", "--config", "other.json", "--json"], workdir, check=True).stdout)
    assert summary["status"]["min_new_samples"] == 7
    assert summary["configuration"] == {"source": "file", "file": "other.json", "differs_from_daemon": True,
                                        "daemon_recorded_at": summary["configuration"]["daemon_recorded_at"]}
    text = run(CLI + ["status", "--config", "other.json"], workdir, check=True).stdout
    assert "configuration    --config other.json (differs from the daemon's, recorded at " in text
    text = run(CLI + ["status", "--config", "config.json"], workdir, check=True).stdout
    assert "configuration    --config config.json\n" in text  # the daemon's own file: nothing to add


def test_status_of_a_store_without_a_recorded_configuration_says_so(tmp_path):
    from afs_continuous import UsageLogger

    UsageLogger(tmp_path / "fresh.db").close()
    summary = json.loads(run(CLI + ["status", "--db", "fresh.db", "--json"], tmp_path, check=True).stdout)
    assert summary["configuration"] == {"source": "defaults"}
    text = run(CLI + ["status", "--db", "fresh.db"], tmp_path, check=True).stdout
    assert "configuration    defaults and environment (no daemon has recorded its configuration in this store)" in text


def test_bad_train_fn_exits_2(workdir):
    proc = run(DAEMON + ["--config", "config.json", "--train-fn", "no_such_module:train", "--trigger"], workdir)
    assert proc.returncode == 2 and "no_such_module" in proc.stderr


def test_promote_and_rollback_unknown_version(workdir):
    _fill(workdir)
    proc = run(CLI + ["rollback", "v-does-not-exist", "--config", "config.json"], workdir)
    assert proc.returncode == 1 and "unknown model version 'v-does-not-exist'" in proc.stderr
    versions = json.loads(run(CLI + ["versions", "--config", "config.json", "--json"], workdir, check=True).stdout)
    assert [(v["name"], v["status"]) for v in versions] == [("base", "champion")]


def test_console_commands_are_installed():
    import shutil

    for name in ("afs-continuous", "afs-continuous-loop"):
        exe = shutil.which(name) or str(Path(sys.executable).parent / name)
        assert Path(exe).exists(), f"{name} is not installed"
        assert "--help" in run([exe, "--help"], ROOT, check=True).stdout


def test_operator_commands_on_a_missing_store_fail_and_create_nothing(tmp_path):
    for args in (["versions"], ["status"], ["runs"], ["rollback", "v1"], ["report", "1"], ["db", "current"]):
        proc = run(CLI + args + ["--db", "typo.db"], tmp_path)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "no store at" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "typo.db").exists()


def test_operator_commands_on_a_damaged_store_fail_cleanly(tmp_path):
    (tmp_path / "bad.db").write_bytes(os.urandom(8192))
    before = (tmp_path / "bad.db").read_bytes()
    for args in (["versions"], ["status"], ["promote", "v1"]):
        proc = run(CLI + args + ["--db", "bad.db"], tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "not a valid SQLite database" in proc.stderr
    assert (tmp_path / "bad.db").read_bytes() == before


def test_db_flag_wins_over_database_url_in_the_environment(workdir):
    _fill(workdir)
    other = workdir / "elsewhere.db"
    proc = run(CLI + ["status", "--db", "usage.db", "--json"], workdir,
               env={"AFS_CONTINUOUS_DATABASE_URL": f"sqlite:///{other}"}, check=True)
    assert json.loads(proc.stdout)["usage_stats"]["total"] == 30
    assert not other.exists()


# ------------------------------------------------------------------ secrets and store faults, as an operator sees them
def test_the_database_password_is_never_printed(workdir, store_url):
    from sqlalchemy.engine import make_url

    if store_url.startswith("sqlite"):
        pytest.skip("needs AFS_TEST_DATABASE_URL=postgresql+psycopg://...")
    url = make_url(store_url).set(password="s3cr3tpw").render_as_string(hide_password=False)
    config = json.loads((workdir / "config.json").read_text())
    (workdir / "config.json").write_text(json.dumps({**config, "database_url": url}))
    outputs = [run(DAEMON + ["--config", "config.json", "--max-iterations", "1", "--no-train"], workdir, check=True)]
    for args in (["--status"], ["--status", "--json"]):
        outputs.append(run(DAEMON + ["--config", "config.json"] + args, workdir, check=True))
    for args in (["status", "--json"], ["status"], ["db", "current"], ["db", "current", "--json"]):
        outputs.append(run(CLI + args + ["--config", "config.json"], workdir, check=True))
    assert "daemon started on postgresql+psycopg://postgres:***@" in outputs[0].stderr
    assert json.loads(outputs[2].stdout)["store"].startswith("postgresql+psycopg://postgres:***@")
    for proc in outputs:
        assert "s3cr3tpw" not in proc.stdout + proc.stderr, proc.args
    # unreachable server and missing database: their own messages, no password either
    for bad, expected in ((make_pg_url_like(url, port=1), "cannot connect to the database server at"),
                          (make_pg_url_like(url, database="afs_no_such_db"), "database 'afs_no_such_db' does not exist")):
        (workdir / "config.json").write_text(json.dumps({**config, "database_url": bad}))
        for cmd in (CLI + ["status"], DAEMON + ["--status"], CLI + ["db", "current"]):
            proc = run(cmd + ["--config", "config.json"], workdir)
            assert proc.returncode == 1 and expected in proc.stderr, proc.stderr
            assert "s3cr3tpw" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
            assert "SQLite" not in proc.stderr


def make_pg_url_like(url: str, **parts) -> str:
    """``url`` with ``parts`` (port, database) replaced."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(**parts).render_as_string(hide_password=False)


def test_a_directory_as_the_store_is_named_as_such(tmp_path):
    (tmp_path / "adir").mkdir()
    for cmd in (CLI + ["status"], DAEMON + ["--status"], DAEMON + ["--max-iterations", "1"]):
        proc = run(cmd + ["--db", "adir"], tmp_path)
        assert proc.returncode == 1 and "is a directory" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "not a valid SQLite database" not in proc.stderr


def test_damaged_pages_with_an_intact_header_exit_1_with_the_path_and_a_hint(tmp_path, damaged_store):
    db, before = damaged_store(tmp_path)
    for cmd in (CLI + ["status"], CLI + ["status", "--json"], DAEMON + ["--status"],
                DAEMON + ["--max-iterations", "1", "--no-train"]):
        proc = run(cmd + ["--db", str(db)], tmp_path)
        assert proc.returncode == 1, (cmd, proc.stderr)
        assert "Traceback" not in proc.stderr and str(db) in proc.stderr and ".recover" in proc.stderr, proc.stderr
    assert db.read_bytes() == before


SHADOW = '''
import pathlib
pathlib.Path(__file__).with_name("SHADOW_RAN_" + __name__).write_text("imported from the current directory")
raise ImportError("the current directory's " + __name__ + ".py shadowed the installed package")
'''


@pytest.mark.parametrize("entry", ["script", "console", "module", "file"])
def test_train_fn_import_does_not_let_the_current_directory_shadow_packages(workdir, entry):
    """Issue 11 item 3: `--train-fn my_training:train_model` finds my_training in the current directory,
    while a datasketch.py / tqdm.py there never runs (installed packages win)."""
    import shutil

    (workdir / "my_training.py").write_text(TRAIN_MODULE.replace("def train(", "def train_model("))
    for fake in ("datasketch", "tqdm", "pyarrow"):
        (workdir / f"{fake}.py").write_text(SHADOW)
    _fill(workdir)
    spec = "./my_training.py:train_model" if entry == "file" else "my_training:train_model"
    console = shutil.which("afs-continuous-loop") or str(Path(sys.executable).parent / "afs-continuous-loop")
    command = {"script": DAEMON, "file": DAEMON, "console": [console],
               "module": [sys.executable, "-m", "afs_continuous.cli", "run"]}[entry]
    proc = run(command + ["--config", "config.json", "--trigger", "--train-fn", spec, "--json"], workdir,
               env={"ADAPTERS": str(workdir / "adapters")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["retrain"]["status"] == "deployed"
    assert sorted(p.name for p in workdir.glob("SHADOW_RAN_*")) == []
