"""The OpenAI integration's request bookkeeping, independent of sync/async: routing, our keyword
arguments, stream accumulation, the fallback decision and the log call.

Nothing here reads the store on the request path: ``loop.route`` answers from its routing cache,
``log_usage`` enqueues (``async`` durability). Only a fallback writes (one ``serving_events`` row).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping

import openai

from .._validate import validate_metadata, validate_quality
from ..errors import AfsContinuousError
from ..registry import ModelVersion

log = logging.getLogger("afs_continuous.integrations.openai")

#: Our keyword arguments of ``chat.completions.create``; everything else goes to the server.
AFS_KWARGS = frozenset({"afs_metadata", "afs_quality_score", "afs_log"})


def split_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate our ``afs_*`` keyword arguments from OpenAI's.

    Args:
        kwargs: The keyword arguments of one ``chat.completions.create`` call.

    Returns:
        ``(openai_kwargs, ours)``: ``ours`` has ``metadata`` (mapping or None), ``quality_score``
        (float in [0, 1] or None) and ``log`` (bool, default True).

    Raises:
        TypeError: An ``afs_`` argument we do not know (the message lists ours).
        ValueError: ``afs_metadata`` or ``afs_quality_score`` is invalid (checked before the request
            is sent), or ``afs_log`` is not a bool.
    """
    call = {}
    ours: dict[str, Any] = {"metadata": None, "quality_score": None, "log": True}
    for key, value in kwargs.items():
        if not key.startswith("afs_"):
            call[key] = value
            continue
        if key not in AFS_KWARGS:
            raise TypeError(f"unknown keyword argument {key!r}; afs_continuous takes {sorted(AFS_KWARGS)}")
        ours[key[4:]] = value
    if ours["metadata"] is not None:
        validate_metadata(ours["metadata"])  # raises ValueError naming the key path
    ours["quality_score"] = validate_quality(ours["quality_score"])
    if type(ours["log"]) is not bool:
        raise ValueError(f"afs_log must be True or False, got {ours['log']!r}")
    return call, ours


