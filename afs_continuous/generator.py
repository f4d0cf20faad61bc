"""TrainingDataGenerator: from logged traffic to a training set.

Stages, each counted in :attr:`GenerationResult.counts`:

1. ``candidates``: records created after the data watermark (the newest
   record consumed by the last successful run) and not in the future;
2. ``after_quality``: ``quality_score >= min_quality_score``, not truncated, non-empty;
3. ``after_feedback``: latest feedback >= ``min_user_feedback`` (positive only by default);
4. ``after_dedup``: one sample per normalised (query, response) (whitespace and case folded);
5. ``after_exclude_trained``: content already used by an earlier successful run removed;
6. ``new_samples``: after the ``max_samples`` cap (highest quality first);
7. ``rehearsal_samples``: drawn from the rehearsal buffer so that they make up
   ``rehearsal_fraction`` of the final set;
8. ``total``: written to the JSONL file, chat format ``{"messages": [...]}``.

Stages 1-3 run in SQL; the eligible rows are then streamed (never all
candidate rows in memory).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, case, distinct, func, select

from ._io import write_jsonl_atomic
from ._queries import U, backfill_content_hashes, eligible_query, feedback_condition, quality_condition, stage_counts, window_condition
from ._text import content_hash, normalize
from .clock import Clock, utc_now
from .config import DataGeneratorConfig
from .rehearsal import RehearsalBuffer
from .store import Store

__all__ = ["TrainingDataGenerator", "GenerationResult"]


@dataclass
class GenerationResult:
    """A generated training set.

    Attributes:
        output_path: The JSONL file, or None when nothing was written.
        counts: Samples surviving each stage (see the module docstring).
        record_ids: Ids of the usage records used as new samples.
        content_hashes: Their content hashes (parallel to ``record_ids``).
        new_samples: The new samples in chat format (for the rehearsal buffer).
        source_start / source_end: Creation times of the oldest and newest record used.
        until: The upper bound of the window (becomes the data watermark on success).
    """

    output_path: Path | None
    counts: dict[str, int]
    record_ids: list[str] = field(default_factory=list)
    content_hashes: list[str] = field(default_factory=list)
    new_samples: list[dict[str, Any]] = field(default_factory=list)
    source_start: datetime | None = None
    source_end: datetime | None = None
    until: datetime | None = None

    @property
    def n_new(self) -> int:
        return self.counts.get("new_samples", 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_path": str(self.output_path) if self.output_path else None,
            "counts": self.counts,
            "source_start": self.source_start.isoformat() if self.source_start else None,
            "source_end": self.source_end.isoformat() if self.source_end else None,
        }


class TrainingDataGenerator:
    """Builds training sets from the store.

    Args:
        store: The store.
        config: Filters, deduplication and rehearsal settings.
        data_dir: Where training sets (``runs/``) and the default rehearsal buffer live.
        clock: Callable returning the current UTC datetime.
    """

    def __init__(self, store: Store, config: DataGeneratorConfig, data_dir: str | os.PathLike[str], *,
                 clock: Clock = utc_now) -> None:
        self.store = store
        self.config = config
        self.data_dir = Path(data_dir).expanduser()
        self.clock = clock

    @property
    def rehearsal_buffer(self) -> RehearsalBuffer:
        """The rehearsal buffer (``existing_data_path`` or ``<data_dir>/rehearsal_buffer.jsonl``)."""
        path = self.config.existing_data_path or self.data_dir / "rehearsal_buffer.jsonl"
        return RehearsalBuffer(path, self.config.rehearsal_buffer_size)

    def _sample(self, query: str, response: str) -> dict[str, Any]:
        messages = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
        return {"messages": messages}

    def generate(self, *, after: datetime | None, until: datetime | None = None,
                 output_path: str | os.PathLike[str] | None = None, name: str = "training") -> GenerationResult:
        """Build one training set from the records created in ``(after, until]``.

        Args:
            after: Exclusive lower bound (the data watermark); None for all records.
            until: Inclusive upper bound (default: now). Records stamped later are ignored.
            output_path: Where to write the JSONL (default ``<data_dir>/runs/<name>.jsonl``).
            name: File stem for the default output path.

        Returns:
            The result with per-stage counts. When fewer than ``min_samples`` new
            samples survive, nothing is written and ``output_path`` is None.
        """
        cfg = self.config
        until = self.clock() if until is None else until
        with self.store.write() as conn:
            backfill_content_hashes(conn, cfg, after, until)
        with self.store.read() as conn:
            counts = stage_counts(conn, cfg, after, until)
            counts["after_dedup"] = _count_distinct(conn, cfg, after, until)
            stmt = eligible_query(cfg, after, until, U.c.id, U.c.query, U.c.response, U.c.quality_score,
                                  U.c.content_hash, U.c.created_at)
            stmt = stmt.order_by(U.c.quality_score.desc().nulls_last(), U.c.created_at, U.c.id)
            seen: set[str] = set()
            new: list[tuple[str, str, dict[str, Any], datetime]] = []
            n_eligible_distinct = 0
            for row in conn.execution_options(yield_per=1000).execute(stmt):
                rid, query, response, _q, chash, created = row
                if not normalize(query) or not normalize(response):
                    continue
                chash = chash or content_hash(query, response)  # committed after the backfill
                if cfg.deduplicate:
                    if chash in seen:
                        continue
                    seen.add(chash)
                n_eligible_distinct += 1
                if cfg.max_samples is None or len(new) < cfg.max_samples:
                    new.append((rid, chash, self._sample(query, response), created))
        counts["after_exclude_trained"] = n_eligible_distinct
        counts["new_samples"] = len(new)
        result = GenerationResult(output_path=None, counts=counts, until=until)
        rng = random.Random(cfg.seed)
        rehearsal: list[dict[str, Any]] = []
        if cfg.include_existing_data and new and cfg.rehearsal_fraction > 0:
            want = round(len(new) * cfg.rehearsal_fraction / (1.0 - cfg.rehearsal_fraction))
            rehearsal = self.rehearsal_buffer.sample(want, rng)
        counts["rehearsal_samples"] = len(rehearsal)
        counts["total"] = len(new) + len(rehearsal)
        result.record_ids = [n[0] for n in new]
        result.content_hashes = [n[1] for n in new]
        result.new_samples = [n[2] for n in new]
        if new:
            result.source_start = min(n[3] for n in new)
            result.source_end = max(n[3] for n in new)
        if len(new) < cfg.min_samples:
            counts["total"] = 0
            return result
        samples = result.new_samples + rehearsal
        rng.shuffle(samples)
        path = Path(output_path) if output_path is not None else self.data_dir / "runs" / f"{name}.jsonl"
        write_jsonl_atomic(path, samples)
        result.output_path = path
        return result


def _count_distinct(conn: Any, cfg: DataGeneratorConfig, after: datetime | None, until: datetime) -> int:
    """Distinct normalised contents among the records that pass quality and feedback (the dedup stage)."""
    unhashed = func.coalesce(func.sum(case((U.c.content_hash.is_(None), 1), else_=0)), 0)
    col = func.count(distinct(U.c.content_hash)) + unhashed if cfg.deduplicate else func.count()
    stmt = select(col).select_from(U).where(
        and_(*window_condition(after, until), *quality_condition(cfg), *feedback_condition(cfg))
    )
    return int(conn.execute(stmt).scalar_one())
