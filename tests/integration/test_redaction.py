"""redact_fn: user text is redacted on the caller's thread before it is queued, on every path."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import create_engine, text

from afs_continuous import ContinuousLearningLoop, LoggerConfig, UsageLogger
from afs_continuous.clock import ManualClock
from afs_continuous.config import load_config
from afs_continuous.errors import ConfigError, RedactionError

EMAIL = "jane.doe@example.com"
KEY = "sk-proj-4f9XqL2mN8pR5tV7wY1zA3bC6dE0gH"
PHONE = "+1 (555) 123-4567"
SECRETS = (EMAIL, KEY, PHONE, "jane.doe", "4f9XqL2mN8pR5tV7wY1zA3bC6dE0gH", "123-4567")


def stored_text(url: str) -> str:
    """Every text column of the store, concatenated (what a reader of the database could see)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            parts = [str(v) for row in conn.execute(text(
                "SELECT query, response, messages_json, metadata_json FROM usage_records")) for v in row if v]
            parts += [str(r[0]) for r in conn.execute(text("SELECT comment FROM feedback_events")) if r[0]]
    finally:
        engine.dispose()
    return "\n".join(parts)


def conversation() -> list[dict[str, Any]]:
    return [{"role": "system", "content": f"Support bot. Escalations go to {EMAIL}."},
            {"role": "user", "content": f"My key {KEY} stopped working"},
            {"role": "assistant", "content": [{"type": "text", "text": f"Call us at {PHONE}."}]},
            {"role": "user", "content": f"I did, from {PHONE}; mail me at {EMAIL}"}]


def test_config_import_path_redacts_query_messages_and_comments(tmp_path: Path, clock: ManualClock,
                                                               make_loop: Callable[..., ContinuousLearningLoop],
                                                               store_url: str) -> None:
    loop = make_loop(tmp_path, clock, logger_config={"redact_fn": "afs_continuous.redact:basic"})
    rid = loop.log_usage(f"Email {EMAIL} my API key {KEY}", f"Done; we will call {PHONE}.", model="base",
                         latency_ms=12.0)
    rid2 = loop.log_usage(messages=conversation(), response=f"Sent to {EMAIL}.", model="base")
    loop.record_feedback(rid, -1, comment=f"Wrong, my number is {PHONE} and mail {EMAIL}")
    loop.record_feedback(rid2, 1)
    assert loop.logger.flush(30)
    stored = stored_text(loop.config.store_url)
    for secret in SECRETS:
        assert secret not in stored
    for marker in ("[EMAIL]", "[API_KEY]", "[PHONE]"):
        assert marker in stored
    records = {r["id"]: r for r in loop.logger.get_records()}
    assert records[rid]["query"] == "Email [EMAIL] my API key [API_KEY]"
    assert records[rid]["response"] == "Done; we will call [PHONE]."
    assert records[rid2]["query"] == "I did, from [PHONE]; mail me at [EMAIL]"  # the redacted final user turn
    assert records[rid]["feedback"] == -1 and records[rid2]["feedback"] == 1
    # redaction changes lengths: the record is not taken for truncated (it stays trainable)
    assert not records[rid]["truncated"] and records[rid]["query_chars"] == len(records[rid]["query"])


