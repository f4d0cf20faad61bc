"""An OpenAI-compatible chat service in front of vLLM that learns from its traffic.

``POST /v1/chat/completions`` (plain JSON, or server-sent events with ``"stream": true``) is routed
by ``user`` to the champion or the challenger adapter, served by vLLM and logged with the whole
conversation; the answer carries ``record_id`` (a streamed answer: its last chunk). ``POST
/feedback`` ``{"record_id": ..., "feedback": 1 | -1, "comment": "..."}`` records the user's verdict.
The daemon (``afs-continuous-loop``) trains, deploys into vLLM and evaluates on the same store.

Run (vLLM started as in docs/serving.md; ``pip install "afs-continuous[openai]" fastapi uvicorn``)::

    VLLM_BASE_URL=http://127.0.0.1:8000 AFS_CONTINUOUS_DB_PATH=./data/usage.db \\
        uvicorn examples.serving_service:app --port 9000

Environment: ``VLLM_BASE_URL`` (the vLLM server; default http://127.0.0.1:8000), ``VLLM_API_KEY``
(vLLM's ``--api-key``, if any), ``AFS_CONTINUOUS_CONFIG`` (a config file, optional) and any
``AFS_CONTINUOUS_*`` key, e.g. ``AFS_CONTINUOUS_DB_PATH`` or ``AFS_CONTINUOUS_DATABASE_URL``
(the store the daemon uses). Any ``openai`` client can call it with ``base_url=http://HOST:9000/v1``.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import openai
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from afs_continuous import ContinuousLearningLoop
from afs_continuous.config import load_config
from afs_continuous.integrations.openai import AsyncOpenAI

VLLM_BASE_URL = os.environ.get("VLLM_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
_KWARGS = ("messages", "user", "stream", "stream_options")  # the rest goes to vLLM as it came

VLLM_API_KEY = os.environ.get("VLLM_API_KEY")
loop = ContinuousLearningLoop(load_config(os.environ.get("AFS_CONTINUOUS_CONFIG"), overrides={
    "serving": {"engine": "vllm", "base_urls": [VLLM_BASE_URL], "api_key": VLLM_API_KEY}}))
client = AsyncOpenAI(loop=loop, base_url=VLLM_BASE_URL + "/v1", api_key=VLLM_API_KEY or "EMPTY")


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await client.close()
    loop.close()  # flushes the logged calls


app = FastAPI(title="afs_continuous chat service", lifespan=lifespan)


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    body = await request.json()
    kwargs = {k: body.pop(k) for k in _KWARGS if k in body}
    extra = {k: v for k, v in body.items() if k != "model" and not k.startswith("afs_")}
    try:
        result = await client.chat.completions.create(**kwargs, extra_body=extra)
    except openai.APIStatusError as exc:  # vLLM's own error, passed on
        return JSONResponse(exc.body if isinstance(exc.body, dict) else {"error": {"message": exc.message}},
                            status_code=exc.status_code)
    except (TypeError, ValueError) as exc:
        raise HTTPException(400, str(exc)) from exc
    if not kwargs.get("stream"):
        return result.model_dump(exclude_unset=True) | {"record_id": result.record_id}

    async def events() -> AsyncIterator[str]:
        held = None  # one chunk behind: the last one carries the record id, known when the stream ended
        async with result:
            async for chunk in result:
                if held is not None:
                    yield f"data: {held.model_dump_json(exclude_unset=True)}\n\n"
                held = chunk
        if held is not None:
            held.record_id = result.record_id
            yield f"data: {held.model_dump_json(exclude_unset=True)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


class Feedback(BaseModel):
    record_id: str
    feedback: int
    comment: str | None = None


@app.post("/feedback")
def feedback(item: Feedback) -> dict[str, bool]:
    try:
        loop.record_feedback(item.record_id, item.feedback, item.comment)  # stored as an event, on any worker
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return {"recorded": True}
