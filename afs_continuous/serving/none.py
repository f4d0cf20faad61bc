"""``"engine": "none"``: the loop loads nothing; the user serves ``version.path`` themselves (the default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Engine

if TYPE_CHECKING:
    from ..registry import ModelVersion

__all__ = ["NoEngine"]


class NoEngine(Engine):
    """No serving engine: every call is a no-op, and a version is served under its registry name.

    This is the behaviour before serving engines existed: ``route()`` returns a
    version and the caller loads ``version.path`` into its own serving stack.
    """

    kind = "none"
    loads_adapters = False

    def served_model_name(self, version: "ModelVersion") -> str:
        """The version's registry name."""
        return version.name

    def load(self, version: "ModelVersion") -> None:
        """Nothing to load."""

    def unload(self, version: "ModelVersion") -> None:
        """Nothing to unload."""

    def served_models(self) -> dict[str, list[str]]:
        """No replicas: ``{}``."""
        return {}

    def ensure_loaded(self, version: "ModelVersion") -> bool:
        """Nothing to load: False."""
        return False
