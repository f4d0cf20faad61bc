"""The chat service that ``bench_service.py`` runs under gunicorn (one module, two variants).

A trivial FastAPI handler: ``POST /chat`` answers a prompt with a real AlpacaEval answer (the
"model"), ``POST /feedback`` takes the user's vote on an earlier answer (a separate request, which
the kernel may hand to any worker). The variant is chosen by ``AFS_BENCH_MODE``:

- ``plain``: the service alone (the record id it returns is a fresh uuid4; feedback is accepted and
  discarded). It never imports afs_continuous.
- ``sdk``: the same handler plus the SDK's calls: ``loop.route(unit_id=user)``,
  ``loop.log_usage(query=..., response=..., model=version, ...)`` (default ``async`` durability)
  and ``loop.record_feedback(id, vote, comment)`` in the feedback request.

Each worker writes ``worker-<pid>.json`` into ``AFS_BENCH_OUT`` when it shuts down (after the
loop's writer has flushed): what it handed to the SDK (records, feedback events) and what the
writer committed or dropped, so that the benchmark can compare the store with what was accepted.

Environment: ``AFS_BENCH_MODE``, ``AFS_BENCH_DATA`` (a ``.jsonl.gz`` of AlpacaEval rows),
``AFS_BENCH_DB`` (the store's SQLAlchemy URL), ``AFS_BENCH_OUT`` (a folder),
``AFS_BENCH_REDACT`` (optional: ``module:function`` of a redactor, set as ``logger_config.redact_fn``),
``AFS_BENCH_NO_ROLLUPS`` (optional, diagnostic: the writer skips the hourly rollups, as
``bench_logging.py`` does to measure their cost; such a store reports wrong usage figures),
``AFS_BENCH_DIAG`` (optional, diagnostic: ``importonly`` opens the loop but the handlers make no SDK
call, i.e. what importing and opening it costs; ``nowriter`` makes the calls but discards what they
queue, i.e. what the calls cost without the writer; the zero-loss check then fails, as it should).
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from pydantic import BaseModel

MODE = os.environ.get("AFS_BENCH_MODE", "plain")
OUT = os.environ.get("AFS_BENCH_OUT", ".")

with gzip.open(os.environ["AFS_BENCH_DATA"], "rt", encoding="utf-8") as _fh:
    _ROWS = [json.loads(line) for line in _fh if line.strip()]
ANSWERS = [r["output"] for r in _ROWS]
QUALITY = [float(r["preference"]) - 1.0 for r in _ROWS]
del _ROWS

loop: Any = None
_DIAG = os.environ.get("AFS_BENCH_DIAG", "")
_gc = {"s": 0.0, "n": [0, 0, 0], "t0": 0.0}  # time in the garbage collector (measured, not tuned)


def _gc_timer(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc["t0"] = time.perf_counter()
    else:
        _gc["s"] += time.perf_counter() - _gc["t0"]
        _gc["n"][info["generation"]] += 1


gc.callbacks.append(_gc_timer)


class ChatRequest(BaseModel):
    user: str
    prompt: str
    i: int  # which AlpacaEval answer the "model" gives


class FeedbackRequest(BaseModel):
    id: str
    feedback: int
    comment: str


def _open_loop() -> Any:
    from afs_continuous import ContinuousLearningLoop, LoopConfig

    logger_config: dict[str, Any] = {}
    if os.environ.get("AFS_BENCH_REDACT"):
        logger_config["redact_fn"] = os.environ["AFS_BENCH_REDACT"]
    config = LoopConfig(database_url=os.environ["AFS_BENCH_DB"], data_dir=OUT, logger_config=logger_config)
    loop = ContinuousLearningLoop(config)
    if os.environ.get("AFS_BENCH_NO_ROLLUPS"):  # diagnostic only: what the hourly rollups cost the writer
        loop.logger._rollups = False
    if os.environ.get("AFS_BENCH_DIAG") == "nowriter":
        loop.logger._enqueue = lambda item: None
    return loop


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global loop
    if MODE == "sdk":
        loop = _open_loop()
    yield
    report: dict[str, Any] = {"pid": os.getpid(), "mode": MODE, "gc_s": _gc["s"], "gc_collections": _gc["n"],
                              "gc_objects": len(gc.get_objects())}
    if loop is not None:
        loop.close()
        report.update(loop.logger.writer_stats())
    with open(os.path.join(OUT, f"worker-{os.getpid()}.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh)


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, Any]:
    return {"ok": True, "pid": os.getpid()}


@app.post("/chat")
async def chat(req: ChatRequest) -> dict[str, Any]:
    start = time.perf_counter()
    k = req.i % len(ANSWERS)
    answer = ANSWERS[k]  # the "model": a real answer to this prompt
    if loop is None or _DIAG == "importonly":
        return {"id": uuid.uuid4().hex, "model": "base", "response": answer}
    version = loop.route(unit_id=req.user)
    record_id = loop.log_usage(query=req.prompt, response=answer, model=version, unit_id=req.user,
                               latency_ms=(time.perf_counter() - start) * 1000.0, quality_score=QUALITY[k])
    return {"id": record_id, "model": version.name, "response": answer}


@app.post("/feedback")
async def feedback(req: FeedbackRequest) -> dict[str, Any]:
    if loop is not None and _DIAG != "importonly":
        loop.record_feedback(req.id, req.feedback, req.comment)
    return {"ack": req.comment.split(":", 1)[0]}