def test_argument_redacts_before_the_queue_on_the_callers_thread(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "usage.db"
    seen: list[tuple[int, str]] = []

    def mask(value: str) -> str:
        seen.append((threading.get_ident(), value))
        return value.replace("hunter2", "[SECRET]")

    logger = UsageLogger(db, clock=clock, redact_fn=mask, config=LoggerConfig(redact_fn="no.such.module:fn"))
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the writer cannot commit anything meanwhile
        rid = logger.log("my password is hunter2", "noted: hunter2", "m")
        logger.log(messages=[{"role": "user", "content": "hunter2?"}], response="ok", model="m")
        logger.record_feedback(rid, 1, comment="please forget hunter2")
        # all redacted already, on this thread, while nothing could be written
        assert [v for _, v in seen] == ["my password is hunter2", "noted: hunter2", "hunter2?", "ok",
                                        "please forget hunter2"]
        assert {t for t, _ in seen} == {threading.get_ident()}
        assert holder.execute("SELECT count(*) FROM usage_records").fetchone()[0] == 0
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert logger.flush(30)
    stored = stored_text(f"sqlite:///{db}")
    assert "hunter2" not in stored and stored.count("[SECRET]") == 5  # the last turn is in query and messages_json
    logger.close()


def test_loop_argument_overrides_the_configuration(tmp_path: Path, clock: ManualClock) -> None:
    cfg = load_config(None, env={}, overrides={"db_path": str(tmp_path / "usage.db"), "data_dir": str(tmp_path),
                                                "logger_config": {"redact_fn": "afs_continuous.redact:basic"}})
    loop = ContinuousLearningLoop(cfg, clock=clock, redact_fn=lambda s: s.upper())
    rid = loop.log_usage(f"mail {EMAIL}", "ok", model="base")
    assert loop.logger.flush(30)
    assert loop.logger.get_records()[0]["query"] == f"MAIL {EMAIL.upper()}"  # the argument's function, not basic
    assert loop.record_feedback(rid, 1) is True
    loop.close()


def test_a_file_path_in_the_configuration(tmp_path: Path, clock: ManualClock) -> None:
    (tmp_path / "my_redactor.py").write_text("def scrub(t):\n    return t.replace('ACME-42', '[ACCOUNT]')\n")
    logger = UsageLogger(tmp_path / "usage.db", clock=clock,
                         config=LoggerConfig(redact_fn=f"{tmp_path / 'my_redactor.py'}:scrub"))
    logger.log("account ACME-42 locked", "unlocked ACME-42", "m")
    assert logger.flush(30)
    rec = logger.get_records()[0]
    assert (rec["query"], rec["response"]) == ("account [ACCOUNT] locked", "unlocked [ACCOUNT]")
    logger.close()


@pytest.mark.parametrize("spec", ["afs_continuous.redact:no_such_function", "no_such_module_xyz:fn", "missing.py:fn",
                                  "not-an-import-path"])
def test_a_bad_import_path_is_a_config_error_naming_the_key(tmp_path: Path, spec: str) -> None:
    with pytest.raises(ConfigError, match=r"logger_config\.redact_fn"):
        UsageLogger(tmp_path / "usage.db", config=LoggerConfig(redact_fn=spec))


def test_not_callable_argument_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="redact_fn must be a callable"):
        UsageLogger(tmp_path / "usage.db", redact_fn="afs_continuous.redact:basic")  # type: ignore[arg-type]


def test_a_failing_redactor_stores_nothing_and_never_shows_the_text(tmp_path: Path, clock: ManualClock) -> None:
    def fails_on_secret(value: str) -> str:
        if "hunter2" in value:
            raise KeyError(f"cannot handle {value!r}")  # its message quotes the text
        return value

    def returns_bytes(value: str) -> Any:
        return value.encode()

    logger = UsageLogger(tmp_path / "usage.db", clock=clock, redact_fn=fails_on_secret)
    with pytest.raises(RedactionError) as err:
        logger.log("my password is hunter2", "ok", "m")
    message = str(err.value)
    assert "fails_on_secret" in message and "query" in message and "KeyError" in message
    assert "hunter2" not in message and err.value.__cause__ is None and err.value.__context__ is None
    assert isinstance(err.value, ValueError)
    with pytest.raises(RedactionError, match=r"messages\[1\]\.content"):
        logger.log(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hunter2"}],
                   response="ok", model="m")
    rid = logger.log("fine", "fine", "m")
    with pytest.raises(RedactionError, match="comment"):
        logger.record_feedback(rid, 1, comment="hunter2")
    assert logger.flush(30)
    stats = logger.get_statistics()
    assert stats["total"] == 1 and stats["with_feedback"] == 0  # only the record that redacted cleanly
    assert logger.writer_stats()["n_dropped"] == 0  # a refused call is the caller's error, not a drop
    logger.close()

    other = UsageLogger(tmp_path / "usage.db", clock=clock, redact_fn=returns_bytes)
    with pytest.raises(RedactionError, match="must return a str, returned bytes for query"):
        other.log("q", "r", "m")
    other.close()
