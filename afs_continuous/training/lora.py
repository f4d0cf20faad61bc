"""The reference LoRA trainer: fine-tune a local causal LM on chat JSONL.

:func:`train_lora` trains one LoRA adapter on a data file and returns a result
dict; :func:`make_train_fn` wraps it as the ``train_fn(data_path) -> dict`` the
continuous-learning loop calls. :class:`LoRATrainingConfig` holds every knob.

Importing this module is cheap: ``torch``, ``transformers``, ``peft`` and
``datasets`` are imported inside :func:`train_lora`, so a CLI or server can
validate a config without loading them. Reading and tokenizing the data
lives in :mod:`afs_continuous.training._data`; :func:`load_chat_records` is
re-exported here.

References:
    Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
    arXiv 2106.09685. peft LoRA docs:
    https://huggingface.co/docs/peft/developer_guides/lora
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import json
import logging
import math
import os
import pathlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from afs_continuous._io import make_private_dirs
from afs_continuous.errors import ConfigError, TrainingError
from afs_continuous.training._data import _build_splits, load_chat_records
from afs_continuous.training._trainer import _make_emitter, _run_trainer

__all__ = [
    "Device",
    "LoRATrainFn",
    "LoRATrainingConfig",
    "default_target_modules",
    "load_chat_records",
    "make_train_fn",
    "train_lora",
]

logger = logging.getLogger("afs_continuous.training")

LogCallback = Callable[[dict[str, Any]], None]
Clock = Callable[[], _dt.datetime]

#: LoRA target modules per ``model.config.model_type``; others get "all-linear".
_TARGETS_BY_MODEL_TYPE: dict[str, list[str]] = {
    **{
        t: ["q_proj", "k_proj", "v_proj", "o_proj"]
        for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2")
    },
    "gpt2": ["c_attn"],
}

#: Chat template used when the base tokenizer has none (saved with the adapter).
_FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "### {{ message['role'] }}:\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)


class Device(StrEnum):
    """Where to train. ``auto`` picks ``cuda`` when available, else ``cpu``."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class LoRATrainingConfig(BaseModel):
    """Validated settings of one LoRA training run.

    Each field's meaning, unit and default is in its ``description`` (one
    copy, so it cannot drift; ``LoRATrainingConfig.model_json_schema()``
    lists them). Unknown keys and out-of-range values raise
    :class:`~afs_continuous.errors.ConfigError` naming the key, at
    construction and on assignment. Round-trips through
    ``model_dump_json()`` / ``model_validate_json()``.

    The default ``learning_rate`` (2e-4) suits real pretrained models. The
    randomly initialised tiny model of :mod:`afs_continuous.training.tiny`
    needs :data:`~afs_continuous.training.tiny.TINY_LORA_SETTINGS` (3e-3 and
    ``lm_head`` among the targets) for its loss to fall visibly in one short
    epoch.

    Raises:
        ConfigError: Unknown key, wrong type or value out of range.

    Example:
        >>> cfg = LoRATrainingConfig(base_model="models/base", rank=16)
        >>> (cfg.rank, cfg.alpha, cfg.device.value)
        (16, 16, 'auto')
        >>> LoRATrainingConfig(base_model="models/base", lerning_rate=1e-3)
        Traceback (most recent call last):
        ...
        afs_continuous.errors.ConfigError: invalid LoRATrainingConfig: unknown key 'lerning_rate' (did you mean 'learning_rate'?)
    """

    # strict: a config file's "8" or true is not a rank (ints are still accepted for floats)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    base_model: str = Field(
        min_length=1,
        description="Local directory of the base model and its tokenizer (as written by "
        "save_pretrained). Loaded with local_files_only=True; never downloaded.",
    )
    output_dir: str | None = Field(
        None,
        min_length=1,
        description="Parent directory of the runs; each run saves its adapter into a new "
        "'<data file name>-<UTC timestamp>' subdirectory of it (e.g. run-00007-20261129T153000Z). "
        "None: '<data_dir>/adapters' when the loop builds the trainer from training.lora, "
        "'./adapters' (made absolute) when train_lora is called directly.",
    )
    rank: int = Field(8, gt=0, description="LoRA rank r (dimension of the low-rank update).")
    alpha: int = Field(16, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout probability on the LoRA input, in [0, 1).")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Module names to adapt. None: by model_type (llama, mistral, qwen2, ...: "
        "q/k/v/o_proj; gpt2: c_attn; otherwise 'all-linear').",
    )
    epochs: float = Field(
        1.0, gt=0.0, allow_inf_nan=False, description="Passes over the training split (fractions allowed)."
    )
    learning_rate: float = Field(
        2e-4, gt=0.0, allow_inf_nan=False, description="Peak AdamW learning rate, linearly decayed to 0."
    )
    batch_size: int = Field(4, ge=1, description="Samples per device per forward pass (train and eval).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimizer step.")
    max_length: int = Field(512, ge=2, description="Longest sample in tokens; longer ones are truncated on the right.")
    validation_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="Fraction of samples held out to evaluate before and after training, in [0, 0.5); 0 disables eval.",
    )
    seed: int = Field(0, ge=0, description="Seed of the LoRA initialisation, the split, shuffling and dropout.")
    logging_steps: int = Field(5, ge=1, description="Report the training loss every this many optimizer steps.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps; overrides epochs. None: no cap."
    )
    device: Device = Field(Device.AUTO, strict=False, description="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'mps'.")
    train_on_prompt: bool = Field(
        False,
        description="Compute the loss on every token. False: only on the tokens of every assistant turn "
        "(system prompt, user and tool turns masked; a sample whose assistant turns cannot be located is skipped).",
    )

    @field_validator("base_model", "output_dir", mode="before")
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("target_modules", mode="before")
    @classmethod
    def _check_target_modules(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            raise ValueError("a single string must be 'all-linear'; name modules as a list, e.g. ['q_proj', 'v_proj']")
        if isinstance(value, list | tuple) and (not value or not all(isinstance(v, str) and v for v in value)):
            raise ValueError("must be a non-empty list of module names")
        return value

    def __init__(self, **data: Any) -> None:
        with _config_errors():
            super().__init__(**data)

    def __setattr__(self, name: str, value: Any) -> None:
        with _config_errors():
            super().__setattr__(name, value)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> LoRATrainingConfig:  # type: ignore[override]
        """Validate a mapping into a config; errors raise ``ConfigError``."""
        with _config_errors():
            return super().model_validate(obj, **kwargs)

    @classmethod
    def model_validate_json(  # type: ignore[override]
        cls, json_data: str | bytes | bytearray, **kwargs: Any
    ) -> LoRATrainingConfig:
        """Validate a JSON document into a config; errors raise ``ConfigError``."""
        with _config_errors():
            return super().model_validate_json(json_data, **kwargs)


@contextlib.contextmanager
def _config_errors() -> Iterator[None]:
    """Turn a pydantic ``ValidationError`` into a ``ConfigError`` naming each bad key."""
    try:
        yield
    except ValidationError as exc:
        # model_validate() runs the overridden __init__, whose ConfigError pydantic wraps: unwrap it.
        for err in exc.errors():
            inner = (err.get("ctx") or {}).get("error")
            if isinstance(inner, ConfigError):
                raise inner from None
        raise ConfigError(_describe_validation_error(exc)) from None


def _describe_validation_error(exc: ValidationError) -> str:
    fields = list(LoRATrainingConfig.model_fields)
    problems = []
    seen: set[str] = set()
    for err in exc.errors():
        # Only the top-level key: a union's alternatives (list[str], 'all-linear') add noise.
        key = str(err["loc"][0]) if err["loc"] else "<config>"
        if key in seen:
            continue
        seen.add(key)
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(fields)}"
            problems.append(f"unknown key {key!r} ({hint})")
        elif err["type"] == "missing":
            problems.append(f"{key!r} is required")
        else:
            problems.append(f"{key!r}: {err['msg']}, got {err.get('input')!r}")
    return "invalid LoRATrainingConfig: " + "; ".join(problems)


