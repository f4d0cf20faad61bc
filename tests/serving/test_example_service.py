"""examples/serving_service.py, started with uvicorn in a subprocess in front of the session's real
vLLM server, called with the plain ``openai`` client and httpx (issue 9, item 5)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from .conftest import SERVED_NAME, VLLMServer

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_example_service(vllm_server: VLLMServer, tmp_path: Path) -> None:
    from afs_continuous import ContinuousLearningLoop
    from afs_continuous.config import load_config

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    env.update(PYTHONPATH=str(ROOT), VLLM_BASE_URL=vllm_server.base_url, AFS_CONTINUOUS_DB_PATH=str(tmp_path / "u.db"),
               AFS_CONTINUOUS_DATA_DIR=str(tmp_path / "data"))
    log = open(tmp_path / "service.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "examples.serving_service:app", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # polling a starting process
            assert proc.poll() is None, (tmp_path / "service.log").read_text()
            try:
                if httpx.get(base + "/docs", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "service.log").read_text()
            time.sleep(0.5)

        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello?"}]
        done = client.chat.completions.create(model="any", messages=messages, user="alice", max_tokens=3)
        assert done.model == SERVED_NAME and done.choices[0].message.content is not None
        record_id = done.record_id  # type: ignore[attr-defined] - the service's extra field
        chunks = list(client.chat.completions.create(model="any", messages=messages, user="bob", max_tokens=3,
                                                     stream=True))
        assert chunks and chunks[-1].record_id and all(c.choices for c in chunks)  # type: ignore[attr-defined]
        streamed_id = chunks[-1].record_id  # type: ignore[attr-defined]
        ok = httpx.post(base + "/feedback", json={"record_id": record_id, "feedback": -1, "comment": "too terse"})
        assert ok.status_code == 200 and ok.json() == {"recorded": True}
        bad = httpx.post(base + "/feedback", json={"record_id": record_id, "feedback": 7})
        assert bad.status_code == 422 and "feedback" in bad.text
        too_long = httpx.post(base + "/v1/chat/completions", timeout=60,
                              json={"messages": [{"role": "user", "content": "Hi " * 30000}], "user": "carol"})
        assert too_long.status_code == 400 and "maximum context length" in too_long.text
    finally:
        proc.send_signal(signal.SIGTERM)  # uvicorn's shutdown closes the loop: the logged calls are flushed
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn >= 0.29 re-raises the signal after its shutdown
        log.close()

    loop = ContinuousLearningLoop(load_config(env={}, overrides={"db_path": str(tmp_path / "u.db"),
                                                                 "data_dir": str(tmp_path / "data")}))
    try:
        with loop.store.read() as conn:
            rows = {r.id: r for r in conn.execute(text("SELECT id, unit_id, model, messages_json, response, "
                                                       "prompt_tokens FROM usage_records"))}
            comments = [r[0] for r in conn.execute(text("SELECT comment FROM feedback_events"))]
    finally:
        loop.close()
    assert set(rows) == {record_id, streamed_id}  # the refused call was not logged
    assert rows[record_id].unit_id == "alice" and json.loads(rows[record_id].messages_json) == messages
    assert rows[streamed_id].unit_id == "bob" and rows[streamed_id].prompt_tokens > 0
    assert rows[record_id].response == done.choices[0].message.content
    assert comments == ["too terse"]
