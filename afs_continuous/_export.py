"""Writing a training set: line formats, a seeded external shuffle, the validation split, parquet.

The shuffle is a two-pass external shuffle (Sandelius 1962, "A simple
randomization procedure"): every line goes to one of ``n_buckets`` temporary
files chosen uniformly at random, then each bucket is shuffled in memory and
appended to the output. The result is a uniformly random permutation, while
memory holds one bucket at a time (``n_buckets`` is chosen so that a bucket is
about 20,000 lines).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from json.encoder import encode_basestring as _json_str  # the C encoder of json.dumps(..., ensure_ascii=False)
from pathlib import Path
from typing import IO, Any, Iterator

from ._conversation import chat_messages, render_prompt
from ._io import escape_line_separators, jsonl_line, make_private_dirs
from .config import OutputFormat

__all__ = ["ShuffleWriter", "chat_pair", "encoded_line", "format_chat", "format_conversation", "format_pair", "json_str", "pair_line",
           "write_parquet", "val_path_for", "BUCKET_LINES"]

BUCKET_LINES = 20_000


def chat_pair(sample: dict[str, Any]) -> tuple[str, str]:
    """(query, response) of a chat sample: the last assistant message is the response, the
    other non-system messages (joined by blank lines) the query.

    >>> chat_pair({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
    ...                         {"role": "assistant", "content": "Hello!"}]})
    ('Hi', 'Hello!')
    """
    messages = [m for m in sample["messages"] if m["role"] != "system"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return "\n\n".join(m["content"] for m in messages), ""
    return "\n\n".join(m["content"] for m in messages[:last]), messages[last]["content"]


def format_pair(fmt: OutputFormat, query: str, response: str, system_prompt: str | None = None) -> dict[str, Any]:
    """One exported line for a (query, response) record.

    >>> format_pair(OutputFormat.ALPACA, "Name a colour.", "Blue.")
    {'instruction': 'Name a colour.', 'input': '', 'output': 'Blue.'}
    >>> format_pair(OutputFormat.COMPLETION, "2+2=", "4")
    {'prompt': '2+2=', 'completion': '4'}
    """
    if fmt is OutputFormat.ALPACA:
        return {"instruction": query, "input": "", "output": response}
    if fmt is OutputFormat.COMPLETION:
        return {"prompt": query, "completion": response}
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
    return {"messages": messages}


def pair_line(fmt: OutputFormat, query: str, response: str, system_prompt: str | None = None) -> str:
    """``json.dumps(format_pair(...), ensure_ascii=False) + "\\n"``, built from two string encodings.

    >>> line = pair_line(OutputFormat.CHATML, 'Say "hi"', "hi\\n", "Be brief.")
    >>> line == json.dumps(format_pair(OutputFormat.CHATML, 'Say "hi"', "hi\\n", "Be brief."), ensure_ascii=False) + "\\n"
    True
    """
    return encoded_line(fmt, json_str(query), json_str(response), system_prompt)


def json_str(text: str) -> str:
    """``text`` as a JSON string literal (quotes included), as ``json.dumps(text, ensure_ascii=False)``,
    except that U+0085, U+2028 and U+2029 are escaped so that a line stays one line for readers that
    split with ``str.splitlines()`` (the other splitlines separators are control characters, escaped anyway).

    >>> json_str("a\u2028b")
    '"a\\\\u2028b"'
    """
    return escape_line_separators(_json_str(text))


def encoded_line(fmt: OutputFormat, query_json: str, response_json: str, system_prompt: str | None = None) -> str:
    """:func:`pair_line` from texts already encoded by :func:`json_str`."""
    q, r = query_json, response_json
    if fmt is OutputFormat.ALPACA:
        return '{"instruction": ' + q + ', "input": "", "output": ' + r + "}\n"
    if fmt is OutputFormat.COMPLETION:
        return '{"prompt": ' + q + ', "completion": ' + r + "}\n"
    system = '{"role": "system", "content": ' + json_str(system_prompt) + "}, " if system_prompt else ""
    return ('{"messages": [' + system + '{"role": "user", "content": ' + q + '}, {"role": "assistant", "content": '
            + r + "}]}\n")


def format_conversation(fmt: OutputFormat, messages: list[dict[str, str]], response: str,
                        system_prompt: str | None = None) -> dict[str, Any]:
    r"""One exported line for a conversation record (``messages`` before the answer, then ``response``).

    chatml keeps every turn: ``{"messages": [system, earlier turns..., final user, assistant]}``
    (``system_prompt`` first when the conversation has none); alpaca and completion render the
    earlier turns into the prompt (:func:`~afs_continuous._conversation.render_prompt`).

    >>> conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
    ...         {"role": "user", "content": "Bye"}]
    >>> format_conversation(OutputFormat.COMPLETION, conv, "Goodbye!")
    {'prompt': 'User: Hi\n\nAssistant: Hello!\n\nUser: Bye', 'completion': 'Goodbye!'}
    >>> [m["role"] for m in format_conversation(OutputFormat.CHATML, conv, "Goodbye!", "Be brief.")["messages"]]
    ['system', 'user', 'assistant', 'user', 'assistant']
    """
    if fmt is OutputFormat.CHATML:
        return {"messages": chat_messages(messages, response, system_prompt)}
    return format_pair(fmt, render_prompt(messages), response)


def format_chat(fmt: OutputFormat, sample: dict[str, Any]) -> dict[str, Any]:
    """One exported line for a chat sample from the rehearsal buffer (chatml keeps every turn;
    alpaca and completion render the turns before the last answer into the prompt)."""
    if fmt is OutputFormat.CHATML:
        return sample
    messages = sample["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return format_pair(fmt, *chat_pair(sample))
    return format_pair(fmt, render_prompt(messages[:last]), messages[last]["content"])


def val_path_for(path: Path) -> Path:
    """``runs/x.jsonl`` -> ``runs/x.val.jsonl``."""
    return path.with_name(path.stem + ".val" + (path.suffix or ".jsonl"))


class ShuffleWriter:
    """Spreads lines over bucket files at random; :meth:`finish` writes them shuffled.

    Args:
        tmpdir: Directory for the bucket files (removed by the caller).
        expected_lines: Upper bound of the lines to come (sets the bucket count).
        rng: Seeded random source (the same lines in the same order give the same output).
    """

    def __init__(self, tmpdir: Path, expected_lines: int, rng: random.Random) -> None:
        self.n_buckets = max(1, min(256, -(-expected_lines // BUCKET_LINES)))
        self.rng = rng
        self.n_lines = 0
        self._paths = [tmpdir / f"bucket-{i:03d}.jsonl" for i in range(self.n_buckets)]
        self._files: list[IO[str]] = [p.open("w", encoding="utf-8") for p in self._paths]

    def write(self, row: dict[str, Any]) -> None:
        """Add one JSON object as a line (see :func:`~afs_continuous._io.jsonl_line`)."""
        self.write_line(jsonl_line(row))

    def write_line(self, line: str) -> None:
        """Add one line (ending in a newline)."""
        fh = self._files[self.rng.randrange(self.n_buckets)] if self.n_buckets > 1 else self._files[0]
        fh.write(line)
        self.n_lines += 1

    def close(self) -> None:
        for fh in self._files:
            fh.close()

    def _shuffled(self) -> Iterator[str]:
        self.close()
        for path in self._paths:
            with path.open("r", encoding="utf-8") as fh:
                lines = fh.readlines()
            path.unlink()
            self.rng.shuffle(lines)
            yield from lines

    def finish(self, train_path: Path, val_path: Path | None, n_val: int) -> None:
        """Write the first ``n_val`` shuffled lines to ``val_path``, the rest to ``train_path`` (atomically)."""
        with _AtomicFile(train_path) as train, _AtomicFile(val_path) as val:
            for i, line in enumerate(self._shuffled()):
                (val if i < n_val else train).write(line)


class _AtomicFile:
    """A text file written to a temporary name, fsynced and renamed on success (None: discard writes)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: IO[str] | None = None
        self._tmp: str | None = None

    def __enter__(self) -> "_AtomicFile":
        if self.path is not None:
            make_private_dirs(self.path.parent)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.stem}-", suffix=".tmp", dir=self.path.parent)
            self._fh = os.fdopen(fd, "w", encoding="utf-8")
        return self

    def write(self, text: str) -> None:
        if self._fh is not None:
            self._fh.write(text)

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self._fh is None or self._tmp is None or self.path is None:
            return
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


