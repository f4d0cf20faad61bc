"""Locate (or download) the AlpacaEval 2.0 judged outputs used by the demo.

Search order for ``<model>.jsonl.gz``:

1. ``--data-dir`` / the ``AFS_ALPACA_EVAL_DIR`` environment variable when given,
   otherwise ``../shared/data/alpaca_eval`` next to this checkout;
2. the cache, ``$AFS_ALPACA_EVAL_CACHE`` or ``~/.cache/afs_continuous/alpaca_eval``;
3. a download of ``results/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json``
   from the public ``tatsu-lab/alpaca_eval`` GitHub repository (Apache-2.0),
   converted to the same JSONL format and stored in the cache.

Each row: ``index`` (0..804), ``dataset``, ``instruction``, ``output`` (the
model's real answer), ``generator``, ``preference`` (GPT-4-turbo judge in
[1, 2]; 2 = this model's answer is better than the reference).
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared" / "data" / "alpaca_eval"
BASE_URL = os.environ.get(
    "AFS_ALPACA_EVAL_BASE_URL", "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/main/results"
)
SOURCE_HELP = (
    "Get the files from https://github.com/tatsu-lab/alpaca_eval (folder results/<model>/"
    "weighted_alpaca_eval_gpt4_turbo/annotations.json), or copy <model>.jsonl.gz files into a folder "
    "and pass it with --data-dir or AFS_ALPACA_EVAL_DIR."
)


class DataUnavailable(RuntimeError):
    """The data could be neither found locally nor downloaded."""


def cache_dir() -> Path:
    root = os.environ.get("AFS_ALPACA_EVAL_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "afs_continuous") / "alpaca_eval"


def candidate_dirs(data_dir: str | None) -> list[Path]:
    explicit = data_dir or os.environ.get("AFS_ALPACA_EVAL_DIR")
    return [Path(explicit).expanduser() if explicit else SHARED_DIR, cache_dir()]


def read_rows(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def convert_annotations(annotations: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """AlpacaEval ``annotations.json`` rows -> our rows (output_2 is the model's answer)."""
    rows = []
    for i, a in enumerate(annotations):
        pref = a.get("preference")
        if pref is None or a.get("output_2") is None:
            continue
        rows.append({
            "index": i, "dataset": a.get("dataset"), "instruction": a["instruction"], "output": a["output_2"],
            "generator": a.get("generator_2", model), "preference": float(pref),
        })
    return rows


def download(model: str, dest: Path, *, timeout_s: float = 30.0) -> Path:
    """Download and convert one model's annotations into ``dest`` (with a progress bar)."""
    url = f"{BASE_URL}/{model}/weighted_alpaca_eval_gpt4_turbo/annotations.json"
    print(f"downloading {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - fixed public URL
            total = int(resp.headers.get("Content-Length") or 0) or None
            chunks = []
            try:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=model, file=sys.stderr)
            except ImportError:
                bar = None
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        annotations = json.loads(b"".join(chunks))
    except (OSError, ValueError) as exc:
        raise DataUnavailable(f"could not download {url}: {exc}") from exc
    rows = convert_annotations(annotations, model)
    if not rows:
        raise DataUnavailable(f"{url} held no usable annotations")
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{model}.jsonl.gz"
    tmp = out.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out


def load_model_rows(model: str, data_dir: str | None = None, *, allow_download: bool = True) -> list[dict[str, Any]]:
    """Rows of ``model`` from the first folder that has them, else downloaded into the cache.

    Raises:
        DataUnavailable: Not found and the download failed (the message says where to get them).
    """
    for folder in candidate_dirs(data_dir):
        path = folder / f"{model}.jsonl.gz"
        if path.exists():
            return read_rows(path)
    if not allow_download:
        raise DataUnavailable(f"{model}.jsonl.gz not found in {', '.join(map(str, candidate_dirs(data_dir)))}. {SOURCE_HELP}")
    try:
        return read_rows(download(model, cache_dir()))
    except DataUnavailable as exc:
        raise DataUnavailable(f"{exc}. {SOURCE_HELP}") from exc
