"""The reference LoRA trainer, for real: peft + transformers.Trainer on a tiny random Llama.

The tiny model and its tokenizer are built in a temp dir from real AlpacaEval
texts (no model hub: the hub is forced offline below, before transformers is
imported). One training run on 300 chat samples is shared by the module; the
whole file takes about 10 s on 2 CPU cores.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: it reads these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from afs_continuous.errors import ConfigError, TrainingError

pytestmark = [
    pytest.mark.slow,
    # peft 0.21 reads model.is_gradient_checkpointing, deprecated in transformers 5 (PeftModel.from_pretrained).
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

N_SAMPLES = 300


def _chat_line(row: dict[str, Any]) -> str:
    messages = [
        {"role": "user", "content": row["instruction"][:300]},
        {"role": "assistant", "content": row["output"][:600]},
    ]
    return json.dumps({"messages": messages})


@pytest.fixture(scope="module")
def rows(alpaca: Callable[[str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The first 300 AlpacaEval rows of FuseChat-Llama-3.2-3B-Instruct."""
    return alpaca("FuseChat-Llama-3.2-3B")[:N_SAMPLES]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from afs_continuous.training.tiny import build_tiny_model

    texts = [t for r in rows for t in (r["instruction"][:300], r["output"][:600])]
    return build_tiny_model(tmp_path_factory.mktemp("base") / "tiny", texts)


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(_chat_line(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tiny_model: Path, chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real run: ~270 train / 30 eval samples, 128 tokens, batch 8, 1 epoch (34 steps)."""
    pytest.importorskip("peft")
    pytest.importorskip("datasets")
    from afs_continuous.training.lora import LoRATrainingConfig, train_lora
    from afs_continuous.training.tiny import TINY_LORA_SETTINGS

    logs: list[dict[str, Any]] = []
    config = LoRATrainingConfig(
        base_model=str(tiny_model),
        output_dir=str(tmp_path_factory.mktemp("adapters")),
        max_length=128,
        batch_size=8,
        epochs=1,
        logging_steps=4,
        device="cpu",
        **TINY_LORA_SETTINGS,
    )
    started = time.perf_counter()
    result = train_lora(chat_data, config, on_log=logs.append)
    return {"result": result, "logs": logs, "config": config, "wall_s": time.perf_counter() - started}


def test_training_saves_an_adapter_and_reports_its_metrics(trained: dict[str, Any], tiny_model: Path) -> None:
    result = trained["result"]
    assert set(result) >= {"model_path", "train_loss", "eval_loss", "eval_loss_before", "samples", "eval_samples",
                           "epochs", "steps", "base_model", "lora", "duration_s"}
    run_dir = Path(result["model_path"])
    assert run_dir.parent == Path(trained["config"].output_dir)
    assert (run_dir / "adapter_config.json").is_file()
    assert (run_dir / "adapter_model.safetensors").is_file()
    assert (run_dir / "tokenizer.json").is_file()
    saved = json.loads((run_dir / "afs_training.json").read_text(encoding="utf-8"))
    assert saved["result"]["model_path"] == result["model_path"]
    assert saved["config"]["base_model"] == str(tiny_model)

    n_usable = result["samples"] + result["eval_samples"]  # a prompt longer than 128 tokens is skipped
    assert 290 <= n_usable <= N_SAMPLES
    assert result["eval_samples"] == round(0.1 * n_usable)
    assert result["steps"] == math.ceil(result["samples"] / 8)
    assert result["epochs"] == pytest.approx(1.0)
    assert result["base_model"] == str(tiny_model)
    assert result["lora"] == {"rank": 8, "alpha": 16, "dropout": 0.05,
                              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"]}
    assert result["device"] == "cpu"
    assert result["n_trainable_params"] > 0
    assert all(math.isfinite(result[k]) for k in ("train_loss", "eval_loss", "eval_loss_before"))
    assert 0 < result["duration_s"] < 60
    json.dumps(result)  # storable as registry metrics


def test_loss_falls(trained: dict[str, Any]) -> None:
    result, logs = trained["result"], trained["logs"]
    # Random init: the base loss is about ln(vocab) = ln(2000) = 7.6 nats.
    assert 7.0 < result["eval_loss_before"] < 8.5
    assert result["eval_loss"] < result["eval_loss_before"] - 0.3
    assert len(logs) >= 5
    assert [e["step"] for e in logs] == sorted({e["step"] for e in logs})
    assert set(logs[0]) == {"step", "loss", "learning_rate", "epoch"}
    assert logs[-1]["loss"] < logs[0]["loss"]
    # the curve the dashboard draws: every logged loss, and the eval loss before and after training
    assert result["loss_curve"] == [{"step": e["step"], "loss": e["loss"]} for e in logs]
    assert result["eval_curve"] == [{"step": 0, "eval_loss": result["eval_loss_before"]},
                                    {"step": result["steps"], "eval_loss": result["eval_loss"]}]


def test_adapter_loads_back_with_peft(trained: dict[str, Any], tiny_model: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = trained["result"]["model_path"]
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    with torch.no_grad():
        base_logits = base(ids).logits
    model = PeftModel.from_pretrained(base, path)
    assert model.peft_config["default"].r == 8
    with torch.no_grad():
        tuned_logits = model(ids).logits
    assert not torch.allclose(base_logits, tuned_logits)


def test_loss_is_computed_on_assistant_tokens_only(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from afs_continuous.training._data import _tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."}]
    sample = _tokenize(tokenizer, messages, max_length=128, train_on_prompt=False)
    assert sample is not None
    trained_ids = [t for t in sample["labels"] if t != -100]
    assert tokenizer.decode(trained_ids) == "Paris.<|eos|>\n"
    everything = _tokenize(tokenizer, messages, max_length=128, train_on_prompt=True)
    assert everything is not None and everything["labels"] == everything["input_ids"] == sample["input_ids"]
    # Truncated before the answer: nothing to learn, the sample is dropped.
    assert _tokenize(tokenizer, messages, max_length=6, train_on_prompt=False) is None


MULTI_TURN = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "Which CPU does the SNES use?"},
    {"role": "assistant", "content": "A Ricoh 5A22."},
    {"role": "user", "content": "How fast is it?"},
    {"role": "assistant", "content": "Up to 3.58 MHz."},
    {"role": "tool", "content": "benchmark: 3.58"},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]


def _label_runs(sample: dict[str, list[int]]) -> list[list[int]]:
    """The trained (label != -100) tokens, as runs of consecutive positions."""
    runs: list[list[int]] = []
    previous = -100
    for tok, label in zip(sample["input_ids"], sample["labels"]):
        if label != -100:
            assert label == tok
            if previous == -100:
                runs.append([])
            runs[-1].append(tok)
        previous = label
    return runs


def test_every_assistant_turn_of_a_conversation_is_trained_and_nothing_else(tiny_model: Path) -> None:
    """Issue 9 item 3: the system prompt, user and tool turns and the role markers are -100; each of the
    three assistant turns (its text and end-of-turn token) is a label."""
    from transformers import AutoTokenizer

    from afs_continuous.training._data import _tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    sample = _tokenize(tokenizer, MULTI_TURN, max_length=256, train_on_prompt=False)
    assert sample is not None
    runs = [tokenizer.decode(run) for run in _label_runs(sample)]
    assert runs == ["A Ricoh 5A22.<|eos|>\n", "Up to 3.58 MHz.<|eos|>\n", "You are welcome.<|eos|>\n"]
    n_assistant = sum(len(r) for r in _label_runs(sample))
    assert sample["labels"].count(-100) == len(sample["input_ids"]) - n_assistant


def test_a_template_that_is_not_prefix_stable_still_masks_the_prompt(tiny_model: Path) -> None:
    """A template that closes the conversation with a final marker renders no prefix as a prefix; the
    assistant turns are then found by their text, and the prompt is still never trained on."""
    from transformers import AutoTokenizer

    from afs_continuous.training._data import _tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
        "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% else %}<|system|>end"
        "{% endif %}"
    )
    sample = _tokenize(tokenizer, MULTI_TURN, max_length=256, train_on_prompt=False)
    assert sample is not None
    runs = [tokenizer.decode(run) for run in _label_runs(sample)]
    assert runs == ["A Ricoh 5A22.<|eos|>", "Up to 3.58 MHz.<|eos|>", "You are welcome.<|eos|>"]
    # a template that rewrites the answers cannot be masked safely: the sample is skipped, never trained on whole
    tokenizer.chat_template = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] | upper }}"
                               "\n{% endfor %}{% if not add_generation_prompt %}END{% endif %}")
    assert _tokenize(tokenizer, MULTI_TURN, max_length=256, train_on_prompt=False) is None


def test_make_train_fn_trains_on_alpaca_and_prompt_completion_lines(
    tiny_model: Path, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    from afs_continuous.training.lora import LoRATrainFn, make_train_fn

    lines = [json.dumps({"instruction": r["instruction"][:200], "output": r["output"][:300]}) for r in rows[:20]]
    lines += [json.dumps({"prompt": r["instruction"][:200], "completion": r["output"][:300]}) for r in rows[20:40]]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    train_fn = make_train_fn({"base_model": str(tiny_model), "output_dir": str(tmp_path / "out"), "max_steps": 3,
                              "validation_fraction": 0, "max_length": 64, "batch_size": 4, "device": "cpu"})
    assert isinstance(train_fn, LoRATrainFn)
    result = train_fn(str(data))
    assert (result["steps"], result["samples"], result["eval_samples"]) == (3, 40, 0)
    assert result["eval_loss"] is None and result["eval_loss_before"] is None
    assert result["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]  # llama default
    assert Path(result["model_path"]).parent == tmp_path / "out"


def test_adapter_folders_are_private_under_umask_022(tiny_model: Path, chat_data: Path, tmp_path: Path) -> None:
    """Adapters are learned from user traffic: the folders the trainer creates are 0700."""
    import os
    import stat

    from afs_continuous.training.lora import train_lora

    old = os.umask(0o022)
    try:
        result = train_lora(chat_data, {"base_model": str(tiny_model), "output_dir": str(tmp_path / "out" / "adapters"),
                                        "max_steps": 1, "validation_fraction": 0, "max_length": 32, "batch_size": 2,
                                        "device": "cpu"})
    finally:
        os.umask(old)
    run_dir = Path(result["model_path"])
    for folder in (tmp_path / "out", tmp_path / "out" / "adapters", run_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_a_gpt2_without_chat_template_or_pad_token_trains(
    tiny_model: Path, chat_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from afs_continuous.training.lora import train_lora

    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    tokenizer.chat_template = None
    tokenizer.pad_token = None
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")

    result = train_lora(chat_data, {"base_model": str(tmp_path / "gpt2"), "output_dir": str(tmp_path / "out"),
                                    "max_steps": 2, "max_length": 128, "batch_size": 4, "device": "cpu"})
    assert result["lora"]["target_modules"] == ["c_attn"]  # GPT-2 default (a Conv1D)
    assert "no chat template" in caplog.text
    template = (Path(result["model_path"]) / "chat_template.jinja").read_text(encoding="utf-8")
    assert "### {{ message['role'] }}:" in template  # the fallback is saved with the adapter


def test_a_typo_in_a_config_key_names_the_key() -> None:
    from afs_continuous.training.lora import LoRATrainingConfig, make_train_fn

    with pytest.raises(ConfigError, match="'lerning_rate'.*did you mean 'learning_rate'"):
        LoRATrainingConfig(base_model="m", lerning_rate=1e-3)
    with pytest.raises(ConfigError, match="unknown key 'rnak'"):
        make_train_fn({"base_model": "m", "rnak": 4})
    with pytest.raises(ConfigError, match="'rank'.*greater than 0"):
        LoRATrainingConfig(base_model="m", rank=0)
    with pytest.raises(ConfigError, match="'validation_fraction'"):
        LoRATrainingConfig(base_model="m", validation_fraction=0.5)
    with pytest.raises(ConfigError, match="'base_model' is required"):
        LoRATrainingConfig()


def test_missing_or_empty_data_raises_training_error(tiny_model: Path, tmp_path: Path) -> None:
    from afs_continuous.training.lora import LoRATrainingConfig, train_lora

    config = LoRATrainingConfig(base_model=str(tiny_model), output_dir=str(tmp_path / "out"), device="cpu")
    with pytest.raises(TrainingError, match="not found: .*nope.jsonl"):
        train_lora(tmp_path / "nope.jsonl", config)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(TrainingError, match="empty"):
        train_lora(empty, config)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_chat_line({"instruction": "a", "output": "b"}) + '\n{"text": "no roles"}\n', encoding="utf-8")
    with pytest.raises(TrainingError, match=r"bad.jsonl:2: unrecognised sample with keys \['text'\]"):
        train_lora(bad, config)
    assert not (tmp_path / "out").exists()


def test_missing_base_model_raises_training_error_naming_the_path(chat_data: Path, tmp_path: Path) -> None:
    from afs_continuous.training.lora import LoRATrainingConfig, train_lora

    missing = tmp_path / "no-such-model"
    config = LoRATrainingConfig(base_model=str(missing), output_dir=str(tmp_path / "out"), device="cpu")
    with pytest.raises(TrainingError, match="base model directory not found: .*no-such-model"):
        train_lora(chat_data, config)


def test_training_lora_in_a_loop_config_trains_from_python_under_the_data_folder(
    tiny_model: Path, rows: list[dict[str, Any]], tmp_path: Path, clock: Any, make_loop: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 11 items 17 and 20: ``LoopConfig(training={"lora": ...})`` trains from ``run_iteration()``; the
    adapters go under ``<data_dir>/adapters`` (not the current directory), named from the loop's clock."""
    monkeypatch.chdir(tmp_path)
    lora = {"base_model": str(tiny_model), "max_steps": 2, "validation_fraction": 0, "max_length": 64, "logging_steps": 1,
            "batch_size": 4, "device": "cpu"}
    loop = make_loop(tmp_path, clock, training={"lora": lora},
                     trigger_config={"min_new_samples": None, "schedule_interval_hours": None,
                                     "quality_drop_threshold": None},
                     generator_config={"min_samples": 5, "include_existing_data": False})
    for r in rows[:8]:
        loop.record_feedback(loop.log_usage(r["instruction"][:200], r["output"][:300], "base", quality_score=0.9), 1)
    assert loop.logger.flush(timeout_s=30)
    retrain = loop.run_iteration(manual=True)["retrain"]
    assert retrain["status"] == "deployed", retrain
    adapter = Path(retrain["model_path"])
    assert adapter == tmp_path / "data" / "adapters" / f"run-00001-{clock():%Y%m%dT%H%M%SZ}"
    assert (adapter / "adapter_config.json").is_file()
    assert not (tmp_path / "adapters").exists()
    # the loss curve reaches the run's stored metrics (what the dashboard draws); no validation split, no eval curve
    stored = loop.runs.get(retrain["run_id"]).metrics
    assert [e["step"] for e in stored["loss_curve"]] == [1, 2] and stored["eval_curve"] == []


def test_adapter_folders_are_named_from_the_clock_and_never_reused(tiny_model: Path, chat_data: Path,
                                                                    tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from afs_continuous.training.lora import make_train_fn

    now = datetime(2026, 11, 29, 15, 30, tzinfo=timezone.utc)
    train_fn = make_train_fn({"base_model": str(tiny_model), "max_steps": 1, "validation_fraction": 0,
                              "max_length": 32, "batch_size": 4, "device": "cpu"},
                             default_output_dir=tmp_path / "adapters", clock=lambda: now)
    first, second = train_fn(str(chat_data))["model_path"], train_fn(str(chat_data))["model_path"]
    assert first == str(tmp_path / "adapters" / "train-20261129T153000Z")
    assert second == first + "-2"
