"""Rehearsal (replay) buffer against catastrophic forgetting.

A bounded JSONL file of earlier training samples. Each training set mixes in a
share of it, so the new adapter keeps seeing older data. After each successful
training run the run's new samples are offered to the buffer with reservoir
sampling (Vitter 1985, "Random Sampling with a Reservoir", Algorithm R): the
buffer stays at most ``max_size`` samples and is a uniform sample of every
sample ever offered. The count of samples offered so far is kept in the store
(``loop_state.rehearsal_n_seen``), so the reservoir stays uniform across
restarts.

Lines may be chat format (``{"messages": [...]}``) or alpaca format
(``{"instruction", "input"?, "output"}``); both are read as chat samples.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Iterable

from ._io import write_jsonl_atomic

__all__ = ["RehearsalBuffer", "to_chat_sample"]

log = logging.getLogger("afs_continuous")


def to_chat_sample(obj: Any) -> dict[str, Any] | None:
    """Convert one JSON object to ``{"messages": [...]}``, or None if unusable."""
    if not isinstance(obj, dict):
        return None
    messages = obj.get("messages")
    if isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    instruction, output = obj.get("instruction"), obj.get("output")
    if isinstance(instruction, str) and isinstance(output, str):
        extra = obj.get("input")
        prompt = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]}
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}
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

    def load(self) -> list[dict[str, Any]]:
        """Every usable sample in the file (malformed lines are skipped and counted in the log)."""
        if not self.path.exists():
            return []
        samples: list[dict[str, Any]] = []
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
                    samples.append(sample)
        if bad:
            log.warning("rehearsal buffer %s: skipped %d malformed lines", self.path, bad)
        return samples

    def __len__(self) -> int:
        return len(self.load())

    def sample(self, k: int, rng: random.Random) -> list[dict[str, Any]]:
        """Draw ``min(k, len(buffer))`` samples without replacement."""
        pool = self.load()
        return rng.sample(pool, min(max(k, 0), len(pool)))

    def add(self, samples: Iterable[dict[str, Any]], *, n_seen: int | None, rng: random.Random) -> int:
        """Offer ``samples`` to the reservoir and rewrite the file atomically.

        Args:
            samples: Chat-format samples from a successful training run.
            n_seen: Samples offered before (None: the current file size).
            rng: Random source (seeded for reproducibility).

        Returns:
            The new count of samples offered so far (persist it and pass it next time).
        """
        buffer = self.load()
        seen = len(buffer) if n_seen is None else max(n_seen, len(buffer))
        if len(buffer) > self.max_size:
            buffer = rng.sample(buffer, self.max_size)
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
