"""Serving engines the loop keeps in step with the registry (see :mod:`afs_continuous.serving.base`).

:func:`make_engine` builds the engine of a configuration's ``serving`` section.
Importing this package is cheap: the vLLM engine imports ``httpx`` only when
it is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Engine, EngineError, is_adapter
from .none import NoEngine

if TYPE_CHECKING:
    from ..config import ServingConfig

__all__ = ["Engine", "EngineError", "NoEngine", "is_adapter", "make_engine"]


def make_engine(config: "ServingConfig") -> Engine:
    """The engine of ``config`` (``engine: "none"`` or ``"vllm"``).

    Raises:
        ConfigError: ``vllm`` is chosen and ``httpx`` is not installed (``pip install 'afs-continuous[serving]'``).
    """
    kind = config.engine.value if hasattr(config.engine, "value") else str(config.engine)
    if kind == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine(config)
    return NoEngine()
