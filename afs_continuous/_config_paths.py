"""Path settings of the configuration: which keys are paths, and the one rule for relative paths.

A relative path written in a config file is relative to the folder of that
file (:func:`resolve_file_paths`, applied by ``load_config`` before
validation); a relative path given any other way (Python, environment,
``--db``) is relative to the current directory when validated
(:func:`path_text`). ``~`` and absolute paths are kept as written.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("db_path",),
    ("data_dir",),
    ("champion_model_path",),
    ("generator_config", "existing_data_path"),
    ("training", "lora", "base_model"),
    ("training", "lora", "output_dir"),
)
"""Key paths of every filesystem path in the configuration (``database_url`` is a URL, handled alike)."""

LORA_PATH_KEYS = frozenset(keys[-1] for keys in PATH_KEYS if keys[:2] == ("training", "lora"))
"""The path keys inside ``training.lora`` (a dict validated by the trainer's own config class)."""


def absolute(value: str, base: str | None) -> str:
    """``value`` joined with ``base`` (default: the current directory) and normalised, unless it is
    empty, absolute or starts with ``~`` (those are kept as written; ``~`` is expanded when used)."""
    if not value or value.startswith("~") or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base if base is not None else os.getcwd(), value))


def path_text(value: Any) -> Any:
    """Validator of path settings: ``os.PathLike`` becomes ``str``, a relative path absolute (current directory)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return absolute(value, None) if isinstance(value, str) else value


def absolute_url(url: Any, base: str | None) -> Any:
    """A SQLite URL with a relative file path made absolute against ``base`` (default: current directory)."""
    if not isinstance(url, str) or not url.startswith("sqlite") or "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # the model validator reports it
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:") or parsed.query.get("uri"):
        return url
    resolved = absolute(database, base)
    return url if resolved == database else parsed.set(database=resolved).render_as_string(hide_password=False)



def map_paths(data: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """``data`` (plain JSON data of a configuration) with ``fn`` applied to each path key present as a string."""
    for keys in PATH_KEYS:
        node: Any = data
        for part in keys[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            node[keys[-1]] = fn(node[keys[-1]])
    return data


def resolve_file_paths(data: dict[str, Any], folder: str) -> dict[str, Any]:
    """A copy of a config file's data with its relative paths (and SQLite URL) resolved against ``folder``."""
    out = map_paths(json.loads(json.dumps(data)), lambda value: absolute(value, folder))  # on a deep copy
    if "database_url" in out:
        out["database_url"] = absolute_url(out["database_url"], folder)
    return out
