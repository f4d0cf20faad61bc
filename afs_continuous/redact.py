"""A ready-made redactor for ``logger_config.redact_fn``: e-mail addresses, phone numbers, card numbers and API keys.

Use it by configuration (``"logger_config": {"redact_fn": "afs_continuous.redact:basic"}``) or
pass it (``ContinuousLearningLoop(config, redact_fn=basic)``); every query, response,
conversation turn and feedback comment then goes through :func:`basic` before it is queued, so
the store never holds what it replaced. Write your own ``redact_fn(text) -> text`` for other
needs (names, addresses, identifiers of your domain); this one is a starting point, not a
guarantee: regular expressions miss what they do not describe.

What :func:`basic` replaces, each by a marker in square brackets:

- ``[EMAIL]``: ``local@domain.tld`` addresses;
- ``[API_KEY]``: well-known key formats (OpenAI-style ``sk-...``, Anthropic ``sk-ant-...``,
  AWS access key ids ``AKIA...``, GitHub ``ghp_...``/``github_pat_...``, Slack ``xox?-...``,
  Google ``AIza...``, Stripe ``sk_live_...``/``rk_live_...``, JSON web tokens ``eyJ...``) and
  ``Bearer <token>`` credentials;
- ``[CARD]``: 13 to 19 digits (spaces or dashes allowed between them) that pass the Luhn check;
- ``[PHONE]``: phone numbers written with an international prefix (``+33 6 12 34 56 78``) or in
  three groups with separators (``(555) 123-4567``, ``555.123.4567``, ``020 7946 0958``).

Dates (``2024-01-15``), times, version numbers and plain integers are left alone. Cost: about
10 to 40 us per 2 KB text on a 2-core machine (one pass per pattern family, each skipped when
the text lacks the character it needs, e.g. ``@`` for e-mails); see ``benchmarks/bench_service.py --redact``.
"""

from __future__ import annotations

import re

__all__ = ["basic", "EMAIL", "PHONE", "CARD", "API_KEY"]

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
API_KEY = "[API_KEY]"

_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_KEY_RE = re.compile(
    r"\b(?:"
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"
    r"|[Bb][Ee][Aa][Rr][Ee][Rr]\s+[A-Za-z0-9._~+/=\-]{16,}"
    r")"
)
# Substrings without which _KEY_RE cannot match: the regex runs only on texts holding one (fast path).
_KEY_HINTS = ("sk-", "sk_", "rk_", "pk_", "AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AIza",
              "eyJ", "earer", "EARER")
# A run of digits and separators long enough to hold a phone or card number; the precise patterns
# below run on each such run only (one cheap pass over the text instead of three costly ones).
_NUMBERISH_RE = re.compile(r"\d[\d ().\-]{7,}\d")  # starts with a digit: the regex engine skips fast to one
_CARD_RE = re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])")
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,5}"  # +33 6 12 34 56 78, +1 (555) 123-4567
    r"|\(\d{2,4}\)[ .\-]?\d{3,4}[ .\-]\d{3,4}"  # (555) 123-4567
    r"|\d{3,4}[ .\-]\d{3,4}[ .\-]\d{4}"  # 555-123-4567, 020 7946 0958
    r")(?!\w)"
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    text = match.group()
    digits = text.replace(" ", "").replace("-", "")
    return CARD if _luhn(digits) else text


def _numbers(text: str) -> str:
    """Card and phone numbers replaced, looking only at the runs of digits and separators."""
    out: list[str] = []
    last = 0
    for m in _NUMBERISH_RE.finditer(text):
        start, end = m.start(), m.end()
        while start > last and text[start - 1] in "+(":  # a prefix the run does not start with
            start -= 1
        run = text[start:end]
        new = _PHONE_RE.sub(PHONE, _CARD_RE.sub(_card, run))
        if new != run:
            out += (text[last:start], new)
            last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def basic(text: str) -> str:
    """``text`` with e-mail addresses, API keys, card numbers and phone numbers replaced by markers.

    Args:
        text: Any text (a prompt, a response, a conversation turn, a feedback comment).

    Returns:
        The text with ``[EMAIL]``, ``[API_KEY]``, ``[CARD]`` and ``[PHONE]`` in place of what
        they replace; everything else unchanged.

    >>> basic("Mail jane.doe@example.com or call +1 (555) 123-4567; key sk-proj-abcdefghijklmnopqrstuvwx")
    'Mail [EMAIL] or call [PHONE]; key [API_KEY]'
    >>> basic("Card 4111 1111 1111 1111, order 1234567890123, on 2024-01-15 at 10:30")
    'Card [CARD], order 1234567890123, on 2024-01-15 at 10:30'
    """
    if "@" in text:
        text = _EMAIL_RE.sub(EMAIL, text)
    for hint in _KEY_HINTS:
        if hint in text:
            text = _KEY_RE.sub(API_KEY, text)
            break
    return _numbers(text)
