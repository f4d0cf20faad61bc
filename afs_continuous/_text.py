"""Text helpers shared by the writer and the training-data generator."""

from __future__ import annotations

import hashlib

__all__ = ["normalize", "content_hash", "clean_text"]


def normalize(text: str) -> str:
    """Case-fold and collapse every run of whitespace to one space (the dedup key).

    >>> normalize("  Hello\\n\\tWORLD ")
    'hello world'
    """
    return " ".join(text.split()).casefold()


def content_hash(query: str, response: str) -> str:
    """128-bit BLAKE2b of the normalised (query, response) pair, as 32 hex characters.

    Two records with the same hash are duplicates for training purposes.

    >>> content_hash("Hi", "Hello  there") == content_hash(" hi ", "hello there")
    True
    """
    key = normalize(query) + "\x1f" + normalize(response)
    return hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=16).hexdigest()


def clean_text(text: str) -> str:
    """Make ``text`` storable and exportable as valid UTF-8.

    Lone surrogates (which cannot be encoded) and NUL characters (which
    PostgreSQL rejects) become U+FFFD; everything else is kept as is.

    >>> clean_text("ok\\x00\\ud800!")
    'ok\\ufffd\\ufffd!'
    """
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.isascii():  # no surrogate possible (a quick check of the string's kind, no copy)
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text
