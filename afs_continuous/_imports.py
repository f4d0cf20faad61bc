"""Import user functions named as ``module:function`` or ``path/to/file.py:function`` (train_fn, eval_fn).

The current directory never shadows installed packages: a ``module:function``
is looked up on ``sys.path`` with the current directory appended at the end,
for that one import only, and a file is loaded under a private module name. A
``datasketch.py`` or ``tqdm.py`` lying in the current directory is therefore
never imported in place of the installed package (issue 11, item 3).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import LoopConfig

__all__ = ["import_callable", "train_fn_from_config"]


def import_callable(spec: str, what: str = "function") -> Callable[..., Any]:
    """The callable named by ``spec``.

    Two forms:

    - ``"package.module:function"``: imported from ``sys.path``; the current
      directory is searched last (after the installed packages) and only
      while this module is imported, so a module there can be named but
      cannot shadow an installed package. Import the helpers it needs from the
      current directory at its top level.
    - ``"path/to/file.py:function"``: the file is loaded under a private
      module name (``_afs_user_<stem>``); its folder is searched last while
      it is imported.

    Args:
        spec: ``"package.module:function"`` or ``"path/to/file.py:function"``.
        what: What it is, for messages (``"train function"``, ``"eval function"``).

    Raises:
        ConfigError: ``spec`` is malformed, the module or file cannot be imported or has no such callable.

    >>> import_callable("json:dumps")([1])
    '[1]'
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"{what} must be given as 'module:function' or 'path/to/file.py:function', got {spec!r}")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    module = _load_file(target, what) if is_file else _import_module(target, what)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{target!r} has no callable {attr!r} (the {what} {spec!r})")
    return fn


@contextmanager
def _searched_last(folder: str) -> Iterator[None]:
    """``folder`` at the end of ``sys.path`` for the duration (unless it is already on it)."""
    present = any(_same_dir(entry, folder) for entry in sys.path)
    if not present:
        sys.path.append(folder)
    try:
        yield
    finally:
        if not present:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass


def _same_dir(entry: str, folder: str) -> bool:
    try:
        return os.path.abspath(entry or os.curdir) == os.path.abspath(folder)
    except (TypeError, ValueError):
        return False


def _import_module(name: str, what: str) -> ModuleType:
    try:
        with _searched_last(os.getcwd()):
            return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or the module itself failing at import
        raise ConfigError(f"cannot import {what} module {name!r}: {type(exc).__name__}: {exc} (the current directory is searched after "
                          "the installed packages; or name a file: 'path/to/file.py:function')") from None


def _load_file(target: str, what: str) -> ModuleType:
    path = Path(target).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{what} file {target!r} not found (resolved to {path}); expected 'path/to/file.py:function'")
    name = "_afs_user_" + "".join(c if c.isalnum() else "_" for c in path.stem)
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {what} file {target!r} ({path}) as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        with _searched_last(str(path.parent)):
            spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"cannot import {what} file {target!r} ({path}): {type(exc).__name__}: {exc}") from None
    return module


def train_fn_from_config(config: "LoopConfig", *, clock: Callable[[], Any] | None = None) -> Callable[..., Any] | None:
    """The training function the configuration names, or None when it names none.

    ``training.train_fn`` (an import path, see :func:`import_callable`), else
    ``training.lora`` (the reference LoRA trainer, adapters under
    ``<data_dir>/adapters`` unless ``output_dir`` is set, folders named with
    ``clock``), else None. The loop and the daemon command both resolve it here.

    Raises:
        ConfigError: The import path cannot be imported, or the LoRA settings are invalid.
    """
    training = config.training
    if training.train_fn:
        return import_callable(training.train_fn, "train function (training.train_fn)")
    if training.lora is not None:
        from .training.lora import make_train_fn  # torch etc. load only when training starts

        return make_train_fn(training.lora, default_output_dir=config.data_path / "adapters", clock=clock)
    return None