class Call:
    """One ``chat.completions.create`` call: what was routed, what is sent, what is logged.

    Args:
        loop: The :class:`~afs_continuous.loop.ContinuousLearningLoop`.
        kwargs: The caller's keyword arguments (``messages``, ``user``, ``stream``, ``afs_*``, ...).

    Raises:
        TypeError, ValueError: See :func:`split_kwargs`; ``messages`` missing.
    """

    __slots__ = ("loop", "kwargs", "messages", "unit", "version", "served", "fallback_from", "ours", "stream",
                 "hide_usage_chunk", "t0")

    def __init__(self, loop: Any, kwargs: Mapping[str, Any]) -> None:
        call, self.ours = split_kwargs(kwargs)
        if "messages" not in call:
            raise TypeError("chat.completions.create() needs messages=[...] (OpenAI chat format)")
        messages = call["messages"]
        if not isinstance(messages, list):
            messages = call["messages"] = list(messages)  # an iterable is consumed once: keep it for the log
        self.messages = messages
        user = call.get("user")
        self.unit = user if isinstance(user, str) else None  # NOT_GIVEN / None: routed at random
        self.loop = loop
        self.version: ModelVersion = loop.route(self.unit)
        self.served: str = loop.served_model_name(self.version)
        call["model"] = self.served  # the caller's model= is replaced: the loop decides who serves
        self.fallback_from: str | None = None
        self.stream = call.get("stream") is True
        self.hide_usage_chunk = False
        if self.stream and self.ours["log"] and call.get("stream_options") in (None, openai.NOT_GIVEN):
            call["stream_options"] = {"include_usage": True}  # tokens in the last chunk, hidden from the caller
            self.hide_usage_chunk = True
        self.kwargs = call
        self.t0 = time.perf_counter()

    # ---- fallback -------------------------------------------------------------------------------

    def is_model_missing(self, exc: BaseException) -> bool:
        """The engine answered that the served model does not exist (vLLM restarted and forgot it)."""
        if not isinstance(exc, openai.NotFoundError):
            return False
        code = getattr(exc, "code", None)
        if code == "model_not_found":
            return True
        quoted = (f"`{self.served}`", f"'{self.served}'", f'"{self.served}"')  # the name itself, not a substring
        text = f"{exc.message} {exc.body}"
        return any(q in text for q in quoted)

    def fall_back(self, exc: BaseException, champion: ModelVersion) -> bool:
        """Switch this call to ``champion`` (returned by ``loop.report_unavailable``); False when the
        routed version is the champion itself (nothing else to send it to: the caller gets ``exc``)."""
        served = self.loop.served_model_name(champion)
        if served == self.served:
            return False
        routed = self.version
        self.fallback_from = routed.name
        # the record keeps the routed exposure (intent to treat): the unit was assigned to that arm
        self.version = dataclasses.replace(champion, experiment_id=routed.experiment_id, arm=routed.arm)
        self.served = self.kwargs["model"] = served
        return True

    # ---- logging --------------------------------------------------------------------------------

    def log(self, text: str | None, usage: Any, *, complete: bool = True) -> str | None:
        """Log the call; returns the record id, or None when it is not logged.

        Not logged: ``afs_log=False``, an incomplete stream, an answer without text (a tool
        call), or a conversation ``log_usage`` refuses (e.g. image parts; a WARNING says why).
        A logging failure never takes the caller's answer: it is logged at ERROR.
        """
        if not self.ours["log"] or not complete or text is None:
            return None
        latency_ms = (time.perf_counter() - self.t0) * 1000.0
        try:
            return self.loop.log_usage(
                messages=[_as_dict(m) for m in self.messages], response=text, model=self.version,
                latency_ms=latency_ms, quality_score=self.ours["quality_score"], unit_id=self.unit,
                metadata=self.ours["metadata"], prompt_tokens=getattr(usage, "prompt_tokens", None),
                completion_tokens=getattr(usage, "completion_tokens", None), fallback_from=self.fallback_from)
        except ValueError as exc:
            log.warning("call served by %s but not logged: %s", self.version.name, exc)
        except AfsContinuousError as exc:
            log.error("call served by %s but not logged: %s", self.version.name, exc)
        return None

    def log_completion(self, completion: Any) -> str | None:
        """Log a non-streaming completion (its first choice) and set ``completion.record_id``."""
        choices = getattr(completion, "choices", None) or []
        first = next((c for c in choices if getattr(c, "index", 0) == 0), choices[0] if choices else None)
        message = getattr(first, "message", None)
        text = getattr(message, "content", None)
        record_id = self.log(text if isinstance(text, str) else None, getattr(completion, "usage", None))
        try:
            completion.record_id = record_id
        except (AttributeError, ValueError, TypeError):  # a response type without extra fields
            pass
        return record_id


def _as_dict(message: Any) -> Any:
    """A message as a dict (callers often append ``completion.choices[0].message``, a pydantic model)."""
    if isinstance(message, dict):
        return message
    dump = getattr(message, "model_dump", None)
    return dump(exclude_none=True) if callable(dump) else message


class StreamAccumulator:
    """Joins the first choice's text deltas of a chat completion stream and keeps the usage.

    Attributes:
        parts: The text deltas of choice 0, in order.
        finish_reason: Choice 0's finish reason (None until the server sent it: the stream is
            incomplete without it).
        usage: The ``usage`` of the chunk that carried it (``stream_options.include_usage``), or None.
        model: The ``model`` field of the chunks (the served name).
    """

    __slots__ = ("parts", "finish_reason", "usage", "model", "hide_usage_chunk")

    def __init__(self, hide_usage_chunk: bool = False) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.model: str | None = None
        self.hide_usage_chunk = hide_usage_chunk

    def add(self, chunk: Any) -> bool:
        """Take one ``ChatCompletionChunk``; True when the caller should see it (False only for the
        usage-only chunk this integration asked for, which a caller that did not ask for it does
        not expect: it has no choices)."""
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage
        self.model = getattr(chunk, "model", self.model)
        choices = chunk.choices
        for choice in choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            content = getattr(delta, "content", None) if delta is not None else None
            if content:
                self.parts.append(content)
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
        return bool(choices) or not (self.hide_usage_chunk and usage is not None)

    @property
    def text(self) -> str:
        """The answer so far (choice 0's deltas joined)."""
        return "".join(self.parts)

    @property
    def complete(self) -> bool:
        """The server finished choice 0 (it sent a ``finish_reason``)."""
        return self.finish_reason is not None
