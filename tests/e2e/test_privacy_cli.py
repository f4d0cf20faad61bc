"""``afs-continuous forget`` as an operator runs it (a subprocess): JSON and text reports, the audit
entry, idempotence, and the errors for a bad unit id or a missing store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from afs_continuous import ContinuousLearningLoop, load_config
from afs_continuous._privacy import AUDIT_KEY, unit_hash

ROOT = Path(__file__).parents[2]
CLI = [sys.executable, "-m", "afs_continuous.cli"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_forget_command(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    cfg = load_config(None, env={}, overrides={"db_path": str(db), "data_dir": str(tmp_path / "data")})
    with ContinuousLearningLoop(cfg) as loop:
        for i in range(5):
            rid = loop.log_usage(f"carol's question {i}", f"carol's answer {i}", "base", latency_ms=50.0, unit_id="carol-42")
            loop.record_feedback(rid, 1, comment=f"carol's comment {i}")
            loop.log_usage(f"dave's question {i}", f"dave's answer {i}", "base", unit_id=17)

    proc = _cli(["forget", "--unit-id", "carol-42", "--actor", "dpo", "--reason", "ticket 9", "--db", str(db), "--json"],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["unit_hash"] == unit_hash("carol-42")
    assert (report["records"], report["feedback_events"]) == (5, 5)
    assert report["store"]["vacuumed"] and report["store"]["wal_truncated"]
    assert "carol" not in proc.stdout + proc.stderr

    proc = _cli(["forget", "--unit-id", "17", "--db", str(db), "--no-vacuum"], tmp_path)  # an int unit id, as text
    assert proc.returncode == 0, proc.stderr
    assert "records 5, feedback events 0" in proc.stdout and "vacuumed: no" in proc.stdout
    proc = _cli(["forget", "--unit-id", "carol-42", "--db", str(db)], tmp_path)  # idempotent
    assert proc.returncode == 0 and "records 0," in proc.stdout

    with ContinuousLearningLoop(cfg) as loop:
        audit = loop.store.get_state(AUDIT_KEY)
        with loop.store.read() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM usage_records").scalar() == 0
    assert [(e["actor"], e["reason"], e["counts"]["records"]) for e in audit] == [("dpo", "ticket 9", 5),
                                                                                   (os.environ.get("USER", "operator"), None, 5),
                                                                                   (os.environ.get("USER", "operator"), None, 0)]
    assert "carol" not in db.read_bytes().decode("latin-1")

    proc = _cli(["forget", "--unit-id", "", "--db", str(db)], tmp_path)
    assert proc.returncode == 2 and "unit_id must be a non-empty str" in proc.stderr
    proc = _cli(["forget", "--unit-id", "x", "--db", str(tmp_path / "missing.db")], tmp_path)
    assert proc.returncode == 1 and "no store at" in proc.stderr