def default_target_modules(model_type: str) -> list[str] | Literal["all-linear"]:
    """LoRA target modules for a ``model.config.model_type``.

    Args:
        model_type (str): e.g. ``"llama"``, ``"qwen2"``, ``"gpt2"``.

    Returns:
        list[str] | "all-linear": attention projections for known
        architectures, else peft's ``"all-linear"`` (every linear layer but
        the output head).

    Example:
        >>> default_target_modules("qwen2")
        ['q_proj', 'k_proj', 'v_proj', 'o_proj']
        >>> default_target_modules("some-new-arch")
        'all-linear'
    """
    targets = _TARGETS_BY_MODEL_TYPE.get(model_type)
    return list(targets) if targets is not None else "all-linear"


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' weight-loading bars (stderr noise in a CLI), then restore."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _resolve_device(device: Device) -> str:
    import torch

    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False; use device='auto' or 'cpu'")
    if device is Device.MPS and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but torch.backends.mps.is_available() is False; use 'auto' or 'cpu'")
    return device.value


def train_lora(
    data_path: str | os.PathLike[str],
    config: LoRATrainingConfig | Mapping[str, Any],
    *,
    on_log: LogCallback | None = None,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Train one LoRA adapter on a chat JSONL file and save it.

    Loads the base model and tokenizer from the local directory
    ``config.base_model``, wraps the model with a peft ``LoraConfig``, renders
    every sample with the tokenizer's chat template (a plain ``### role:``
    template is set when it has none), holds out a seeded validation split,
    evaluates it, trains with ``transformers.Trainer``, evaluates again and
    saves the adapter and tokenizer into a new subdirectory of
    ``config.output_dir``, with the result dict as ``afs_training.json``.

    Args:
        data_path (str | os.PathLike): JSONL file in any format
            :func:`load_chat_records` reads.
        config (LoRATrainingConfig | Mapping): Run settings; a mapping is
            validated into a :class:`LoRATrainingConfig`.
        on_log (Callable[[dict], None] | None, default None): Called at every
            logged training step with ``{"step": int, "loss": float,
            "learning_rate": float, "epoch": float}``. None: each is logged to
            the ``afs_continuous.training`` logger at INFO (at DEBUG when a
            callback is given).
        clock (Callable[[], datetime] | None, default None): Current UTC
            time for the adapter folder's name ``<data file stem>-<UTC
            %Y%m%dT%H%M%SZ>`` (``-2``, ``-3``, ... appended when it exists);
            the loop passes its own clock. None: the wall clock.

    Returns:
        dict: ``{"model_path": str (the adapter directory), "train_loss":
        float (mean over the run), "eval_loss": float | None (after
        training), "eval_loss_before": float | None (the base model, before
        training), "samples": int (training samples), "eval_samples": int,
        "epochs": float (epochs actually run), "steps": int (optimizer
        steps), "base_model": str, "lora": {"rank", "alpha", "dropout",
        "target_modules"}, "device": str, "n_trainable_params": int,
        "duration_s": float (wall clock, loading included), "loss_curve":
        [{"step": int, "loss": float}] (every logged training loss, each the
        mean since the previous log, ``logging_steps`` apart), "eval_curve":
        [{"step": int, "eval_loss": float}] (step 0 before training, the last
        step after; empty without a validation split)}``. Losses are mean
        token cross-entropy in nats; the eval losses are None when
        ``validation_fraction`` is 0. The loop stores this dict as the run's
        metrics, which the dashboard (docs/dashboard.md) draws.

    Raises:
        TrainingError: The data file is missing, empty or malformed, no
            sample has anything to train on, the base model directory is
            missing or does not load, or training fails or diverges (NaN).
        ConfigError: ``config`` is invalid, or ``config.device`` names a
            device that is not available.

    References:
        Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
        arXiv 2106.09685; peft docs, https://huggingface.co/docs/peft.
    """
    started = time.perf_counter()
    config = _as_config(config)
    records = load_chat_records(data_path)
    base_path = pathlib.Path(config.base_model).expanduser()
    if not base_path.is_dir():
        raise TrainingError(
            f"base model directory not found: '{base_path}' (base_model must be a local directory "
            "written by save_pretrained; nothing is downloaded)"
        )
    device = _resolve_device(config.device)
    tokenizer, model = _load_base(base_path)
    train_set, eval_set = _build_splits(records, tokenizer, config, data_path)
    model, targets = _apply_lora(model, config, base_path)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    try:
        eval_before, train_loss, eval_after, trainer_state = _run_trainer(
            model, tokenizer, train_set, eval_set, config, device, _make_emitter(on_log)
        )
    except Exception as exc:
        raise TrainingError(f"LoRA training on '{data_path}' failed: {exc}") from exc
    if not math.isfinite(train_loss) or (eval_after is not None and not math.isfinite(eval_after)):
        raise TrainingError(
            f"LoRA training on '{data_path}' diverged (train_loss={train_loss}, eval_loss={eval_after}); "
            f"lower learning_rate (now {config.learning_rate})"
        )

    run_dir = _new_run_dir(config, data_path, clock)
    make_private_dirs(run_dir.parent)  # adapters learned from user traffic: owner only
    run_dir.mkdir(mode=0o700)
    # The vocabulary is never resized, so only the LoRA weights need saving (not
    # a full copy of lm_head / embed_tokens when those are targeted).
    model.save_pretrained(run_dir, save_embedding_layers=False)
    tokenizer.save_pretrained(run_dir)
    result: dict[str, Any] = {
        "model_path": str(run_dir),
        "train_loss": train_loss,
        "eval_loss": eval_after,
        "eval_loss_before": eval_before,
        "samples": len(train_set),
        "eval_samples": 0 if eval_set is None else len(eval_set),
        "epochs": float(trainer_state.epoch or 0.0),
        "steps": int(trainer_state.global_step),
        "base_model": str(config.base_model),
        "lora": {"rank": config.rank, "alpha": config.alpha, "dropout": config.dropout, "target_modules": targets},
        "device": device,
        "n_trainable_params": int(n_trainable),
        "duration_s": time.perf_counter() - started,
        "loss_curve": [{"step": int(e["step"]), "loss": float(e["loss"])}
                       for e in trainer_state.log_history if "loss" in e and "step" in e],
        "eval_curve": [{"step": s, "eval_loss": v} for s, v in ((0, eval_before), (int(trainer_state.global_step),
                                                                               eval_after)) if v is not None],
    }
    (run_dir / "afs_training.json").write_text(
        json.dumps({"result": result, "config": config.model_dump(mode="json")}, indent=2) + "\n", encoding="utf-8"
    )
    logger.info(
        "trained LoRA adapter %s: %d samples, %d steps, eval loss %s -> %s, %.1f s",
        run_dir, result["samples"], result["steps"], eval_before, eval_after, result["duration_s"],
    )
    return result


def _new_run_dir(config: LoRATrainingConfig, data_path: str | os.PathLike[str], clock: Clock | None) -> pathlib.Path:
    """``<output_dir>/<data file stem>-<UTC time of clock>``, suffixed ``-2``, ``-3``, ... when taken.

    Deterministic for a given clock (no random part), so runs under a manual
    clock name their adapters reproducibly.
    """
    now = clock() if clock is not None else _dt.datetime.now(_dt.UTC)
    parent = pathlib.Path(config.output_dir or "adapters").expanduser().absolute()
    stem = pathlib.Path(data_path).stem or "adapter"
    base = f"{stem}-{now.astimezone(_dt.UTC):%Y%m%dT%H%M%SZ}"
    run_dir, n = parent / base, 1
    while run_dir.exists():
        n += 1
        run_dir = parent / f"{base}-{n}"
    return run_dir


def _load_base(base_path: pathlib.Path) -> tuple[Any, Any]:
    """Tokenizer (with a pad token and a chat template) and model from a local directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _no_progress_bars():
        try:
            tokenizer = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(base_path, local_files_only=True)
        except Exception as exc:
            raise TrainingError(f"cannot load base model from '{base_path}': {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        raise TrainingError(f"tokenizer of '{base_path}' has neither a pad nor an eos token")
    if tokenizer.chat_template is None:
        logger.warning("tokenizer of %s has no chat template; using a plain '### role:' template", base_path)
        tokenizer.chat_template = _FALLBACK_CHAT_TEMPLATE
    return tokenizer, model


def _apply_lora(model: Any, config: LoRATrainingConfig, base_path: pathlib.Path) -> tuple[Any, list[str] | str]:
    """Wrap ``model`` with a seeded LoRA adapter; returns it and the resolved target modules."""
    import transformers
    from peft import LoraConfig, get_peft_model

    model_type = getattr(model.config, "model_type", "")
    targets = config.target_modules if config.target_modules is not None else default_target_modules(model_type)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        fan_in_fan_out=model_type == "gpt2",  # GPT-2 stores its projections as Conv1D
    )
    transformers.set_seed(config.seed)
    try:
        with warnings.catch_warnings():
            # peft 0.21 reads model.is_gradient_checkpointing, deprecated in transformers 5.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainingError(f"cannot apply LoRA with target_modules={targets!r} to '{base_path}': {exc}") from exc
    return peft_model, targets if isinstance(targets, str) else list(targets)


