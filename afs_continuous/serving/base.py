"""The serving-engine interface: what the loop asks of the engine that answers requests.

The daemon tells the engine about every registry change *before* routing sends
a version any traffic (a challenger is loaded and checked before its
experiment starts; a version is loaded before it becomes champion) and after
routing stopped (a retired adapter is unloaded). Implementations:
:class:`~afs_continuous.serving.none.NoEngine` (the default: the user loads
``version.path`` into their own stack) and
:class:`~afs_continuous.serving.vllm.VLLMEngine` (vLLM's runtime LoRA API on a
list of replicas).
"""

from __future__ import annotations

import functools

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AfsContinuousError

if TYPE_CHECKING:
    from ..registry import ModelVersion

__all__ = ["Engine", "EngineError", "is_adapter"]


class EngineError(AfsContinuousError):
    """The serving engine refused or failed an operation on a model version.

    Attributes:
        replica: The replica (base URL) that refused, or None when it concerns no single replica.
        engine_message: What the engine answered (its error message, or the connection failure).
        version: The model version's name, when the error concerns one.
    """

    def __init__(self, message: str, *, replica: str | None = None, engine_message: str | None = None,
                 version: str | None = None) -> None:
        super().__init__(message)
        self.replica = replica
        self.engine_message = engine_message
        self.version = version

    def to_dict(self) -> dict[str, str | None]:
        """``{"error", "replica", "engine_message", "version"}`` for reports."""
        return {"error": str(self), "replica": self.replica, "engine_message": self.engine_message,
                "version": self.version}


def is_adapter(version: "ModelVersion") -> bool:
    """True when ``version`` is served as an adapter on the base model.

    A version trained by the loop (it has a training run) or one whose
    ``path`` holds an ``adapter_config.json`` is an adapter; a version without a
    path, or whose path is a full model (e.g. the initial champion's
    ``champion_model_path``), is the base model itself.
    """
    if not version.path:
        return False
    if version.training_run_id is not None:
        return True
    return _has_adapter_config(version.name, version.path)


@functools.lru_cache(maxsize=256)
def _has_adapter_config(name: str, path: str) -> bool:
    """Whether ``path`` holds a peft adapter; looked up once per (version, path), not per request."""
    return (Path(path).expanduser() / "adapter_config.json").is_file()


class Engine(ABC):
    """A serving engine the loop keeps in step with the registry.

    Every method is safe to call from several threads. Loading is idempotent:
    loading a version that is already loaded succeeds (and checks it again).
    """

    #: The ``serving.engine`` value that selects this engine.
    kind: str = ""
    #: False for engines that load nothing themselves (``none``).
    loads_adapters: bool = True

    @abstractmethod
    def served_model_name(self, version: "ModelVersion") -> str:
        """The model name a request must name to be served by ``version`` (the OpenAI ``model`` field)."""

    @abstractmethod
    def load(self, version: "ModelVersion") -> None:
        """Load ``version`` on every replica, then check one short generation through it on each.

        Raises:
            EngineError: A replica refused the load, failed the generation or
                cannot be reached (``replica`` and ``engine_message`` say which and why).
        """

    @abstractmethod
    def unload(self, version: "ModelVersion") -> None:
        """Unload ``version`` from every replica (a version not loaded is no error).

        Raises:
            EngineError: A replica refused or cannot be reached.
        """

    @abstractmethod
    def served_models(self) -> dict[str, list[str]]:
        """The model names each replica serves now: ``{replica: [name, ...]}``.

        Raises:
            EngineError: A replica cannot be reached.
        """

    @abstractmethod
    def ensure_loaded(self, version: "ModelVersion") -> bool:
        """Load ``version`` on every replica that does not list it (e.g. after an engine restart).

        Returns:
            True when it was (re)loaded on at least one replica, False when every replica had it.

        Raises:
            EngineError: A replica refused or cannot be reached.
        """

    def close(self) -> None:
        """Release connections. Idempotent."""

    def describe(self) -> dict[str, object]:
        """What the status shows about this engine (never a secret)."""
        return {"engine": self.kind}
