"""Import user functions named as ``module:function`` (train_fn, eval_fn)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from .errors import ConfigError

__all__ = ["import_callable"]


def import_callable(spec: str, what: str = "function") -> Callable[..., Any]:
    """The callable named by ``spec`` (``module:function``); the current directory is importable.

    Args:
        spec: ``"package.module:function"``.
        what: What it is, for messages (``"train function"``, ``"eval function"``).

    Raises:
        ConfigError: ``spec`` is malformed, the module cannot be imported or has no such callable.

    >>> import_callable("json:dumps")([1])
    '[1]'
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} must be given as 'module:function', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {what} module {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"module {module_name!r} has no callable {attr!r} (the {what} {spec!r})")
    return fn
