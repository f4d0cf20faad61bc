#!/usr/bin/env python3
"""Generate docs/configuration.md from the configuration classes (one source of truth).

    python scripts/gen_config_docs.py          # rewrite docs/configuration.md
    python scripts/gen_config_docs.py --check  # exit 1 if the file is out of date (used by the tests)
"""

from __future__ import annotations

import json
import re
import sys
from enum import Enum
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from afs_continuous.config import (  # noqa: E402
    ABTestConfig, DataGeneratorConfig, LoggerConfig, LoopConfig, TrainingConfig, TriggerConfig,
)

SECTIONS = [
    ("", LoopConfig), ("trigger_config", TriggerConfig), ("generator_config", DataGeneratorConfig),
    ("ab_test_config", ABTestConfig), ("logger_config", LoggerConfig), ("training", TrainingConfig),
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
"""


def _default(field) -> str:
    if field.default_factory is not None:
        return "(section)"
    value = field.default
    if isinstance(value, Enum):
        value = value.value
    return "`" + json.dumps(value) + "`"


def render() -> str:
    out = [HEADER]
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


def main() -> int:
    path = ROOT / "docs" / "configuration.md"
    text = render()
    if "--check" in sys.argv:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is out of date: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
