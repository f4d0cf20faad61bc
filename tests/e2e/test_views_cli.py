"""``afs-continuous report --html`` and ``afs-continuous ui`` from the command line: usage errors, the loopback
default, missing extras named, missing stores refused (the browser tests open what they produce)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def cli(*args: str, pythonpath: str = "", timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p)
    return subprocess.run([sys.executable, "-m", "afs_continuous.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    from afs_continuous import UsageLogger

    path = tmp_path / "usage.db"
    with UsageLogger(path) as logger:
        for i in range(5):
            logger.record_feedback(logger.log(f"q{i}", f"a{i}", "base", latency_ms=100.0 + i, quality_score=0.5), 1)
    return path


def test_report_needs_a_run_id_or_html(store: Path) -> None:
    proc = cli("report", "--db", str(store))
    assert proc.returncode == 2 and "give a RUN_ID (one run's report) or --html PATH" in proc.stderr
    proc = cli("report", "1", "--html", str(store.parent / "r.html"), "--db", str(store))
    assert proc.returncode == 2 and "--html writes the whole store's report" in proc.stderr
    proc = cli("report", "1", "--db", str(store))  # one run's report: still RUN_ID (none here: exit 1)
    assert proc.returncode == 1 and "unknown training run 1" in proc.stderr


def test_report_html_writes_one_private_file_and_never_creates_a_store(store: Path, tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    out = tmp_path / "report.html"
    out.write_text("an older report, readable by all")
    out.chmod(0o644)  # overwritten: owner-only all the same
    proc = cli("report", "--db", str(store), "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"report written to {out} (open it in a browser)\n"
    text = out.read_text(encoding="utf-8")
    assert text.count("<script") >= 2 and "Calls per day" in text and 'src="http' not in text
    assert out.stat().st_mode & 0o777 == 0o600
    missing = tmp_path / "nowhere" / "usage.db"
    proc = cli("report", "--db", str(missing), "--html", str(out))
    assert proc.returncode == 1 and f"no store at {missing}" in proc.stderr and not missing.exists()


def _blocked(tmp_path: Path, module: str) -> str:
    """A folder that shadows ``module`` with one whose import fails, as when it is not installed."""
    folder = tmp_path / f"no-{module}"
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(f"raise ImportError({'No module named ' + module!r})\n")
    return str(folder)


def test_a_missing_plotly_names_the_extra(store: Path, tmp_path: Path) -> None:
    proc = cli("report", "--db", str(store), "--html", str(tmp_path / "r.html"), pythonpath=_blocked(tmp_path, "plotly"))
    assert proc.returncode == 1
    assert "pip install 'afs-continuous[report]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.html").exists()
    proc = cli("ui", "--db", str(store), "--port", "1", pythonpath=_blocked(tmp_path, "fastapi"))
    assert proc.returncode == 1 and "pip install 'afs-continuous[ui]'" in proc.stderr


def test_ui_binds_loopback_unless_allowed(store: Path) -> None:
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        proc = cli("ui", "--db", str(store), "--host", host)
        assert proc.returncode == 2, proc.stderr
        assert f"--host {host} is not a loopback address" in proc.stderr and "--allow-remote" in proc.stderr
    assert "--allow-remote" in cli("ui", "--help").stdout


def test_report_html_on_a_damaged_store_fails_cleanly_and_changes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(os.urandom(8192))
    before = bad.read_bytes()
    proc = cli("report", "--db", str(bad), "--html", str(tmp_path / "r.html"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and str(bad) in proc.stderr, proc.stderr
    assert bad.read_bytes() == before and not (tmp_path / "r.html").exists()


def test_an_empty_database_is_not_given_a_schema(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    proc = cli("report", "--db", str(empty), "--html", str(tmp_path / "r.html"))
    assert proc.returncode == 1 and "the database has no schema yet" in proc.stderr, proc.stderr
    assert empty.stat().st_size == 0


def test_ui_serves_the_store_live_on_sqlite_and_postgresql(tmp_path: Path, clock, make_loop, start_ui) -> None:
    """The dashboard on the test's store (a PostgreSQL schema in the PostgreSQL stage): every page
    answers, and a record logged after the server started is in the next response (no restart)."""
    import json
    import urllib.error
    import urllib.request

    pytest.importorskip("fastapi")
    pytest.importorskip("plotly")
    loop = make_loop(tmp_path, clock)
    for i in range(30):
        loop.log_usage(f"q{i}", f"a{i}", loop.route(str(i)), latency_ms=200.0 + i, quality_score=0.8, unit_id=str(i))
    loop.logger.flush()
    config = tmp_path / "ui.json"
    config.write_text(json.dumps({"db_path": loop.config.db_path, "database_url": loop.config.database_url}))
    server = start_ui(["--config", str(config)])

    def calls() -> int:
        with urllib.request.urlopen(server.url + "/api/views", timeout=30) as r:
            return int(json.load(r)["overview"]["traffic_24h"]["calls"])

    for page in ("/", "/experiments", "/runs", "/versions"):
        with urllib.request.urlopen(server.url + page, timeout=30) as r:
            assert r.status == 200 and "afs_continuous" in r.read().decode()
    assert calls() == 30
    # DNS rebinding: a page whose domain now points at 127.0.0.1 sends its own Host header: refused
    rebound = urllib.request.Request(server.url + "/api/views", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(rebound, timeout=30)
    assert refused.value.code == 400
    loop.log_usage("one more", "answer", loop.route("x"), latency_ms=210.0, unit_id="x")
    loop.logger.flush()
    assert calls() == 31
