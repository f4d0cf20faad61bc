#!/usr/bin/env python3
"""Generate docs/configuration.md from the configuration classes (one source of truth).

    python scripts/gen_config_docs.py               # rewrite docs/configuration.md
    python scripts/gen_config_docs.py --check       # exit 1 if the file is out of date (used by the tests)
    python scripts/gen_config_docs.py -o other.md   # write (or --check) another file

Exit codes: 0 written or up to date, 1 out of date (--check) or not writable, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from enum import Enum
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from afs_continuous.config import (  # noqa: E402
    DEFAULT_HOME, PATH_KEYS, ABTestConfig, DataGeneratorConfig, LoggerConfig, LoopConfig, ServingConfig,
    TrainingConfig, TriggerConfig,
)

SECTIONS = [
    ("", LoopConfig), ("trigger_config", TriggerConfig), ("generator_config", DataGeneratorConfig),
    ("ab_test_config", ABTestConfig), ("logger_config", LoggerConfig), ("training", TrainingConfig),
    ("serving", ServingConfig),
]
NESTED = {name for name, _ in SECTIONS if name}

HEADER = """# Configuration reference

Generated from `afs_continuous/config.py` by `python scripts/gen_config_docs.py`; do not edit by hand.

`config.json` holds these keys (nested objects for the sections). Load it with
`load_config(path)` or `--config`. An unknown or mistyped key is an error that
names the key path and suggests the closest valid key. Any key can be overridden
from the environment as `AFS_CONTINUOUS_<KEY>` with `__` between levels, e.g.
`AFS_CONTINUOUS_TRIGGER_CONFIG__MIN_NEW_SAMPLES=500`; precedence is
arguments > environment > file > defaults. Fractions are 0..1, never percent.

Types are checked strictly: a number key takes a JSON number (an integer is
fine where a decimal is expected) and not `true` or `"1"`; `Infinity` and `NaN`
are rejected; an on/off key takes `true` or `false`. The file must be UTF-8.
Environment values are parsed as JSON first (`500`, `true`, `null`), so they
follow the same rules; a text key takes the raw value (`2024` stays `"2024"`).

The data folder defaults to `{home}` and the store to
`{home}/usage.db`, the path the quick start logs to.

**Relative paths.** One rule for every path key ({path_keys}, and the file
of a SQLite `database_url`): a relative path written in a config file is relative to the
folder of that file (so `"data_dir": "data"` in `/etc/afs/config.json` is
`/etc/afs/data`, wherever the daemon is started); a relative path given any other
way (Python arguments, `AFS_CONTINUOUS_*` variables, `--db`) is relative to the
current directory when the configuration is loaded. Either way the loaded
configuration holds the absolute path. Paths starting with `~` are kept as
written and expanded when used; absolute paths are kept as written. In Python,
path keys also accept `pathlib.Path` (any `os.PathLike`).
"""


def _default(field) -> str:
    if field.default_factory is not None:
        return "(section)"
    value = field.default
    if isinstance(value, Enum):
        value = value.value
    return "`" + json.dumps(value) + "`"


def render() -> str:
    """The text of docs/configuration.md."""
    keys = ", ".join(f"`{'.'.join(k)}`" for k in PATH_KEYS)
    out = [HEADER.format(home=DEFAULT_HOME, path_keys=keys)]
    for name, cls in SECTIONS:
        out.append(f"\n## `{name or 'top level'}`\n")
        if cls.__doc__:
            first = cls.__doc__.strip().split("\n\n")[0].replace("\n", " ")
            out.append(re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"`\1`", first) + "\n")
        out.append("| key | default | meaning |\n|---|---|---|")
        for key, field in cls.model_fields.items():
            if key in NESTED:
                continue
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `{key}` | {_default(field)} | {desc} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gen_config_docs.py",
        description="Generate the configuration reference (docs/configuration.md) from afs_continuous/config.py.",
    )
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the file differs from what would be generated")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "configuration.md",
                        help="file to write or check (default: docs/configuration.md of this checkout)")
    args = parser.parse_args(argv)
    path: Path = args.output
    text = render()
    if args.check:
        try:
            current = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = None
        if current != text:
            print(f"{path} is out of date: run python scripts/gen_config_docs.py"
                  + (f" --output {path}" if path != parser.get_default("output") else ""), file=sys.stderr)
            return 1
        return 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"cannot write {path}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