class LoRATrainFn:
    """``train_fn(data_path) -> dict`` for the continuous-learning loop; see :func:`make_train_fn`."""

    def __init__(self, config: LoRATrainingConfig, on_log: LogCallback | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.on_log = on_log
        self.clock = clock

    def __call__(self, data_path: str | os.PathLike[str]) -> dict[str, Any]:
        return train_lora(data_path, self.config, on_log=self.on_log, clock=self.clock)

    def __repr__(self) -> str:
        cfg = self.config
        return f"LoRATrainFn(base_model={cfg.base_model!r}, rank={cfg.rank}, output_dir={cfg.output_dir!r})"


def make_train_fn(
    config: LoRATrainingConfig | Mapping[str, Any],
    *,
    on_log: LogCallback | None = None,
    default_output_dir: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
) -> LoRATrainFn:
    """Build the ``train_fn(data_path) -> dict`` the continuous-learning loop calls.

    The config is validated now, so a typo fails at start-up rather than at
    the first retraining hours later.

    Args:
        config (LoRATrainingConfig | Mapping): Settings; a mapping (such as
            ``training.lora`` of the loop's config) is validated into a
            :class:`LoRATrainingConfig`.
        on_log (Callable[[dict], None] | None, default None): Passed to
            :func:`train_lora` on every call.
        default_output_dir (str | os.PathLike | None, default None): Used
            when the config has no ``output_dir``; the loop passes
            ``<data_dir>/adapters`` (made absolute now).
        clock (Callable[[], datetime] | None, default None): Names the
            adapter folders (see :func:`train_lora`); the loop passes its clock.

    Returns:
        LoRATrainFn: A callable ``train_fn(data_path) -> dict`` returning
        :func:`train_lora`'s result dict; its ``config`` attribute holds the
        validated settings.

    Raises:
        ConfigError: The dict has an unknown key or a bad value, or
            ``config`` is neither a dict nor a config.

    Example:
        >>> train_fn = make_train_fn({"base_model": "models/base", "rank": 4})
        >>> train_fn.config.rank
        4

    References:
        Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
        arXiv 2106.09685; peft docs, https://huggingface.co/docs/peft.
    """
    validated = _as_config(config)
    if validated.output_dir is None and default_output_dir is not None:
        folder = str(pathlib.Path(default_output_dir).expanduser().absolute())
        validated = validated.model_copy(update={"output_dir": folder})
    return LoRATrainFn(validated, on_log, clock)


def _as_config(config: LoRATrainingConfig | Mapping[str, Any]) -> LoRATrainingConfig:
    if isinstance(config, LoRATrainingConfig):
        return config
    if isinstance(config, Mapping):
        return LoRATrainingConfig(**{str(key): value for key, value in config.items()})
    raise ConfigError(f"config must be a LoRATrainingConfig or a dict, got {type(config).__name__}")
