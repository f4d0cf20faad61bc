"""One contract every serving engine passes (as river runs shared checks over every estimator).

Parametrized over ``none`` (no engine: nothing is loaded, versions are served under their own
names) and ``vllm`` (a real vLLM server, see conftest.py; skipped with the reason without one).
The adapters are real: trained by the reference LoRA trainer on AlpacaEval conversations.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from afs_continuous.config import ServingConfig
from afs_continuous.registry import ModelVersion, VersionStatus
from afs_continuous.serving import Engine, EngineError, make_engine

from .conftest import SERVED_NAME, VLLMServer, http_json, train_adapter

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def version(name: str, path: Path | None, run_id: int | None = 1) -> ModelVersion:
    return ModelVersion(name=name, path=str(path) if path else None, status=VersionStatus.CHALLENGER,
                        created_at=NOW, training_run_id=run_id if path else None)


@pytest.fixture(params=["none", "vllm"])
def engine(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, VLLMServer | None]]:
    if request.param == "none":
        eng = make_engine(ServingConfig())
        yield eng, None
    else:
        server: VLLMServer = request.getfixturevalue("vllm_server")
        eng = make_engine(ServingConfig(engine="vllm", base_urls=[server.base_url], timeout_s=120))
        yield eng, server
    eng.close()


def test_load_is_idempotent_and_the_adapter_is_listed_and_generates(
        engine: tuple[Engine, VLLMServer | None], tiny_adapter: Path) -> None:
    eng, server = engine
    v = version("contract-a", tiny_adapter)
    eng.load(v)
    eng.load(v)  # idempotent: loading again succeeds (and checks again)
    assert eng.served_model_name(v) == "contract-a"
    if server is None:
        assert eng.served_models() == {}
        assert eng.ensure_loaded(v) is False
        return
    assert eng.served_models() == {server.base_url: [SERVED_NAME, "contract-a"]}
    assert eng.ensure_loaded(v) is False  # listed everywhere: nothing to do
    status, body = server.complete("contract-a")
    assert status == 200 and body["model"] == "contract-a"
    base_status, base = server.complete(SERVED_NAME)
    assert base_status == 200
    eng.unload(v)
    eng.unload(v)  # idempotent too
    assert "contract-a" not in server.models()
    status, body = server.complete("contract-a")
    assert status == 404, body
    assert eng.ensure_loaded(v) is True  # as after an engine restart: loaded again
    assert "contract-a" in server.models()
    eng.unload(v)


def test_a_broken_adapter_folder_raises_engine_error_naming_the_replica_and_why(
        engine: tuple[Engine, VLLMServer | None], tiny_adapter: Path, tmp_path: Path) -> None:
    eng, server = engine
    broken = tmp_path / "broken"
    shutil.copytree(tiny_adapter, broken)
    (broken / "adapter_config.json").write_text('{"r": 8', encoding="utf-8")  # truncated JSON
    v = version("contract-broken", broken)
    if server is None:
        eng.load(v)  # no engine: nothing is loaded, nothing can refuse
        return
    with pytest.raises(EngineError, match=r"replica http://127\.0\.0\.1:\d+ refused to load adapter 'contract-broken'") as info:
        eng.load(v)
    assert info.value.replica == server.base_url
    assert "Expecting" in (info.value.engine_message or "")  # vLLM's own message (the JSON error)
    assert "contract-broken" not in server.models()


def test_an_adapter_above_max_lora_rank_is_refused_with_the_engines_reason(
        engine: tuple[Engine, VLLMServer | None], tiny_base: Path, alpaca_rows: list[dict[str, Any]],
        tmp_path: Path) -> None:
    eng, server = engine
    if server is None:
        pytest.skip("engine none loads nothing; the rank limit is vLLM's --max-lora-rank")
    big = train_adapter(tiny_base, alpaca_rows[:16], tmp_path / "r16", rank=16, epochs=0.1)
    with pytest.raises(EngineError, match="LoRA rank 16 is greater than max_lora_rank 8") as info:
        eng.load(version("contract-r16", big))
    assert info.value.replica == server.base_url


def test_served_model_name_of_a_base_model_version(engine: tuple[Engine, VLLMServer | None], tiny_base: Path) -> None:
    eng, server = engine
    base = version("base", None)
    full = ModelVersion(name="base2", path=str(tiny_base), status=VersionStatus.CHAMPION, created_at=NOW)
    if server is None:
        assert eng.served_model_name(base) == "base"
        assert eng.served_model_name(full) == "base2"
        return
    assert eng.served_model_name(base) == SERVED_NAME  # discovered from GET /v1/models
    assert eng.served_model_name(full) == SERVED_NAME  # a full model folder is the base, not an adapter
    eng.load(base)  # checks a generation through the base model
    eng.unload(base)  # never unloads the base model
    assert SERVED_NAME in server.models()


def test_the_reference_trainers_default_targets_load_too(
        engine: tuple[Engine, VLLMServer | None], tiny_base: Path, alpaca_rows: list[dict[str, Any]],
        tmp_path: Path) -> None:
    """Default llama targets (q/k/v/o_proj) and 'all-linear' (MLP too) both load into vLLM 0.32."""
    eng, server = engine
    if server is None:
        pytest.skip("engine none loads nothing")
    for name, targets in (("contract-qkvo", None), ("contract-all", "all-linear")):
        path = train_adapter(tiny_base, alpaca_rows[:16], tmp_path / name, target_modules=targets,
                             learning_rate=2e-4, epochs=0.1)
        config = json.loads((path / "adapter_config.json").read_text())
        assert "lm_head" not in config["target_modules"]
        v = version(name, path)
        eng.load(v)
        status, body = server.complete(name)
        assert status == 200 and body["model"] == name
        eng.unload(v)


def test_an_unreachable_replica_raises_engine_error_naming_it(engine: tuple[Engine, VLLMServer | None],
                                                              tiny_adapter: Path) -> None:
    eng, server = engine
    if server is None:
        return  # nothing to reach
    dead = make_engine(ServingConfig(engine="vllm", base_urls=[server.base_url, "http://127.0.0.1:9"], timeout_s=10))
    try:
        with pytest.raises(EngineError, match=r"replica http://127\.0\.0\.1:9 cannot be reached") as info:
            dead.load(version("contract-half", tiny_adapter))
        assert info.value.replica == "http://127.0.0.1:9"
        assert "contract-half" not in server.models()  # loaded on the first replica, then unloaded again
    finally:
        dead.close()


def test_vllm_applies_the_lm_head_update_of_the_tiny_settings(engine: tuple[Engine, VLLMServer | None],
                                                              tiny_adapter: Path, tmp_path: Path) -> None:
    """The tiny settings adapt lm_head too; vLLM 0.32 loads that and uses it (greedy output differs without it)."""
    eng, server = engine
    if server is None:
        pytest.skip("engine none generates nothing")
    from safetensors.torch import load_file, save_file

    config = json.loads((tiny_adapter / "adapter_config.json").read_text())
    assert "lm_head" in config["target_modules"]
    stripped = tmp_path / "no-lm-head"
    shutil.copytree(tiny_adapter, stripped)
    weights = load_file(str(stripped / "adapter_model.safetensors"))
    assert any("lm_head" in k for k in weights)
    save_file({k: v for k, v in weights.items() if "lm_head" not in k}, str(stripped / "adapter_model.safetensors"))
    config["target_modules"] = [m for m in config["target_modules"] if m != "lm_head"]
    (stripped / "adapter_config.json").write_text(json.dumps(config))
    with_head, without = version("contract-head", tiny_adapter), version("contract-nohead", stripped)
    for v in (with_head, without):
        eng.load(v)
    outputs = {}
    for name in ("contract-head", "contract-nohead"):
        status, body = http_json("POST", server.base_url + "/v1/completions",
                                 {"model": name, "prompt": "The best way to", "max_tokens": 8, "temperature": 0.0,
                                  "logprobs": 1})
        assert status == 200, body
        choice = body["choices"][0]
        outputs[name] = (choice["text"], choice["logprobs"]["token_logprobs"])
    assert outputs["contract-head"] != outputs["contract-nohead"]
    for v in (with_head, without):
        eng.unload(v)
