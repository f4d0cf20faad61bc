"""The OpenAI integration's pieces that need no server: argument separation, stream accumulation on
real ``openai`` types, the not-found decision, and the lazy import. The calls themselves are tested
against a real vLLM server in tests/serving/test_openai_integration.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from openai.types.chat import ChatCompletionChunk  # noqa: E402

from afs_continuous.integrations._openai_core import Call, StreamAccumulator, split_kwargs  # noqa: E402
from afs_continuous.integrations.openai import LoggedStream, OpenAI  # noqa: E402

ROOT = Path(__file__).parents[2]


def _chunk(content: str | None = None, finish: str | None = None, *, index: int = 0, usage: Any = None,
           no_choices: bool = False) -> ChatCompletionChunk:
    choices = [] if no_choices else [{"index": index, "delta": {"content": content} if content is not None else {},
                                      "finish_reason": finish}]
    return ChatCompletionChunk.model_validate({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                                               "model": "base-ft1", "choices": choices, "usage": usage})


def test_our_keyword_arguments_are_separated_from_openais() -> None:
    call, ours = split_kwargs({"messages": [], "user": "u1", "max_tokens": 5, "afs_metadata": {"page": "faq"},
                               "afs_quality_score": 0.5, "afs_log": False})
    assert call == {"messages": [], "user": "u1", "max_tokens": 5}
    assert ours == {"metadata": {"page": "faq"}, "quality_score": 0.5, "log": False}
    assert split_kwargs({"messages": []})[1] == {"metadata": None, "quality_score": None, "log": True}
    with pytest.raises(TypeError, match=r"unknown keyword argument 'afs_tags'; afs_continuous takes"):
        split_kwargs({"afs_tags": ["x"]})
    with pytest.raises(ValueError, match=r"quality_score"):
        split_kwargs({"afs_quality_score": 1.5})
    with pytest.raises(ValueError, match=r"metadata"):
        split_kwargs({"afs_metadata": {"x": float("nan")}})
    with pytest.raises(ValueError, match=r"afs_log must be True or False, got 'no'"):
        split_kwargs({"afs_log": "no"})


def test_stream_accumulation_joins_choice_zero_and_keeps_the_usage() -> None:
    acc = StreamAccumulator(hide_usage_chunk=True)
    shown = [acc.add(c) for c in (_chunk(""), _chunk("Hel"), _chunk("other", index=1), _chunk("lo"),
                                  _chunk(finish="stop"),
                                  _chunk(no_choices=True, usage={"prompt_tokens": 7, "completion_tokens": 3,
                                                                 "total_tokens": 10}))]
    assert shown == [True, True, True, True, True, False]  # the usage-only chunk we asked for is hidden
    assert acc.text == "Hello" and acc.complete and acc.finish_reason == "stop"
    assert (acc.usage.prompt_tokens, acc.usage.completion_tokens) == (7, 3)
    assert acc.model == "base-ft1"
    cut = StreamAccumulator()
    cut.add(_chunk("Hel"))
    assert not cut.complete  # no finish_reason: the answer was cut off
    caller_asked = StreamAccumulator(hide_usage_chunk=False)
    assert caller_asked.add(_chunk(no_choices=True, usage={"prompt_tokens": 1, "completion_tokens": 1,
                                                           "total_tokens": 2}))


def _sse(chunks: list[ChatCompletionChunk], done: bool = True) -> bytes:
    body = "".join(f"data: {c.model_dump_json()}\n\n" for c in chunks)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


def _stream(client: Any, body: bytes) -> Any:
    """A real ``openai.Stream`` parsing a server-sent-events body (as received from a server)."""
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    response = httpx.Response(200, content=body, request=request, headers={"content-type": "text/event-stream"})
    return openai.Stream(cast_to=ChatCompletionChunk, response=response, client=client)


def test_a_stream_is_logged_only_when_it_ends_complete(make_loop: Any, clock: Any, tmp_path: Path) -> None:
    loop = make_loop(tmp_path, clock, logger_config={"durability": "sync"})
    client = OpenAI(loop=loop, base_url="http://127.0.0.1:1/v1", api_key="x")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    full = [_chunk("Hel"), _chunk("lo", "stop"), _chunk(no_choices=True, usage=usage)]

    def make(body: bytes) -> LoggedStream:
        call = Call(loop, {"messages": messages, "user": "u1", "stream": True})
        assert call.kwargs["stream_options"] == {"include_usage": True} and call.kwargs["model"] == "base"
        return LoggedStream(_stream(client, body), call)

    stream = make(_sse(full))
    with stream:
        seen = list(stream)
    assert len(seen) == 2 and all(c.choices for c in seen)
    def logged() -> list[Any]:
        with loop.store.read() as conn:
            return conn.execute(text("SELECT id, response, messages_json, prompt_tokens, completion_tokens, unit_id "
                                     "FROM usage_records")).all()

    assert [(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5]) for r in logged()] == [
        (stream.record_id, "Hello", messages, 7, 2, "u1")]
    broken = make(_sse(full[:1], done=False))  # the connection ended before the finish_reason
    assert [c.choices[0].delta.content for c in broken] == ["Hel"]
    assert broken.record_id is None
    early = make(_sse(full))
    next(early)
    early.close()  # the caller stopped reading
    assert early.record_id is None
    assert len(logged()) == 1


def test_a_missing_model_is_told_from_other_not_found_answers(make_loop: Any, clock: Any, tmp_path: Path) -> None:
    loop = make_loop(tmp_path, clock)
    call = Call(loop, {"messages": [{"role": "user", "content": "Hi"}], "model": "gpt-x"})
    assert call.served == "base" and call.kwargs["model"] == "base"  # the caller's model= is replaced

    def not_found(body: dict[str, Any]) -> Any:
        request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
        return openai.NotFoundError("Error code: 404", response=httpx.Response(404, json=body, request=request),
                                    body=body)

    vllm = {"error": {"message": "The model `base` does not exist.", "type": "NotFoundError", "code": 404}}
    assert call.is_model_missing(not_found(vllm))
    assert not call.is_model_missing(not_found({"detail": "Not Found"}))  # a wrong URL path is not a fallback
    assert not call.is_model_missing(openai.BadRequestError(
        "bad", response=httpx.Response(400, request=httpx.Request("POST", "http://x")), body=None))
    assert not call.fall_back(not_found(vllm), loop.registry.champion())  # the champion itself: nothing else


def test_the_client_needs_a_loop_and_copies_keep_it(make_loop: Any, clock: Any, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"loop= must be the ContinuousLearningLoop"):
        OpenAI(base_url="http://127.0.0.1:1/v1", api_key="x")
    loop = make_loop(tmp_path, clock)
    client = OpenAI(loop=loop, base_url="http://127.0.0.1:1/v1", api_key="x")
    copy = client.with_options(timeout=5)
    assert copy.loop is loop and type(copy.chat.completions).__name__ == "_Completions"
    assert copy.chat.completions._loop is loop  # the copy's create() routes and logs through the same loop
    assert client.models is not None  # the rest is the openai client's own


def test_importing_the_sdk_does_not_import_openai() -> None:
    code = "import sys, afs_continuous, afs_continuous.integrations; print('openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
