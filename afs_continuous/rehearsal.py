"""Rehearsal (replay) buffer against catastrophic forgetting.

A bounded JSONL file of earlier training samples. Each training set mixes in a
share of it, so the new adapter keeps seeing older data. After each successful
training run the run's new samples are offered to the buffer with reservoir
sampling (Vitter 1985, "Random Sampling with a Reservoir", Algorithm R): the
buffer stays at most ``max_size`` samples and is a uniform sample of every
sample ever offered. The count of samples offered so far is kept in the store
(``loop_state.rehearsal_n_seen``), so the reservoir stays uniform across
restarts.

Lines may be chat format (``{"messages": [...]}``), alpaca format
(``{"instruction", "input"?, "output"}``) or completion format
(``{"prompt", "completion"}``); all are read as chat samples. The file is
streamed: drawing, counting and adding keep at most ``max_size`` samples (or
the number drawn) in memory, and the offered samples may be any iterator.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Iterable, Iterator

from ._io import write_jsonl_atomic
from ._text import clean_text

__all__ = ["RehearsalBuffer", "to_chat_sample"]

log = logging.getLogger("afs_continuous")


def to_chat_sample(obj: Any) -> dict[str, Any] | None:
    """Convert one JSON object to ``{"messages": [...]}``, or None if unusable.

    Texts are made exportable (:func:`~afs_continuous._text.clean_text`: lone
    surrogates, which a JSON file may encode, and NUL become U+FFFD).
    """
    if not isinstance(obj, dict):
        return None
    messages = obj.get("messages")
    if isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        return {"messages": [{"role": m["role"], "content": clean_text(m["content"])} for m in messages]}
    instruction, output = obj.get("instruction"), obj.get("output")
    if isinstance(instruction, str) and isinstance(output, str):
        extra = obj.get("input")
        text = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        return {"messages": [{"role": "user", "content": clean_text(text)},
                             {"role": "assistant", "content": clean_text(output)}]}
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return {"messages": [{"role": "user", "content": clean_text(prompt)},
                             {"role": "assistant", "content": clean_text(completion)}]}
    return None


class RehearsalBuffer:
    """A bounded, reservoir-sampled JSONL buffer of training samples.

    Args:
        path: JSONL file (created on first :meth:`add`; a missing file is an empty buffer).
        max_size: Maximum number of samples kept (default 10,000, as in seed 002).

    Example:
        >>> import tempfile, os, random
        >>> buf = RehearsalBuffer(os.path.join(tempfile.mkdtemp(), "buf.jsonl"), max_size=3)
        >>> samples = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(10)]
        >>> n_seen = buf.add(samples, n_seen=0, rng=random.Random(0))
        >>> n_seen, len(buf.load())
        (10, 3)
    """

    def __init__(self, path: str | os.PathLike[str], max_size: int = 10_000) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.path = Path(path).expanduser()
        self.max_size = max_size

    def iter_samples(self) -> Iterator[dict[str, Any]]:
        """Stream every usable sample in the file (malformed lines are skipped and counted in the log)."""
        if not self.path.exists():
            return
        bad = 0
        with self.path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    sample = to_chat_sample(json.loads(line))
                except json.JSONDecodeError:
                    sample = None
                if sample is None:
                    bad += 1
                else:
                    yield sample
        if bad:
            log.warning("rehearsal buffer %s: skipped %d malformed lines", self.path, bad)

    def load(self) -> list[dict[str, Any]]:
        """Every usable sample in the file, as a list (at most ``max_size`` unless the file was written elsewhere)."""
        return list(self.iter_samples())

    def __len__(self) -> int:
        return sum(1 for _ in self.iter_samples())

    def sample(self, k: int, rng: random.Random) -> list[dict[str, Any]]:
        """Draw ``min(k, len(buffer))`` samples without replacement, streaming the file (memory O(k))."""
        return _reservoir(self.iter_samples(), max(k, 0), rng)[0]

    def add(self, samples: Iterable[dict[str, Any]], *, n_seen: int | None, rng: random.Random) -> int:
        """Offer ``samples`` (any iterable, consumed once) to the reservoir and rewrite the file atomically.

        Memory stays O(``max_size``) however many samples are offered or the
        file holds (a file larger than ``max_size``, written by hand, is first
        reduced to a uniform sample of ``max_size``).

        Args:
            samples: Chat-format samples from a successful training run.
            n_seen: Samples offered before (None: the current file size).
            rng: Random source (seeded for reproducibility).

        Returns:
            The new count of samples offered so far (persist it and pass it next time).
        """
        buffer, in_file = _reservoir(self.iter_samples(), self.max_size, rng)
        seen = in_file if n_seen is None else max(n_seen, in_file)
        for sample in samples:
            seen += 1
            if len(buffer) < self.max_size:
                buffer.append(sample)
            else:
                j = rng.randrange(seen)
                if j < self.max_size:
                    buffer[j] = sample
        self._write(buffer)
        return seen

    def _write(self, samples: list[dict[str, Any]]) -> None:
        write_jsonl_atomic(self.path, samples)


def _reservoir(items: Iterable[dict[str, Any]], k: int, rng: random.Random) -> tuple[list[dict[str, Any]], int]:
    """Algorithm R: a uniform sample of at most ``k`` items of a stream, and the stream's length."""
    kept: list[dict[str, Any]] = []
    n = 0
    for item in items:
        n += 1
        if len(kept) < k:
            kept.append(item)
        elif k:
            j = rng.randrange(n)
            if j < k:
                kept[j] = item
    return kept, n
