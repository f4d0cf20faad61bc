"""The Alembic-free schema check that every worker runs when it opens the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from afs_continuous._schema_head import VERSIONS_DIR, head_revision
from afs_continuous.store import MIGRATIONS_DIR


def test_head_from_file_names_is_alembics_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(cfg)
    assert head_revision() == script.get_current_head()
    # every revision id is its file's number, in one line of history
    revisions = {rev.revision: rev.down_revision for rev in script.walk_revisions()}
    assert sorted(revisions) == sorted(p.name[:4] for p in VERSIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert all(down is None or isinstance(down, str) for down in revisions.values())


def test_opening_a_current_store_does_not_import_alembic(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    script = ("import sys; from afs_continuous import ContinuousLearningLoop, LoopConfig\n"
              f"cfg = LoopConfig(db_path={str(db)!r}, data_dir={str(tmp_path)!r})\n"
              "ContinuousLearningLoop(cfg).close()\n"  # creates the schema (Alembic)
              "print('alembic' in sys.modules)\n")
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "True"
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "False"  # a worker opening a current store
