"""afs_continuous.redact.basic: what it replaces and what it leaves alone."""

from __future__ import annotations

import pytest

from afs_continuous.redact import basic


@pytest.mark.parametrize("text, expected", [
    ("write to jane.doe+work@mail.example.co.uk today", "write to [EMAIL] today"),
    ("call +33 6 12 34 56 78 or (555) 123-4567 or 555.123.4567", "call [PHONE] or [PHONE] or [PHONE]"),
    ("London office: 020 7946 0958.", "London office: [PHONE]."),
    ("card 4111 1111 1111 1111 and 5500-0000-0000-0004", "card [CARD] and [CARD]"),
    ("OPENAI_API_KEY=sk-proj-4f9XqL2mN8pR5tV7wY1zA3bC6dE0gH", "OPENAI_API_KEY=[API_KEY]"),
    ("anthropic sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345", "anthropic [API_KEY]"),
    ("aws AKIAIOSFODNN7EXAMPLE secret", "aws [API_KEY] secret"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token [API_KEY]"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe [API_KEY]"),
    ("slack xoxb-123456789012-abcdefghij", "slack [API_KEY]"),
    ("Authorization: Bearer abc.DEF-123_456~789/xyz=", "Authorization: [API_KEY]"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt [API_KEY]"),
])
def test_replaces(text: str, expected: str) -> None:
    assert basic(text) == expected


@pytest.mark.parametrize("text", [
    "On 2024-01-15 at 10:30, version 1.2.3.4 shipped; pi is 3.14159265358979.",
    "Order 1234567890123 (not a valid card number) of 42 items, ISBN 978-3-16-148410-0.",
    "Use the sklearn skeleton; ask the github team; the @decorator syntax.",
    "",
])
def test_leaves_ordinary_text_alone(text: str) -> None:
    assert basic(text) == text


def test_never_fails_on_odd_input() -> None:
    assert basic("\x00\ud800 +1 ( \u00e9@\u00e9.fr") == "\x00\ud800 +1 ( \u00e9@\u00e9.fr"