def _parquet_schema(fmt: OutputFormat) -> Any:
    import pyarrow as pa

    if fmt is OutputFormat.ALPACA:
        return pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())])
    if fmt is OutputFormat.COMPLETION:
        return pa.schema([("prompt", pa.string()), ("completion", pa.string())])
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([("messages", pa.list_(message))])


def write_parquet(jsonl_path: Path, parquet_path: Path, fmt: OutputFormat, *, chunk_rows: int = 10_000) -> int:
    """Convert an exported JSONL file to parquet in chunks (memory: one chunk); returns the row count.

    Raises:
        ImportError: pyarrow is not installed (``pip install 'afs-continuous[train]'``).
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - the config check catches this first
        raise ImportError("export_parquet needs pyarrow: pip install 'afs-continuous[train]' (or pip install pyarrow)") from exc
    schema = _parquet_schema(fmt)
    fd, tmp = tempfile.mkstemp(prefix=f".{parquet_path.stem}-", suffix=".tmp", dir=parquet_path.parent)
    os.close(fd)
    n = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer, jsonl_path.open("r", encoding="utf-8") as fh:
            rows: list[dict[str, Any]] = []
            for line in fh:
                rows.append(json.loads(line))
                if len(rows) >= chunk_rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    n += len(rows)
                    rows = []
            if rows or n == 0:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                n += len(rows)
        os.replace(tmp, parquet_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return n
