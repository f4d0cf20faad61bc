"""Loading a :class:`~afs_continuous.config.LoopConfig` (private; re-exported by :mod:`afs_continuous.config`).

:func:`load_config` merges the JSON file, ``AFS_CONTINUOUS_*`` environment
overrides and explicit overrides (in that order of precedence, lowest first)
and validates the result; :func:`config_record` is the configuration as the
daemon records it in the store, with secrets hidden.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Mapping, get_args, get_origin

from pydantic import BaseModel, SecretStr

from ._config_paths import map_paths, resolve_file_paths
from .config import ENV_PREFIX, LoopConfig
from .errors import ConfigError

__all__ = ["config_record", "load_config"]


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _is_text_key(path: list[str]) -> bool:
    """True when ``path`` names a string setting of :class:`LoopConfig` (str, a path, or either or None)."""
    model: Any = LoopConfig
    for part in path[:-1]:
        field = model.model_fields.get(part)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
    field = model.model_fields.get(path[-1])
    if field is None:
        return False
    if get_origin(field.annotation) in (list, dict):  # a JSON list or object, e.g. serving.base_urls
        return False
    options = get_args(field.annotation) if get_origin(field.annotation) is not None else (field.annotation,)
    options = tuple(get_args(o)[0] if get_origin(o) is Annotated else o for o in options)
    options = tuple(str if o is SecretStr else o for o in options)  # an API key is text too
    return str in options and all(o in (str, type(None)) for o in options)


def config_record(config: LoopConfig) -> dict[str, Any]:
    """The configuration as plain JSON data to record in the store, safe to show.

    Paths have ``~`` expanded (another user reading the record gets the
    daemon's paths, not their own), and the password of ``database_url`` is
    replaced by ``***``, and so is ``serving.api_key``.

    Args:
        config: The configuration in effect.

    Returns:
        dict: ``config.model_dump(mode="json")`` with those two changes; it
        validates back into an equal :class:`LoopConfig` except for them.
    """
    data = map_paths(config.model_dump(mode="json"), os.path.expanduser)
    if data.get("database_url"):
        from ._store_errors import display_url

        data["database_url"] = display_url(data["database_url"])
    serving = data.get("serving")
    if isinstance(serving, dict) and serving.get("api_key") is not None:
        serving["api_key"] = "***"
    return data


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in {ENV_PREFIX + "CONFIG", ENV_PREFIX + "TRAIN_FN"}:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if value is not None and not isinstance(value, str) and _is_text_key(path):
            value = raw  # AFS_CONTINUOUS_CHAMPION_MODEL=2024 names a version "2024", not a number
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: conflicting key path")
        node[path[-1]] = value
    return overrides


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoopConfig:
    """Load a :class:`LoopConfig` from a JSON file, the environment and overrides.

    Args:
        path: JSON file with the keys of :class:`LoopConfig` (see
            ``config.example.json``). ``None`` starts from the defaults.
        env: Environment to read ``AFS_CONTINUOUS_*`` overrides from
            (default ``os.environ``; pass ``{}`` to ignore the environment).
        overrides: Nested mapping applied last (highest precedence).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The file is missing or not valid JSON, or a key is
            unknown, mistyped or out of range (the message names the key path).
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path).expanduser()
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{file}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
                "save the file as UTF-8"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from None
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a JSON object, got {type(loaded).__name__}")
        data = resolve_file_paths(loaded, os.path.dirname(os.path.abspath(file)))
    environment = os.environ if env is None else env
    data = _deep_merge(data, _env_overrides(environment))
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return LoopConfig.model_validate(data)
    except ConfigError as exc:
        used = sorted(name for name in environment
                      if name.startswith(ENV_PREFIX) and name not in {ENV_PREFIX + "CONFIG", ENV_PREFIX + "TRAIN_FN"})
        if used:
            raise ConfigError(f"{exc} (environment overrides in effect: {', '.join(used)})") from None
        raise

