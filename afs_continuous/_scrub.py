"""Removing a unit's texts from the files under ``data_dir`` (private; used by :mod:`afs_continuous._privacy`).

Files that hold user text besides the store: the rehearsal buffer (chat-format JSONL,
``<data_dir>/rehearsal_buffer.jsonl`` or ``generator_config.existing_data_path``) and the training
sets of runs whose files were kept (``<data_dir>/runs/run-NNNNN.jsonl``, ``.val.jsonl``, ``.parquet``,
``.val.parquet``; in chatml, alpaca or completion format). Their lines carry no record id, so a line
is matched by its content: a *text key* is a hash of (prompt, response), where the prompt is the
text of the record's final user turn (``usage_records.query``) and the response the record's
response. A line is read as a chat sample (:func:`~afs_continuous.rehearsal.to_chat_sample`); its
response is its last assistant turn and its prompt the turn before; an alpaca or completion line of
a conversation record renders the conversation into one prompt ending in ``User: <final turn>``
(:func:`~afs_continuous._conversation.render_prompt`), whose tail after the last ``\\n\\nUser: `` is
tried too. A line of another unit with exactly the same prompt and response is removed as well
(it is the same text).

Files are rewritten atomically (temporary file in the same folder, 0600, fsync, rename) only when a
line was removed; a reader holding the old file keeps its copy until it closes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from ._text import clean_text
from .rehearsal import to_chat_sample

__all__ = ["text_key", "line_keys", "training_files", "scrub_jsonl", "scrub_parquet", "scrub_files"]

_USER_TAIL = "\n\nUser: "


def text_key(prompt: str, response: str) -> str:
    """The text key of a (prompt, response) pair: 32 hex characters of SHA-256 over both texts
    (cleaned as exported, :func:`~afs_continuous._text.clean_text`); the texts cannot be read back from it."""
    data = (clean_text(prompt) + "\x1f" + clean_text(response)).encode("utf-8", "replace")
    return hashlib.sha256(b"afs-continuous text\x00" + data).hexdigest()[:32]


def line_keys(obj: Any) -> list[str]:
    """The text keys a training or rehearsal line may match (empty for an unusable line)."""
    sample = to_chat_sample(obj)
    if sample is None:
        return []
    messages = sample["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        return []
    prompt, response = messages[last - 1]["content"], messages[last]["content"]
    keys = [text_key(prompt, response)]
    if _USER_TAIL in prompt:
        keys.append(text_key(prompt.rsplit(_USER_TAIL, 1)[1], response))
    return keys


def training_files(data_dir: Path, extra: Iterable[str | None] = ()) -> list[Path]:
    """Every existing training file: ``<data_dir>/runs/*.jsonl`` and ``*.parquet``, and the files of
    ``extra`` (the runs' recorded ``data_path``) with their validation and parquet siblings."""
    found: set[Path] = set()
    runs = data_dir / "runs"
    if runs.is_dir():
        found.update(p for p in runs.iterdir() if p.suffix in (".jsonl", ".parquet") and not p.name.startswith("."))
    for path in extra:
        if not path:
            continue
        p = Path(path).expanduser()
        stem = p.with_suffix("")
        for candidate in (p, stem.with_name(stem.name + ".val.jsonl"), p.with_suffix(".parquet"),
                          stem.with_name(stem.name + ".val.parquet")):
            found.add(candidate)
    return sorted(p for p in found if p.is_file())


def _matches(keys: set[str]) -> Callable[[Any], bool]:
    return lambda obj: any(k in keys for k in line_keys(obj))


def scrub_jsonl(path: Path, keys: set[str]) -> int:
    """Remove the lines of a JSONL file that match ``keys``; returns how many (the file is rewritten
    only when some were). Lines that are not JSON are kept as they are."""
    if not keys or not path.is_file():
        return 0
    match = _matches(keys)
    removed = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out, \
                path.open("r", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                try:
                    obj = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    obj = None
                if obj is not None and match(obj):
                    removed += 1
                    continue
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
        if removed:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return removed


def scrub_parquet(path: Path, keys: set[str], *, batch_rows: int = 10_000) -> int:
    """Remove the rows of a training parquet file that match ``keys`` (streamed in batches); returns how many.

    Raises:
        ImportError: pyarrow is missing (it wrote the file, so it normally is not).
    """
    if not keys or not path.is_file():
        return 0
    import pyarrow as pa
    import pyarrow.parquet as pq

    match = _matches(keys)
    source = pq.ParquetFile(path)
    if not any(match(r) for b in source.iter_batches(batch_size=batch_rows) for r in b.to_pylist()):
        return 0
    removed = 0
    schema = source.schema_arrow
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            wrote = False
            for batch in source.iter_batches(batch_size=batch_rows):
                rows = batch.to_pylist()
                kept = [r for r in rows if not match(r)]
                removed += len(rows) - len(kept)
                if kept:
                    writer.write_table(pa.Table.from_pylist(kept, schema=schema))
                    wrote = True
            if not wrote:
                writer.write_table(pa.Table.from_pylist([], schema=schema))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return removed


def scrub_files(paths: Iterable[Path], keys: set[str]) -> dict[str, int]:
    """Scrub every file of ``paths`` (JSONL or parquet by suffix); returns ``{path: lines removed}``
    for the files that changed."""
    changed: dict[str, int] = {}
    for path in paths:
        n = scrub_parquet(path, keys) if path.suffix == ".parquet" else scrub_jsonl(path, keys)
        if n:
            changed[str(path)] = n
    return changed
