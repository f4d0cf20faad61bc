"""TrainingDataGenerator: from logged traffic to a training set, streamed.

Stages, each counted in :attr:`GenerationResult.counts`:

1. ``candidates``: records created after the data watermark (the newest
   record consumed by the last successful run) and not in the future;
2. ``after_quality``: ``quality_score >= min_quality_score``, not truncated, non-empty;
3. ``after_feedback``: latest feedback >= ``min_user_feedback`` (positive only by default);
4. ``after_dedup``: one sample per normalised content (whitespace and case folded): the (query,
   response) pair, or for a record logged with ``messages=`` the whole conversation and the response;
5. ``after_exclude_trained``: content already used by an earlier successful run removed;
6. ``after_near_dedup``: near duplicates removed (MinHash LSH, estimated Jaccard
   similarity >= ``near_dedup_threshold`` on word n-gram shingles of every turn but the system
   prompt, and the response), within the
   new data (the better-scored sample survives), against the rehearsal buffer
   when it is mixed in, and against the newest ``near_dedup_history_size``
   samples of earlier successful runs;
7. ``new_samples``: after the ``max_samples`` cap (highest quality first);
8. ``rehearsal_samples``: drawn from the rehearsal buffer so that they make up
   ``rehearsal_fraction`` of the final set;
9. ``total``: training plus validation lines written; ``validation_samples``:
   the lines of ``<name>.val.jsonl`` (``validation_fraction`` of the shuffled set).

Memory does not grow with the store, only with the eligible records of one
run's window, by about 210 bytes each. Stages 1-3 run in SQL: the records are
counted, then streamed in batches of 1,000 rows, best quality first (SQLite's
sorter spills to disk, not to Python). Content hashes are taken from the store
where the daemon's trigger has filled them and computed otherwise (generation
never rewrites the usage table). Exact dedup keeps 8 bytes per distinct content
(:class:`~afs_continuous._dedup.ExactDuplicateFilter`; first occurrence in
quality order wins, as a SQL ``DISTINCT`` could not say which row survives),
the trained-content check is one indexed ``IN`` query per batch, and the
near-duplicate index holds about 200 bytes per kept sample with the default 64
permutations (:mod:`afs_continuous._dedup`). Each accepted sample is written
at once to a bucket file of a seeded two-pass external shuffle (a uniformly
random order of new and rehearsal samples, with one bucket of about 20,000
lines in memory at the end) and to a spool file of ``(record id, content hash,
query, response)`` that the loop reads back after training succeeds
(:meth:`GenerationResult.iter_trained`, :meth:`GenerationResult.iter_new_samples`).
At a million records (about 220,000 eligible) a run takes about 10 s and
240 MB peak RSS (``benchmarks/bench_generator.py``).

Near duplicates of history are checked against a bounded window, the newest
``near_dedup_history_size`` trained samples (100,000 by default), whose texts
are still in the store and are re-hashed each run (about 5 us each), rather
than against all of history; exact duplicates of any earlier run are excluded
by content hash regardless. Persisting signatures would make a run cheaper but
add a table and a migration; re-hashing a bounded window keeps one source of
truth and follows configuration changes (threshold, permutations) at once.

Everything is deterministic: SQL ordering with ties broken by creation time
and id, fixed MinHash seeds and ``seed`` for the shuffle, rehearsal draw and
validation split, so a rerun gives the same survivors and the same files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from ._io import make_private_dirs
from ._conversation import conversation_hash, dedup_prompt
from ._export import (ShuffleWriter, chat_pair, encoded_line, format_chat, format_conversation, format_pair, json_str,
                      val_path_for, write_parquet)
from ._io import jsonl_line
from ._queries import T, U, feedback_condition, quality_condition, window_condition
from .clock import Clock, utc_now
from .config import DataGeneratorConfig, OutputFormat
from .rehearsal import RehearsalBuffer
from .store import Store

if TYPE_CHECKING:
    from ._dedup import NearDuplicateFilter

__all__ = ["TrainingDataGenerator", "GenerationResult"]

log = logging.getLogger("afs_continuous")

_BATCH = 1000  # rows per streamed batch (and per MinHash pass)
_STALE_TMP_S = 24 * 3600  # leftover spool directories of killed runs are removed after this
_TMP_PREFIX = ".gen-"


@dataclass
class GenerationResult:
    """A generated training set.

    The new samples are not held in memory: they are in a spool file that
    lives until :meth:`close` (or until the result is garbage collected).

    Attributes:
        output_path: The training JSONL, or None when nothing was written.
        counts: Samples surviving each stage (see the module docstring).
        source_start / source_end: Creation times of the oldest and newest record used.
        until: The upper bound of the window (becomes the data watermark on success).
        validation_path: ``<name>.val.jsonl`` when ``validation_fraction`` gave at least one line.
        parquet_path: ``<name>.parquet`` when ``export_parquet`` is set.
        output_format: The line format of the files.
    """

    output_path: Path | None
    counts: dict[str, int]
    source_start: datetime | None = None
    source_end: datetime | None = None
    until: datetime | None = None
    validation_path: Path | None = None
    parquet_path: Path | None = None
    output_format: OutputFormat = OutputFormat.CHATML
    system_prompt: str | None = field(default=None, repr=False)
    _spool: Path | None = field(default=None, repr=False)
    _finalizer: Any = field(default=None, repr=False)

    @property
    def n_new(self) -> int:
        return self.counts.get("new_samples", 0)

    def _spool_rows(self) -> Iterator[list[str]]:
        if self._spool is None:
            return
        if not self._spool.exists():
            raise RuntimeError("this GenerationResult was closed; its new samples are gone")
        with self._spool.open("r", encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)

    def iter_trained(self) -> Iterator[tuple[str, str]]:
        """Stream ``(record_id, content_hash)`` of the new samples, best quality first."""
        for row in self._spool_rows():
            yield row[0], row[1]

    def iter_new_samples(self) -> Iterator[dict[str, Any]]:
        """Stream the new samples in chat format (``{"messages": [...]}``, whole conversations), for the rehearsal buffer."""
        for row in self._spool_rows():
            _rid, _h, query, response = row[:4]
            messages = row[4] if len(row) > 4 else None
            if messages is None:
                yield format_pair(OutputFormat.CHATML, query, response, self.system_prompt)
            else:
                yield format_conversation(OutputFormat.CHATML, messages, response, self.system_prompt)

    @property
    def record_ids(self) -> list[str]:
        """Ids of the usage records used as new samples (a list: O(n) memory; prefer :meth:`iter_trained`)."""
        return [rid for rid, _ in self.iter_trained()]

    @property
    def content_hashes(self) -> list[str]:
        """Content hashes parallel to :attr:`record_ids` (a list: O(n) memory)."""
        return [h for _, h in self.iter_trained()]

    @property
    def new_samples(self) -> list[dict[str, Any]]:
        """The new samples in chat format (a list: O(n) memory; prefer :meth:`iter_new_samples`)."""
        return list(self.iter_new_samples())

    def to_hf_dataset(self, split: str = "train", *, cache_dir: str | os.PathLike[str] | None = None) -> Any:
        """The training (``split="train"``) or validation set as a Hugging Face ``datasets.Dataset``.

        Memory-mapped Arrow, read from the parquet file when one was written,
        else from the JSONL. Needs the ``train`` extra.

        Args:
            split: "train" or "validation".
            cache_dir: Where ``datasets`` keeps its Arrow cache (default: its own, ``HF_DATASETS_CACHE``).

        Raises:
            ImportError: ``datasets`` is not installed.
            ValueError: ``split`` is not "train" or "validation", or that file was not written.
        """
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        try:
            import datasets
        except ImportError as exc:
            raise ImportError("to_hf_dataset() needs the datasets package: pip install 'afs-continuous[train]'") from exc
        path = self.output_path if split == "train" else self.validation_path
        if path is None:
            raise ValueError(f"no {split} file was written (counts: {self.counts})")
        parquet = self.parquet_path if split == "train" else _val_parquet(self.parquet_path)
        cache = None if cache_dir is None else str(cache_dir)
        if parquet is not None and parquet.exists():
            return datasets.Dataset.from_parquet(str(parquet), cache_dir=cache)
        return datasets.Dataset.from_json(str(path), cache_dir=cache)

    def files(self) -> list[Path]:
        """Every file written for the trainer (training, validation, parquet)."""
        paths = [self.output_path, self.validation_path, self.parquet_path, _val_parquet(self.parquet_path)]
        return [p for p in paths if p is not None]

    def close(self, *, delete_files: bool = False) -> None:
        """Remove the spool of new samples (and with ``delete_files`` the files of :meth:`files`). Idempotent."""
        if self._finalizer is not None:
            self._finalizer()
        if delete_files:
            for path in self.files():
                path.unlink(missing_ok=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_path": str(self.output_path) if self.output_path else None,
            "validation_path": str(self.validation_path) if self.validation_path else None,
            "parquet_path": str(self.parquet_path) if self.parquet_path else None,
            "output_format": self.output_format.value,
            "counts": self.counts,
            "source_start": self.source_start.isoformat() if self.source_start else None,
            "source_end": self.source_end.isoformat() if self.source_end else None,
        }


class TrainingDataGenerator:
    """Builds training sets from the store, streaming (see the module docstring).

    Args:
        store: The store.
        config: Filters, deduplication, rehearsal and export settings.
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

    def generate(self, *, after: datetime | None, until: datetime | None = None,
                 output_path: str | os.PathLike[str] | None = None, name: str = "training",
                 progress: bool | None = None) -> GenerationResult:
        """Build one training set from the records created in ``(after, until]``.

        Args:
            after: Exclusive lower bound (the data watermark); None for all records.
            until: Inclusive upper bound (default: now). Records stamped later are ignored.
            output_path: Where to write the JSONL (default ``<data_dir>/runs/<name>.jsonl``).
            name: File stem for the default output path.
            progress: Show a progress bar (tqdm) on stderr; None: only when stderr is a
                terminal and tqdm is installed.

        Returns:
            The result with per-stage counts. When fewer than ``min_samples`` new
            samples survive, nothing is written and ``output_path`` is None.
            Call :meth:`GenerationResult.close` when done with it.
        """
        cfg = self.config
        until = self.clock() if until is None else until
        path = Path(output_path) if output_path is not None else self.data_dir / "runs" / f"{name}.jsonl"
        make_private_dirs(path.parent)  # user traffic: owner only (files are created 0600)
        _remove_stale_tmp(path.parent)
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=path.parent))
        result = GenerationResult(output_path=None, counts={}, until=until, output_format=cfg.output_format,
                                  system_prompt=cfg.system_prompt, _spool=tmp / "new.jsonl")
        result._finalizer = weakref.finalize(result, shutil.rmtree, str(tmp), True)
        try:
            self._generate(result, after, until, path, tmp, progress)
        except BaseException:
            result.close()
            raise
        log.info("training data %s in %.1f s: %s", path.name, time.perf_counter() - t0,
                 ", ".join(f"{k}={v}" for k, v in result.counts.items()))
        return result

    # ---- stages ----------------------------------------------------------------------------

    def _generate(self, result: GenerationResult, after: datetime | None, until: datetime, path: Path, tmp: Path,
                  progress: bool | None) -> None:
        cfg = self.config
        counts = result.counts
        mix = cfg.include_existing_data and cfg.rehearsal_fraction > 0
        rng = random.Random(f"{cfg.seed}:shuffle")
        with self.store.read() as conn:
            counts.update(_stage_counts(conn, cfg, after, until))
            bound = counts["after_quality"] if cfg.max_samples is None else min(counts["after_quality"], cfg.max_samples)
            n_mix_max = 0
            if mix:
                n_mix_max = min(cfg.rehearsal_buffer_size, round(bound * cfg.rehearsal_fraction / (1 - cfg.rehearsal_fraction)))
            writer = ShuffleWriter(tmp, bound + n_mix_max, rng)
            try:
                near = self._near_dup_filter(conn, mix)
                self._stream(conn, result, after, until, near, writer, progress)
            except BaseException:
                writer.close()
                raise
        n_new = counts["new_samples"]
        rehearsal: list[dict[str, Any]] = []
        if mix and n_new:
            want = round(n_new * cfg.rehearsal_fraction / (1.0 - cfg.rehearsal_fraction))
            rehearsal = self.rehearsal_buffer.sample(want, random.Random(cfg.seed))
        counts["rehearsal_samples"] = len(rehearsal)
        if n_new < cfg.min_samples:
            writer.close()
            counts["total"] = counts["validation_samples"] = 0
            return
        for sample in rehearsal:
            writer.write(format_chat(cfg.output_format, sample))
        total = writer.n_lines
        n_val = min(int(total * cfg.validation_fraction), total - 1)
        val_path = val_path_for(path) if n_val > 0 else None
        writer.finish(path, val_path, n_val)
        counts["total"] = total
        counts["validation_samples"] = n_val
        result.output_path = path
        result.validation_path = val_path
        if cfg.export_parquet:
            parquet = path.with_suffix(".parquet")
            write_parquet(path, parquet, cfg.output_format)
            if val_path is not None:
                write_parquet(val_path, _val_parquet(parquet), cfg.output_format)  # type: ignore[arg-type]
            result.parquet_path = parquet

    def _stream(self, conn: Connection, result: GenerationResult, after: datetime | None, until: datetime,
                near: NearDuplicateFilter | None, writer: ShuffleWriter, progress: bool | None) -> None:
        """Stages 3-7: stream the eligible records best first; exact dedup, trained check, near-dedup, cap, write."""
        from ._dedup import ExactDuplicateFilter

        cfg = self.config
        counts = result.counts
        fmt, system = cfg.output_format, cfg.system_prompt
        exact = ExactDuplicateFilter() if cfg.deduplicate else None
        any_trained = conn.execute(select(T.c.record_id).limit(1)).first() is not None
        n_feedback = n_distinct = n_untrained = n_near = n_new = 0
        first: datetime | None = None
        last: datetime | None = None
        bar = _progress_bar(progress, counts["after_quality"])
        assert result._spool is not None
        try:
            with result._spool.open("w", encoding="utf-8") as spool:
                rows = conn.execution_options(yield_per=_BATCH).execute(_eligible_stream(cfg, after, until))
                for batch in rows.partitions(_BATCH):
                    if bar is not None:
                        bar.update(len(batch))
                    batch = [r for r in batch if r[1].strip() and r[2].strip()]  # SQL already drops blanks
                    n_feedback += len(batch)
                    hashes = [h or conversation_hash(q, r, mj) for _id, q, r, h, _c, mj in batch]
                    idx = list(range(len(batch))) if exact is None else exact.first_seen(hashes).nonzero()[0].tolist()
                    n_distinct += len(idx)
                    if any_trained and idx:
                        trained = _trained_among(conn, {hashes[i] for i in idx})
                        idx = [i for i in idx if hashes[i] not in trained]
                    n_untrained += len(idx)
                    if near is not None and idx:
                        keep = near.keep(_dedup_pair(batch[i][1], batch[i][2], batch[i][5]) for i in idx)
                        idx = [i for i, k in zip(idx, keep.tolist()) if k]
                    n_near += len(idx)
                    for i in idx:
                        if cfg.max_samples is not None and n_new >= cfg.max_samples:
                            break
                        rid, query, response, _h, created, messages_json = batch[i]
                        n_new += 1
                        qj, rj = json_str(query), json_str(response)  # encoded once for both files
                        head = "[" + json_str(rid) + ", " + json_str(hashes[i]) + ", " + qj + ", " + rj
                        if messages_json is None:
                            spool.write(head + "]\n")
                            writer.write_line(encoded_line(fmt, qj, rj, system))
                        else:  # a conversation: the whole of it, in both files
                            messages = json.loads(messages_json)
                            spool.write(head + ", " + jsonl_line(messages)[:-1] + "]\n")
                            writer.write_line(jsonl_line(format_conversation(fmt, messages, response, system)))
                        first = created if first is None or created < first else first
                        last = created if last is None or created > last else last
        finally:
            if bar is not None:
                bar.total = bar.n
                bar.close()
        counts["after_feedback"] = n_feedback
        counts["after_dedup"] = n_distinct
        counts["after_exclude_trained"] = n_untrained
        counts["after_near_dedup"] = n_near
        counts["new_samples"] = n_new
        result.source_start, result.source_end = first, last

    def _near_dup_filter(self, conn: Connection, mix: bool) -> NearDuplicateFilter | None:
        """The near-duplicate filter preloaded with recent history and the rehearsal buffer; None when disabled."""
        cfg = self.config
        if cfg.near_dedup_threshold is None:
            return None
        from ._dedup import NearDuplicateFilter

        near = NearDuplicateFilter(cfg.near_dedup_threshold, cfg.near_dedup_num_perm, cfg.near_dedup_ngram,
                                   capacity=16_384)
        pairs: list[tuple[str, str]] = []
        if cfg.near_dedup_history_size > 0:
            stmt = (select(U.c.query, U.c.response, U.c.messages_json).select_from(T.join(U, U.c.id == T.c.record_id))
                    .order_by(T.c.run_id.desc(), T.c.record_id).limit(cfg.near_dedup_history_size))
            for query, response, messages_json in conn.execution_options(yield_per=_BATCH).execute(stmt):
                pairs.append(_dedup_pair(query, response, messages_json))
                if len(pairs) >= _BATCH:
                    near.add(pairs)
                    pairs.clear()
        if mix:
            for sample in self.rehearsal_buffer.iter_samples():
                pairs.append(chat_pair(sample))
                if len(pairs) >= _BATCH:
                    near.add(pairs)
                    pairs.clear()
        near.add(pairs)
        return near

    def mark_trained(self, result: GenerationResult, run_id: int, *, conn: Connection, batch: int = 5000) -> int:
        """Record the result's new samples as used by ``run_id`` (``training_samples``), in batches.

        Call inside the transaction that marks the run successful; returns the number of rows.
        """
        rows: list[dict[str, Any]] = []
        n = 0
        for rid, chash in result.iter_trained():
            rows.append({"record_id": rid, "run_id": run_id, "content_hash": chash})
            if len(rows) >= batch:
                conn.execute(insert(T), rows)
                n += len(rows)
                rows = []
        if rows:
            conn.execute(insert(T), rows)
            n += len(rows)
        return n


