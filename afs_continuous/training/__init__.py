"""Reference LoRA trainer for the continuous-learning loop.

Needs the ``train`` extra (torch, transformers, peft, datasets, accelerate,
tokenizers). Importing this package is cheap: the names below resolve lazily
and the heavy libraries are imported only when training (or building the tiny
model) starts, so validating a :class:`LoRATrainingConfig` never loads torch.

- :func:`train_lora`, :func:`make_train_fn`, :class:`LoRATrainingConfig`
  (from :mod:`afs_continuous.training.lora`)
- :func:`build_tiny_model` and :data:`TINY_LORA_SETTINGS` (from
  :mod:`afs_continuous.training.tiny`): a tiny random Llama for tests and
  demos, and the config overrides that make its loss fall visibly.

Example:
    >>> from afs_continuous.training import LoRATrainingConfig
    >>> LoRATrainingConfig(base_model="models/base").rank
    8
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from afs_continuous.training.lora import (
        LoRATrainFn,
        LoRATrainingConfig,
        load_chat_records,
        make_train_fn,
        train_lora,
    )
    from afs_continuous.training.tiny import TINY_LORA_SETTINGS, build_tiny_model

__all__ = [
    "LoRATrainFn",
    "LoRATrainingConfig",
    "TINY_LORA_SETTINGS",
    "build_tiny_model",
    "load_chat_records",
    "make_train_fn",
    "train_lora",
]

_SUBMODULE_OF = {
    "LoRATrainFn": "lora",
    "LoRATrainingConfig": "lora",
    "load_chat_records": "lora",
    "make_train_fn": "lora",
    "train_lora": "lora",
    "TINY_LORA_SETTINGS": "tiny",
    "build_tiny_model": "tiny",
}


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULE_OF.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
