"""Drop-in ``openai`` clients that route, serve and log every chat completion through the loop.

.. code-block:: python

    from afs_continuous.integrations.openai import OpenAI

    client = OpenAI(loop=loop, base_url="http://127.0.0.1:8000/v1", api_key="EMPTY")
    completion = client.chat.completions.create(messages=[...], user="user-42", max_tokens=256)
    loop.record_feedback(completion.record_id, 1)

``client.chat.completions.create(messages=..., user=unit_id, ...)``:

- routes by ``user`` (sticky per user, ``loop.route(user)``; no ``user``: at random) and sends the
  request to the routed version's served name (``loop.served_model_name``). The caller's ``model=``
  is optional and **ignored**: the loop decides which version answers (the response's ``model``
  field names it);
- logs the whole conversation, the answer (the first choice when ``n > 1``), latency (ms, the
  whole call), prompt/completion tokens from ``usage`` and the served version with its exposure;
- returns the server's completion unchanged except for ``completion.record_id`` (the id for
  ``loop.record_feedback``; None when the call was not logged);
- ``stream=True``: returns a wrapper of the stream (iterate it, use it as a context manager,
  ``close()`` it) that logs when the server finished the answer; ``stream.record_id`` is set then.
  A stream that breaks, or that the caller closes or abandons before the end, is not logged.
  Unless the caller set ``stream_options``, ``{"include_usage": True}`` is added to get the token
  counts, and the usage-only last chunk it produces is not passed on;
- our keyword arguments, removed before the request: ``afs_metadata`` (a JSON mapping stored with
  the record), ``afs_quality_score`` (float in [0, 1]) and ``afs_log`` (False: serve, do not log);
- an error from the server reaches the caller unchanged and nothing is logged; except that when
  the server answers that the routed model does not exist (HTTP 404: vLLM restarted and forgot its
  runtime adapters) the call is sent once more, to the champion, ``loop.report_unavailable``
  counts the fallback and reloads the adapter in the background, and the record says
  ``fallback_from=<routed version>`` (it keeps the routed experiment arm: it counts for the arm
  the user was assigned to).

Everything else (``client.models``, ``client.completions``, ``chat.completions.with_raw_response``,
...) is the ``openai`` client's own and is not logged. The module never patches ``openai``.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, AsyncIterator, Iterator

try:
    import openai
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("afs_continuous.integrations.openai needs the openai package (>= 1.40): "
                      "pip install 'afs-continuous[openai]'") from exc

from ._openai_core import AFS_KWARGS, Call, StreamAccumulator, split_kwargs

__all__ = ["AFS_KWARGS", "AsyncOpenAI", "AsyncLoggedStream", "LoggedStream", "OpenAI", "split_kwargs"]


class LoggedStream:
    """A chat completion stream that logs the answer when the server has finished it.

    Iterate it like the ``openai.Stream`` it wraps (``for chunk in stream``), use it as a context
    manager or ``close()`` it; other attributes (``response``) are the wrapped stream's.

    Attributes:
        record_id: The record id once the stream ended complete and was logged; None before, and
            for a stream that broke, was closed early or was not logged.
    """

    def __init__(self, stream: Any, call: Call) -> None:
        self._stream = stream
        self._iter: Iterator[Any] = iter(stream)
        self._call = call
        self._acc = StreamAccumulator(call.hide_usage_chunk)
        self._done = False
        self.record_id: str | None = None

    def __iter__(self) -> "LoggedStream":
        return self

    def __next__(self) -> Any:
        while True:
            try:
                chunk = next(self._iter)
            except StopIteration:
                self._finish(True)
                raise
            except BaseException:
                self._finish(False)  # a broken stream is not an answer
                raise
            if self._acc.add(chunk):
                return chunk

    def _finish(self, ended: bool) -> None:
        if self._done:
            return
        self._done = True
        acc = self._acc
        self.record_id = self._call.log(acc.text, acc.usage, complete=ended and acc.complete)

    def close(self) -> None:
        """Close the connection; a stream closed before its end is not logged."""
        self._finish(False)
        self._stream.close()

    def __enter__(self) -> "LoggedStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class AsyncLoggedStream:
    """The ``async`` counterpart of :class:`LoggedStream` (``async for``, ``async with``, ``await close()``).

    Attributes:
        record_id: As :attr:`LoggedStream.record_id`.
    """

    def __init__(self, stream: Any, call: Call) -> None:
        self._stream = stream
        self._iter: AsyncIterator[Any] = stream.__aiter__()
        self._call = call
        self._acc = StreamAccumulator(call.hide_usage_chunk)
        self._done = False
        self.record_id: str | None = None

    def __aiter__(self) -> "AsyncLoggedStream":
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                chunk = await self._iter.__anext__()
            except StopAsyncIteration:
                self._finish(True)
                raise
            except BaseException:
                self._finish(False)
                raise
            if self._acc.add(chunk):
                return chunk

    def _finish(self, ended: bool) -> None:
        if self._done:
            return
        self._done = True
        acc = self._acc
        self.record_id = self._call.log(acc.text, acc.usage, complete=ended and acc.complete)

    async def close(self) -> None:
        """Close the connection; a stream closed before its end is not logged."""
        self._finish(False)
        await self._stream.close()

    async def __aenter__(self) -> "AsyncLoggedStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Completions:
    """``client.chat.completions``: ``create`` routed and logged, everything else the client's own."""

    def __init__(self, inner: Any, loop: Any) -> None:
        self._inner = inner
        self._loop = loop

    def create(self, **kwargs: Any) -> Any:
        """Route, send and log one chat completion (see the module docstring).

        Args:
            **kwargs: ``openai``'s ``chat.completions.create`` arguments (``messages`` required;
                ``user`` is the routing unit; ``model`` is ignored) plus ``afs_metadata``,
                ``afs_quality_score``, ``afs_log``.

        Returns:
            The ``ChatCompletion`` with ``record_id`` set, or a :class:`LoggedStream` for ``stream=True``.

        Raises:
            openai.APIError: The server's error, unchanged (nothing logged).
            TypeError, ValueError: Our arguments are invalid (nothing sent).
            afs_continuous.serving.EngineError: ``serving.base_model_name`` is unset and the first
                replica cannot be asked for it (nothing sent).
        """
        call = Call(self._loop, kwargs)
        try:
            result = self._inner.create(**call.kwargs)
        except openai.NotFoundError as exc:
            if not call.is_model_missing(exc) or not call.fall_back(exc, self._loop.report_unavailable(call.version,
                                                                                                       exc)):
                raise
            result = self._inner.create(**call.kwargs)
        if call.stream:
            return LoggedStream(result, call)
        call.log_completion(result)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _AsyncCompletions:
    """``client.chat.completions`` of :class:`AsyncOpenAI`."""

    def __init__(self, inner: Any, loop: Any) -> None:
        self._inner = inner
        self._loop = loop

    async def create(self, **kwargs: Any) -> Any:
        """As :meth:`_Completions.create`; returns an :class:`AsyncLoggedStream` for ``stream=True``."""
        call = Call(self._loop, kwargs)
        try:
            result = await self._inner.create(**call.kwargs)
        except openai.NotFoundError as exc:
            if not call.is_model_missing(exc):
                raise
            champion = await asyncio.to_thread(self._loop.report_unavailable, call.version, exc)  # one store write
            if not call.fall_back(exc, champion):
                raise
            result = await self._inner.create(**call.kwargs)
        if call.stream:
            return AsyncLoggedStream(result, call)
        call.log_completion(result)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Chat:
    def __init__(self, inner: Any, completions: Any) -> None:
        self._inner = inner
        self.completions = completions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_COPY_LOOP: contextvars.ContextVar[Any] = contextvars.ContextVar("afs_copy_loop", default=None)


