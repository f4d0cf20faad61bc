"""Importing the package and its training modules stays cheap: no torch, transformers, peft or datasets.

Each check runs in a fresh interpreter (a subprocess), since another test in
the same session may already have imported those libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "datasets")


def _heavy_modules_loaded_by(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy libraries it left in ``sys.modules``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_afs_continuous_does_not_import_torch() -> None:
    assert _heavy_modules_loaded_by("import afs_continuous") == []


@pytest.mark.parametrize("module", ["afs_continuous.training", "afs_continuous.training.lora",
                                    "afs_continuous.training._data", "afs_continuous.training.tiny"])
def test_importing_a_training_module_does_not_import_torch(module: str) -> None:
    assert _heavy_modules_loaded_by(f"import {module}") == []


def test_validating_a_lora_config_does_not_import_torch(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "2+2?", "completion": "4"}\n', encoding="utf-8")
    code = (
        "import afs_continuous.training as t\n"
        "t.LoRATrainingConfig(base_model='m'); t.make_train_fn({'base_model': 'm'})\n"
        f"assert len(t.load_chat_records({str(data)!r})) == 1\n"
    )
    assert _heavy_modules_loaded_by(code) == []


def test_load_chat_records_is_the_same_function_everywhere() -> None:
    import afs_continuous.training as training
    from afs_continuous.training import _data, lora

    assert training.load_chat_records is lora.load_chat_records is _data.load_chat_records
    assert "load_chat_records" in training.__all__ and "load_chat_records" in lora.__all__
