"""Small file helpers."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

__all__ = ["escape_line_separators", "jsonl_line", "make_private_dirs", "write_jsonl_atomic"]

# Characters that str.splitlines() (and some JSONL readers) treat as line breaks but that
# json.dumps(..., ensure_ascii=False) writes raw inside strings; the control characters among
# them (\x0b \x0c \x1c-\x1e) are already escaped by the JSON encoder.
_SEPARATORS = re.compile("[\x85\u2028\u2029]")
_ESCAPES = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def escape_line_separators(encoded: str) -> str:
    """Escape U+0085, U+2028 and U+2029 in JSON text as ``\\u`` escapes (same value, one physical line).

    >>> escape_line_separators('"a\u2028b"')
    '"a\\\\u2028b"'
    """
    if _SEPARATORS.search(encoded) is None:
        return encoded
    return _SEPARATORS.sub(lambda m: _ESCAPES[m.group()], encoded)


def jsonl_line(row: Any) -> str:
    """``row`` as one JSONL line (UTF-8 text kept, line separators escaped, newline at the end)."""
    return escape_line_separators(json.dumps(row, ensure_ascii=False)) + "\n"


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    """Write ``rows`` as JSONL atomically (temporary file, fsync, rename); return the row count.

    A reader never sees half a file, and a crash leaves the previous file intact.
    The file is readable by the owner only (0600); missing folders are created 0700. Each row is
    one line, also for readers that split on Unicode line separators (see :func:`jsonl_line`).
    """
    path = Path(path)
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(jsonl_line(row))
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """Create the folder ``path`` and its missing parents readable by the owner only (0700).

    Folders that already exist keep their mode (``/tmp`` or a home directory is
    never changed). Safe when another process creates the same folders at once.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``path`` (or a parent) exists and is not a folder.
        PermissionError: A folder cannot be created.
    """
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass  # created by another process meanwhile
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    return path