def _need_loop(loop: Any) -> Any:
    if loop is None:
        loop = _COPY_LOOP.get()  # client.copy() / with_options() build a new client without loop=
    if loop is None or not callable(getattr(loop, "route", None)) or not callable(getattr(loop, "log_usage", None)):
        raise TypeError(f"loop= must be the ContinuousLearningLoop that routes and logs the calls, got {loop!r}")
    return loop


class _LoopClient:
    """What both clients add to ``openai``'s: the loop, the wrapped ``chat``, and copies that keep the loop.

    Mixed in before the ``openai`` client class; ``_completions`` is the wrapper of ``chat.completions``.
    """

    _completions: Any

    def __init__(self, *, loop: Any = None, **kwargs: Any) -> None:
        self.loop = _need_loop(loop)
        super().__init__(**kwargs)
        inner = super().chat  # type: ignore[misc]
        self._afs_chat = _Chat(inner, self._completions(inner.completions, self.loop))

    @property
    def chat(self) -> Any:
        """The client's ``chat`` resource with the routed and logged ``completions.create``."""
        return self._afs_chat

    def copy(self, **kwargs: Any) -> Any:
        """``openai``'s ``copy`` (and ``with_options``): the copy routes and logs through the same loop."""
        token = _COPY_LOOP.set(self.loop)
        try:
            return super().copy(**kwargs)  # type: ignore[misc]
        finally:
            _COPY_LOOP.reset(token)

    with_options = copy


class OpenAI(_LoopClient, openai.OpenAI):
    """``openai.OpenAI`` whose ``chat.completions.create`` routes, serves and logs through ``loop``.

    Args:
        loop: The :class:`~afs_continuous.loop.ContinuousLearningLoop` (``route``,
            ``served_model_name``, ``log_usage``, ``report_unavailable``).
        **kwargs: ``openai.OpenAI``'s arguments (``base_url``, e.g. ``http://vllm:8000/v1``,
            ``api_key``, ``timeout``, ``max_retries``, ...).

    Raises:
        TypeError: ``loop`` is missing or not a loop.
    """

    _completions = _Completions


class AsyncOpenAI(_LoopClient, openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` whose ``chat.completions.create`` routes, serves and logs through ``loop``.

    Args and Raises: as :class:`OpenAI`. ``loop.route`` and ``loop.log_usage`` run on the event loop:
    they answer from the routing cache and the logger's queue, so they return in microseconds, except
    for a store read once every ``route_cache_s`` (the cache refresh), a full queue (waits up to
    ``logger_config.enqueue_timeout_s``) and ``durability="sync"`` (a commit per call); the fallback's
    one store write runs in a thread.
    """

    _completions = _AsyncCompletions
