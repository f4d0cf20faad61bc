"""The main job: the demo runs the whole loop on real data; its data loader fails loudly, never invents."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DEMO = ROOT / "examples" / "continuous_learning_demo.py"
sys.path.insert(0, str(ROOT / "examples"))
import alpaca_data  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def alpaca_dir() -> Path:
    folder = Path(os.environ.get("AFS_ALPACA_EVAL_DIR") or ROOT.parent / "shared" / "data" / "alpaca_eval")
    if not (folder / "FuseChat-Llama-3.2-3B-Instruct.jsonl.gz").exists():
        pytest.skip(f"AlpacaEval data not found in {folder} (set AFS_ALPACA_EVAL_DIR)")
    return folder


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AFS_CONTINUOUS_", "AFS_ALPACA"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


def test_demo_runs_the_whole_loop(tmp_path, alpaca_dir):
    proc = subprocess.run([sys.executable, str(DEMO), "--workdir", str(tmp_path / "demo"), "--data-dir", str(alpaca_dir)],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_demo_output(proc.stdout, tmp_path / "demo")


def _check_demo_output(out: str, workdir: Path) -> None:
    assert "logged 805 records as 'fusechat-3b'" in out
    assert "trigger: sample_count: 357 eligible samples >= 300" in out
    assert "candidates 805 -> after_quality 357 -> after_feedback 357" in out
    losses = [float(line.split("loss")[1]) for line in out.splitlines() if line.strip().startswith("step")]
    assert len(losses) >= 3
    eval_line = next(line for line in out.splitlines() if line.startswith("eval loss "))
    before, after = (float(x) for x in eval_line[len("eval loss "):].split(" on ")[0].split(" -> "))
    assert after < before
    assert "replays the judged answers of FuseChat-Llama-3.1-8B-Instruct" in out
    assert "decision: PROMOTE" in out
    assert "champion         fusechat-3b-ft1" in out
    adapters = list((workdir / "adapters").iterdir())
    assert len(adapters) == 1 and (adapters[0] / "adapter_config.json").exists()
    # the explanation comes before the loss lines it explains
    lines = out.splitlines()
    first_loss = next(i for i, line in enumerate(lines) if line.strip().startswith("step"))
    assert lines.index("trigger: sample_count: 357 eligible samples >= 300") < first_loss
    assert next(i for i, line in enumerate(lines) if line.startswith("training data:")) < first_loss
    assert "the LoRA trainer holds out 10% of these lines itself" in out
    assert "done in " in out and " s of it LoRA training" in out
    assert "units=" in out and "requests=" in out and "units are users" in out  # n vs served, labelled
    _assert_readme_ab_figures_reproduced(out)


def _assert_readme_ab_figures_reproduced(out: str) -> None:
    """Issue 11 item 19: the demo is seeded (traffic, training, A/B assignment), so its A/B figures are those of
    the run the README shows: every hourly and guardrail line of the README's demo output, verbatim."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = [line for line in readme.split("Shortened output of `--seed 0`:")[1].split("```")[1].splitlines()
             if line.startswith(("  hour", "  guardrail", "  champion ", "  challenger "))]
    assert len(shown) >= 4, shown
    missing = [line for line in shown if line not in out.splitlines()]
    assert not missing, f"README lines not reproduced by the seeded demo: {missing}"


def test_demo_without_data_says_where_to_get_it_and_exits_nonzero(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--workdir", str(tmp_path / "demo"), "--data-dir", str(empty)],
        capture_output=True, text=True, timeout=120,
        env=_env(AFS_ALPACA_EVAL_CACHE=str(tmp_path / "cache"), AFS_ALPACA_EVAL_BASE_URL="http://127.0.0.1:9/results"),
    )
    assert proc.returncode == 2
    assert "could not download" in proc.stderr and "github.com/tatsu-lab/alpaca_eval" in proc.stderr
    assert not (tmp_path / "cache" / "alpaca_eval" / "FuseChat-Llama-3.2-3B-Instruct.jsonl.gz").exists()


def test_download_converts_the_upstream_annotations(tmp_path, alpaca_dir, monkeypatch):
    """Serve an upstream-format annotations.json (built from the real rows) on localhost and download it."""
    model = "FuseChat-Llama-3.2-3B-Instruct"
    with gzip.open(alpaca_dir / f"{model}.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    upstream = [{"instruction": r["instruction"], "output_1": "reference answer", "generator_1": "gpt4_1106_preview",
                 "output_2": r["output"], "generator_2": r["generator"], "preference": r["preference"],
                 "dataset": r["dataset"]} for r in rows]
    site = tmp_path / "site" / "results" / model / "weighted_alpaca_eval_gpt4_turbo"
    site.mkdir(parents=True)
    (site / "annotations.json").write_text(json.dumps(upstream))
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "site"), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(alpaca_data, "BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/results")
        monkeypatch.setenv("AFS_ALPACA_EVAL_CACHE", str(tmp_path / "cache"))
        got = alpaca_data.load_model_rows(model, str(tmp_path / "nothing-here"))
    finally:
        server.shutdown()
    assert len(got) == 805
    assert [(g["index"], g["instruction"], g["output"], g["preference"]) for g in got] == \
        [(r["index"], r["instruction"], r["output"], r["preference"]) for r in rows]
    assert (tmp_path / "cache" / "alpaca_eval" / f"{model}.jsonl.gz").exists()
