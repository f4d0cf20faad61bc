"""Matching a record's texts in training and rehearsal lines of every format, and rewriting the files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from afs_continuous._export import format_conversation, format_pair
from afs_continuous._scrub import line_keys, scrub_jsonl, scrub_parquet, text_key
from afs_continuous.config import OutputFormat

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."}, {"role": "user", "content": "What is my name?"}]


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_a_record_is_found_in_every_line_format(fmt: OutputFormat) -> None:
    key = text_key("What is my name?", "Ada.")
    assert key in line_keys(format_pair(fmt, "What is my name?", "Ada.", "Be kind."))
    assert key in line_keys(format_conversation(fmt, CONV, "Ada."))  # the query is the final user turn
    assert key not in line_keys(format_pair(fmt, "What is my name?", "Grace."))
    assert key not in line_keys(format_pair(fmt, "What is her name?", "Ada."))


def test_unusable_lines_have_no_keys() -> None:
    assert line_keys({"text": "free text"}) == [] and line_keys(["a"]) == []
    assert line_keys({"messages": [{"role": "user", "content": "no answer"}]}) == []


def test_scrub_jsonl_removes_only_matching_lines_and_keeps_the_rest_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "buf.jsonl"
    lines = [json.dumps(format_pair(OutputFormat.CHATML, f"q{i}", f"r{i}"), ensure_ascii=False) + "\n" for i in range(5)]
    lines.insert(2, "not json at all\n")
    path.write_text("".join(lines), encoding="utf-8")
    os.chmod(path, 0o644)
    assert scrub_jsonl(path, {text_key("q3", "r3"), text_key("q9", "r9")}) == 1
    assert path.read_text(encoding="utf-8") == "".join(line for line in lines if '"q3"' not in line)
    assert path.stat().st_mode & 0o777 == 0o600
    mtime = path.stat().st_mtime_ns
    assert scrub_jsonl(path, {text_key("q3", "r3")}) == 0 and path.stat().st_mtime_ns == mtime  # not rewritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_scrub_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from afs_continuous._export import write_parquet

    jsonl, parquet = tmp_path / "run.jsonl", tmp_path / "run.parquet"
    rows = [format_pair(OutputFormat.ALPACA, f"q{i}", f"r{i}") for i in range(25)]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_parquet(jsonl, parquet, OutputFormat.ALPACA)
    assert scrub_parquet(parquet, {text_key("q4", "r4"), text_key("q20", "r20")}, batch_rows=10) == 2
    assert pq.read_table(parquet).to_pylist() == [r for r in rows if r["instruction"] not in ("q4", "q20")]
    assert scrub_parquet(parquet, {text_key(f"q{i}", f"r{i}") for i in range(25)}) == 23
    assert pq.read_table(parquet).num_rows == 0