def _quality_first(cfg: DataGeneratorConfig) -> list[Any]:
    """The quality stage with the score test first: SQLite evaluates AND terms in order, and the
    score drops most records before the text is read for the blank checks."""
    first = [] if cfg.min_quality_score is None else [U.c.quality_score >= cfg.min_quality_score]
    return [*first, *quality_condition(cfg)]


def _stage_counts(conn: Connection, cfg: DataGeneratorConfig, after: datetime | None, until: datetime) -> dict[str, int]:
    """Stages 1-2 in SQL (the later stages are counted while streaming)."""
    base = select(func.count()).select_from(U).where(*window_condition(after, until))
    return {"candidates": int(conn.execute(base).scalar_one()),
            "after_quality": int(conn.execute(base.where(*_quality_first(cfg))).scalar_one())}


def _eligible_stream(cfg: DataGeneratorConfig, after: datetime | None, until: datetime) -> Any:
    """Records passing stages 1-3, best quality first (ties: older first, then id)."""
    return (select(U.c.id, U.c.query, U.c.response, U.c.content_hash, U.c.created_at, U.c.messages_json)
            .where(*window_condition(after, until), *_quality_first(cfg), *feedback_condition(cfg))
            .order_by(U.c.quality_score.desc().nulls_last(), U.c.created_at, U.c.id))


