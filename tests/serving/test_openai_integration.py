"""The OpenAI integration against the session's real vLLM server (issue 9, item 2).

A challenger adapter (trained by the reference trainer) is deployed by the daemon; traffic through
``afs_continuous.integrations.openai.OpenAI`` splits about 90/10 by ``user``, every response comes
from the routed adapter (vLLM's ``model`` field), every call is logged with its conversation and
tokens, streams too; upstream errors reach the caller and are not logged; vLLM restarted
mid-traffic forgets the adapter: the champion answers its users, the fallbacks are counted, the
adapter is loaded again and no logged call is lost; ``afs-continuous promote`` / ``rollback`` move
every request. Restarts the session's server (it keeps its port).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from .conftest import SERVED_NAME, VLLMServer

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).parents[2]
_NO_TRIGGERS = {"min_new_samples": None, "schedule_interval_hours": None, "quality_drop_threshold": None}
SYSTEM = {"role": "system", "content": "You are a concise assistant."}


def _records(loop: Any) -> list[dict[str, Any]]:
    loop.logger.flush()
    with loop.store.read() as conn:
        rows = conn.execute(text("SELECT id, model, unit_id, messages_json, response, prompt_tokens, "
                                 "completion_tokens, experiment_id, arm, fallback_from, latency_ms "
                                 "FROM usage_records WHERE unit_id LIKE 'u-%'")).mappings().all()
    return [dict(r) for r in rows]


def _deployed_loop(make_loop: Any, tmp_path: Path, clock: Any, server: VLLMServer, adapter: Path,
                   alpaca_rows: list[dict[str, Any]]) -> Any:
    """A loop whose daemon deployed ``adapter`` as challenger ``base-ft1`` into vLLM (10% of traffic)."""
    def train_fn(data_path: str) -> dict[str, Any]:
        out = tmp_path / "trained" / Path(data_path).stem
        shutil.copytree(adapter, out)
        return {"model_path": str(out)}

    serving = {"engine": "vllm", "base_urls": [server.base_url], "timeout_s": 120}
    loop = make_loop(tmp_path, clock, train_fn=train_fn, trigger_config=_NO_TRIGGERS, serving=serving,
                     generator_config={"min_samples": 10, "include_existing_data": False},
                     ab_test_config={"assignment_seed": "openai-it"})
    for i, row in enumerate(alpaca_rows[:20]):
        loop.record_feedback(loop.log_usage(row["instruction"][:300], row["output"][:600], "base",
                                            quality_score=0.9, unit_id=f"seed-{i}"), 1)
    loop.logger.flush()
    retrain = loop.run_iteration(manual=True)["retrain"]
    assert retrain["status"] == "deployed", retrain
    assert "base-ft1" in server.models()
    return loop


def _cli(args: list[str], config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    return subprocess.run([sys.executable, "-m", "afs_continuous.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_traffic_through_the_openai_client(vllm_server: VLLMServer, tiny_adapter: Path, alpaca_rows: Any,
                                           tmp_path: Path, clock: Any, make_loop: Any, store_url: str) -> None:
    from afs_continuous.integrations.openai import AsyncOpenAI, OpenAI

    server = vllm_server
    loop = _deployed_loop(make_loop, tmp_path, clock, server, tiny_adapter, alpaca_rows)
    client = OpenAI(loop=loop, base_url=server.base_url + "/v1", api_key="EMPTY")

    def chat(unit: str, question: str, **kw: Any) -> Any:
        return client.chat.completions.create(model="ignored", messages=[SYSTEM, {"role": "user", "content": question}],
                                              user=unit, max_tokens=3, temperature=0.0, **kw)

    # 1. ~200 users split about 90/10; vLLM's model field names the routed adapter; every call logged
    completions = {f"u-{i}": chat(f"u-{i}", alpaca_rows[i % 100]["instruction"][:200]) for i in range(200)}
    routed = {unit: loop.route(unit) for unit in completions}
    for unit, completion in completions.items():
        assert completion.model == (SERVED_NAME if routed[unit].name == "base" else routed[unit].name)
        assert len(completion.record_id) == 32
    challengers = sum(v.name == "base-ft1" for v in routed.values())
    assert 8 <= challengers <= 34, challengers  # Binomial(200, 0.1): mean 20, sd 4.2; bounds ~ 3 sd
    records = {r["id"]: r for r in _records(loop)}
    assert len(records) == 200
    for unit, completion in completions.items():
        rec = records[completion.record_id]
        assert rec["unit_id"] == unit and rec["model"] == routed[unit].name
        assert json.loads(rec["messages_json"])[0] == SYSTEM
        assert rec["response"] == completion.choices[0].message.content
        assert rec["prompt_tokens"] == completion.usage.prompt_tokens > 0
        assert rec["completion_tokens"] == completion.usage.completion_tokens > 0
        assert rec["arm"] == routed[unit].arm and rec["experiment_id"] == routed[unit].experiment_id
        assert rec["latency_ms"] > 0 and rec["fallback_from"] is None
    assert loop.record_feedback(completions["u-0"].record_id, -1, comment="too short")

    # 2. streams: logged when they end, with the tokens vLLM reports (stream_options.include_usage)
    challenger_unit = next(u for u, v in routed.items() if v.name == "base-ft1")
    for unit in ("u-0", challenger_unit):
        with chat(unit, "Name a colour.", stream=True) as stream:
            chunks = list(stream)
        assert chunks and all(c.choices for c in chunks)  # the usage-only chunk is not passed on
        assert {c.model for c in chunks} == {routed[unit].name if unit == challenger_unit else SERVED_NAME}
        rec = {r["id"]: r for r in _records(loop)}[stream.record_id]
        assert rec["response"] == "".join(c.choices[0].delta.content or "" for c in chunks)
        assert rec["prompt_tokens"] > 0 and rec["completion_tokens"] > 0 and rec["model"] == routed[unit].name
    early = chat("u-1", "Name a colour.", stream=True)
    next(iter(early))
    early.close()  # closed before the end: not logged
    assert early.record_id is None

    async def async_calls() -> list[Any]:
        aclient = AsyncOpenAI(loop=loop, base_url=server.base_url + "/v1", api_key="EMPTY")
        done = await aclient.chat.completions.create(messages=[{"role": "user", "content": "Hi"}],
                                                     user=challenger_unit, max_tokens=2)
        stream = await aclient.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], user="u-2",
                                                       max_tokens=2, stream=True)
        async with stream:
            parts = [c async for c in stream]
        await aclient.close()
        return [done, stream, parts]

    done, astream, parts = asyncio.run(async_calls())
    assert done.model == "base-ft1" and parts and astream.record_id is not None
    assert len(_records(loop)) == 200 + 2 + 2

    # 3. an upstream error reaches the caller unchanged and nothing is logged
    with pytest.raises(openai.BadRequestError, match=r"maximum context length is 512 tokens"):
        chat("u-3", "Hi " * 30000)  # a prompt beyond --max-model-len 512: vLLM answers 400
    assert len(_records(loop)) == 204

    # 4. vLLM restarts mid-traffic (it forgets its runtime adapters): calls made while it is down fail
    # and are not logged; afterwards the champion answers the challenger's users, the fallbacks are
    # counted, the adapter is loaded again; every call that returned an answer is logged
    answered: dict[str, str] = {}  # record id -> unit
    failed: list[str] = []
    stop = threading.Event()
    after_restart = threading.Event()
    traffic_client = OpenAI(loop=loop, base_url=server.base_url + "/v1", api_key="EMPTY", max_retries=0)

    def traffic() -> None:
        i = n_after = 0
        while not stop.is_set():
            unit = f"u-{i % 200}"
            i += 1
            try:
                done = traffic_client.chat.completions.create(messages=[{"role": "user", "content": "Say hello."}],
                                                              user=unit, max_tokens=2)
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                failed.append(type(exc).__name__)
                time.sleep(0.2)  # pacing a client while the server is down, not waiting for a schedule
                continue
            answered[done.record_id] = unit
            if after_restart.is_set():
                n_after += 1
                if n_after >= 60:
                    return

    before = len(_records(loop))
    worker = threading.Thread(target=traffic)
    worker.start()
    deadline = time.monotonic() + 300
    while len(answered) < 20:  # until some traffic went through before the restart
        assert worker.is_alive() and time.monotonic() < deadline, f"traffic stopped after {len(answered)} calls"
        time.sleep(0.05)
    server.restart()
    after_restart.set()
    worker.join(300)
    stop.set()
    assert not worker.is_alive()
    records = {r["id"]: r for r in _records(loop)}
    assert len(records) == before + len(answered) and set(answered) <= set(records)  # no logged call lost
    falls = [r for r in records.values() if r["fallback_from"] is not None]
    assert falls and all(r["fallback_from"] == "base-ft1" and r["model"] == "base" and r["arm"] == "challenger"
                         for r in falls)
    assert loop._serving.wait_for_reloads(300)
    assert "base-ft1" in server.models()
    assert chat(challenger_unit, "Hi").model == "base-ft1"
    summary = loop.get_status_summary()["serving"]
    assert summary["fallbacks"] == len(falls) and summary["reloads"] >= 1

    # 5. afs-continuous promote sends every request to the adapter; rollback returns
    config = tmp_path / "config.json"
    db = {"database_url": store_url} if not store_url.startswith("sqlite") else {"db_path": str(tmp_path / "usage.db")}
    config.write_text(json.dumps({**db, "data_dir": str(tmp_path / "data"),
                                  "serving": {"engine": "vllm", "base_urls": [server.base_url]}}))
    assert "fallbacks" in _cli(["status"], config).stdout
    promoted = _cli(["promote", "base-ft1", "--reason", "openai-it"], config)
    assert promoted.returncode == 0, promoted.stderr
    assert {chat(f"u-{i}", "Hi").model for i in range(30)} == {"base-ft1"}
    rolled = _cli(["rollback", "--reason", "openai-it"], config)
    assert rolled.returncode == 0, rolled.stderr
    assert {chat(f"u-{i}", "Hi").model for i in range(30)} == {SERVED_NAME}

    # the session's server is shared: leave no adapter of this test loaded (the next test deploys its own base-ft1)
    loop.serving.unload(loop.registry.get("base-ft1"))
    assert "base-ft1" not in server.models()
