"""Docs that must match the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_configuration_reference_is_generated_from_the_code():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gen_config_docs_has_a_command_line_and_help_writes_nothing(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py")]
    docs = ROOT / "docs" / "configuration.md"
    before = (docs.read_bytes(), docs.stat().st_mtime_ns)
    for flag in ("--help", "-h"):
        proc = subprocess.run(script + [flag], capture_output=True, text=True)
        assert proc.returncode == 0 and "--check" in proc.stdout and "--output" in proc.stdout, proc.stdout
        assert "wrote" not in proc.stdout
    proc = subprocess.run(script + ["--chek"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unrecognized arguments: --chek" in proc.stderr
    assert (docs.read_bytes(), docs.stat().st_mtime_ns) == before

    out = tmp_path / "sub" / "configuration.md"
    proc = subprocess.run(script + ["--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0 and f"wrote {out}" in proc.stdout
    assert out.read_bytes() == docs.read_bytes()
    assert subprocess.run(script + ["--check", "--output", str(out)], capture_output=True).returncode == 0
    out.write_text(out.read_text() + "edited by hand\n")
    proc = subprocess.run(script + ["--check", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1 and f"{out} is out of date" in proc.stderr
    assert out.read_text().endswith("edited by hand\n")  # --check never writes
    assert (docs.read_bytes(), docs.stat().st_mtime_ns) == before


def test_config_example_loads_and_covers_every_key():
    from afs_continuous import LoopConfig, load_config

    cfg = load_config(ROOT / "config.example.json", env={})
    assert cfg == LoopConfig(db_path=cfg.db_path)
    import json

    data = json.loads((ROOT / "config.example.json").read_text())
    for section in ("trigger_config", "generator_config", "ab_test_config", "logger_config", "training"):
        assert set(data[section]) == set(type(getattr(cfg, section)).model_fields), section


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["bash scripts/dev.sh demo", "bash scripts/dev.sh test"]
    assert "bash scripts/dev.sh test" in (ROOT / ".ci" / "run").read_text()