def _dedup_pair(query: str, response: str, messages_json: str | None) -> tuple[str, str]:
    """What near-duplicate detection compares: (the prompt, the response); for a conversation the prompt is
    every turn but the system prompt (as :func:`~afs_continuous._export.chat_pair` reads rehearsal samples)."""
    return (query, response) if messages_json is None else (dedup_prompt(json.loads(messages_json)), response)


def _trained_among(conn: Connection, hashes: set[str]) -> set[str]:
    """The hashes among ``hashes`` that an earlier successful run trained on (one indexed IN query)."""
    stmt = select(T.c.content_hash).where(T.c.content_hash.in_(sorted(hashes))).distinct()
    return set(conn.execute(stmt).scalars())


def _val_parquet(parquet: Path | None) -> Path | None:
    return None if parquet is None else parquet.with_name(parquet.stem + ".val.parquet")


def _progress_bar(enabled: bool | None, total: int) -> Any:
    """A tqdm bar on stderr, or None when disabled, tqdm is missing, or (``enabled=None``) stderr is
    not a terminal; in that automatic mode the bar appears only once a run has taken a second."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="training data", unit="rec", delay=1.0 if enabled is None else 0.0,
                leave=False, file=sys.stderr)


def _remove_stale_tmp(folder: Path) -> None:
    """Remove spool directories left by killed runs (older than a day)."""
    cutoff = time.time() - _STALE_TMP_S
    for tmp in folder.glob(_TMP_PREFIX + "*"):
        try:
            if tmp.is_dir() and tmp.stat().st_mtime < cutoff:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass
