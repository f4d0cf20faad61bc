"""Small file helpers."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

__all__ = ["escape_line_separators", "jsonl_line", "write_jsonl_atomic"]

# Characters that str.splitlines() (and some JSONL readers) treat as line breaks but that
# json.dumps(..., ensure_ascii=False) writes raw inside strings; the control characters among
# them (\x0b \x0c \x1c-\x1e) are already escaped by the JSON encoder.
_SEPARATORS = re.compile("[\x85\u2028\u2029]")
_ESCAPES = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def escape_line_separators(encoded: str) -> str:
    """Escape U+0085, U+2028 and U+2029 in JSON text as ``\\uXXXX`` (same value, one physical line).

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

    A reader never sees half a file, and a crash leaves the previous file intact. Each row is
    one line, also for readers that split on Unicode line separators (see :func:`jsonl_line`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
