"""Conversations (OpenAI chat format) in records, training data and deduplication (private).

A record logged with ``messages=`` keeps the whole conversation before the
response in ``usage_records.messages_json`` (a JSON list of ``{"role",
"content"}``) and its final user turn in ``query``. Everything downstream reads
a record as ``(messages, response)``: a record logged with ``query=`` is the
one-turn conversation ``[{"role": "user", "content": query}]``.

Validation (:func:`validate_messages`) runs on the caller's thread of
``log()``: one pass over the list, O(number of messages + parts), no JSON
encoding (the writer thread encodes).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Sequence

from ._text import normalize

__all__ = ["ROLES", "validate_messages", "encode_messages", "record_messages", "conversation_hash",
           "dedup_prompt", "render_prompt", "chat_messages"]

#: Roles accepted in ``messages`` (OpenAI's chat roles).
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_SYSTEM_ROLES = frozenset({"system", "developer"})

Pairs = list[tuple[str, str]]


def _content_text(content: Any, i: int, role: str) -> str:
    """The text of a message's ``content``: a str, a list of text parts (joined by newlines), or
    None for an assistant turn that only called tools."""
    if content is None and role == "assistant":
        return ""
    if isinstance(content, (list, tuple)):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or type(part.get("text")) is not str:
                got = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"messages[{i}].content[{j}] must be a text part {{'type': 'text', 'text': str}}, "
                                 f"got {got!r}; only text is stored (send images or audio without logging them)")
            texts.append(part["text"])
        return "\n".join(texts)
    if isinstance(content, str):
        return content
    raise ValueError(f"messages[{i}].content must be a str or a list of text parts, got {type(content).__name__}")


def validate_messages(messages: Any) -> Pairs:
    """Check a conversation in OpenAI chat format and return it as ``[(role, text), ...]``.

    Args:
        messages: A non-empty list of ``{"role": str, "content": str | [{"type": "text", "text": str}, ...]}``;
            roles in :data:`ROLES`; the last turn is the user turn being answered. Other keys
            (``name``, ``tool_calls``, ...) are not stored. An assistant turn's ``content`` may be None
            (a turn that only called tools).

    Returns:
        The (role, text) pairs, text parts joined by newlines. O(size of the list and its parts).

    Raises:
        ValueError: The message names the offending entry, e.g. ``messages[2].role``.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts "
                         f"(OpenAI chat format), got {type(messages).__name__ if messages is not None else None}"
                         f"{' (empty)' if isinstance(messages, (list, tuple)) else ''}")
    out: Pairs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if type(role) is not str or role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}")
        content = m.get("content")
        out.append((role, content if type(content) is str else _content_text(content, i, role)))
    if out[-1][0] != "user":
        raise ValueError(f"messages must end with the user turn being answered: messages[{len(out) - 1}].role is "
                         f"{out[-1][0]!r}; pass the conversation up to the request, and the answer as response=")
    return out


def encode_messages(pairs: Sequence[tuple[str, str]]) -> str:
    """``messages_json`` of a conversation: ``[{"role", "content"}, ...]`` as JSON (non-ASCII kept)."""
    return json.dumps([{"role": r, "content": c} for r, c in pairs], ensure_ascii=False)


def record_messages(query: str, messages_json: str | None) -> list[dict[str, str]]:
    """The conversation of a stored record (before its response): ``messages_json``, or the one
    user turn ``query`` of a record logged with ``query=``."""
    if messages_json:
        return json.loads(messages_json)  # type: ignore[no-any-return]
    return [{"role": "user", "content": query}]


def _single_user(messages: Sequence[dict[str, str]]) -> bool:
    return len(messages) == 1 and messages[0]["role"] == "user"


def conversation_hash(query: str, response: str, messages_json: str | None) -> str:
    """Content hash of a record over its whole conversation (32 hex characters).

    A one-turn conversation hashes like the ``query=`` record of the same text
    (:func:`~afs_continuous._text.content_hash`), so both forms deduplicate
    against each other; a longer one hashes every turn's role and normalised
    text, then the response.
    """
    from ._text import content_hash

    if not messages_json:
        return content_hash(query, response)
    messages = json.loads(messages_json)
    if _single_user(messages):
        return content_hash(messages[0]["content"], response)
    key = "\x1e".join(m["role"] + "\x1d" + normalize(m["content"]) for m in messages) + "\x1f" + normalize(response)
    return hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=16).hexdigest()


def dedup_prompt(messages: Iterable[dict[str, str]]) -> str:
    """The prompt text near-duplicate detection shingles: every turn but the system prompts,
    joined by blank lines (a long system prompt shared by all traffic would otherwise make
    every conversation look alike)."""
    return "\n\n".join(m["content"] for m in messages if m["role"] not in _SYSTEM_ROLES)


def render_prompt(messages: Sequence[dict[str, str]]) -> str:
    r"""A conversation (before the answer) as one prompt text for the alpaca and completion formats.

    Those formats have no place for a system prompt or earlier turns: a single
    exchange (one user turn, with or without a system prompt) is its user text,
    as a ``query=`` record; a longer conversation renders every turn, system
    prompt included, as ``Role: text``, separated by blank lines, ending with
    the final user turn.

    >>> render_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    'Hi'
    >>> render_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
    ...                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name?"}])
    'System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Name?'
    """
    turns = [m for m in messages if m["role"] not in _SYSTEM_ROLES]
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def chat_messages(messages: Sequence[dict[str, str]], response: str,
                  system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat-format training sample: the conversation, then the response as the assistant turn;
    ``system_prompt`` is put first when the conversation has no system (or developer) turn."""
    out = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt and not any(m["role"] in _SYSTEM_ROLES for m in out):
        out.insert(0, {"role": "system", "content": system_prompt})
    out.append({"role": "assistant", "content": response})
    return out
