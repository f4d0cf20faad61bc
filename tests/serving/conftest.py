"""A real vLLM server for the serving tests (marked ``vllm``), started once per session.

The server runs from the engine's own virtual environment (``scripts/vllm_env.sh`` creates it;
it pins other versions than the SDK's). Its interpreter is ``$AFS_VLLM_PYTHON``, else
``$AFS_VLLM_VENV/bin/python``, else ``.venv-vllm/bin/python`` in the repository or beside it.
The tests skip with the reason (never fail) when ``AFS_TEST_VLLM=1`` is not set or no engine
environment exists; ``.ci/run`` sets both up in its last stage.

The base model is :func:`afs_continuous.training.tiny.build_tiny_model` (hidden size 256, 4 heads:
head dimension 64) with a tokenizer trained on real AlpacaEval texts; the server is started with
``--enable-lora --max-lora-rank 8 --max-loras 2`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
on a free loopback port, and always terminated (with its engine processes) at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVED_NAME = "tiny"
STARTUP_TIMEOUT_S = float(os.environ.get("AFS_VLLM_STARTUP_TIMEOUT_S", "900"))


def engine_python() -> tuple[Path | None, str]:
    """The engine venv's interpreter and where it came from (None and the places looked at when absent)."""
    candidates: list[tuple[str, Path]] = []
    if os.environ.get("AFS_VLLM_PYTHON"):  # named explicitly: only that one
        candidates.append(("AFS_VLLM_PYTHON", Path(os.environ["AFS_VLLM_PYTHON"])))
    elif os.environ.get("AFS_VLLM_VENV"):
        candidates.append(("AFS_VLLM_VENV", Path(os.environ["AFS_VLLM_VENV"]) / "bin/python"))
    else:
        candidates += [("repository", REPO / ".venv-vllm/bin/python"),
                       ("beside the repository", REPO.parent / ".venv-vllm/bin/python")]
    for _, path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path, ""
    return None, ", ".join(str(p) for _, p in candidates)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 120) -> tuple[int, Any]:
    """One request with the standard library (the tests check the engine independently of httpx)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class VLLMServer:
    """One vLLM OpenAI-compatible server process on the tiny model.

    Attributes:
        base_url: ``http://127.0.0.1:PORT``.
        model_dir: The base model folder.
        startup_s: Seconds the last start took until ``GET /v1/models`` answered.
        starts: How many times it was started.
    """

    def __init__(self, python: Path, model_dir: Path, log_dir: Path) -> None:
        self.python = python
        self.model_dir = model_dir
        self.log_dir = log_dir
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)  # the engine's environment, not the SDK's
        # float32: with bfloat16, vLLM-CPU 0.32's worker dies of SIGILL on an AMX machine at the first
        # batch mixing the base model and a LoRA after a restart (docs/serving.md); AFS_VLLM_DTYPE overrides
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--served-model-name", SERVED_NAME, "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
               "--dtype", os.environ.get("AFS_VLLM_DTYPE", "float32"), "--max-model-len", "512", "--host", "127.0.0.1", "--port", str(self.port)]
        self.starts += 1
        log = open(self.log_dir / f"vllm-{self.starts}.log", "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = t0 + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                status, _ = http_json("GET", self.base_url + "/v1/models", timeout=5)
                if status == 200:
                    self.startup_s = time.monotonic() - t0
                    return
            except OSError:
                pass
            time.sleep(1.0)  # polling a starting process, not waiting for a schedule
        self.stop()
        raise RuntimeError(f"vLLM did not answer within {STARTUP_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the server and its engine processes (SIGTERM, then SIGKILL after 30 s)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        except ProcessLookupError:
            pass

    def restart(self) -> None:
        """Stop and start again on the same port: every runtime-loaded adapter is forgotten."""
        self.stop()
        self.start()

    def log_tail(self, n: int = 40) -> str:
        path = self.log_dir / f"vllm-{self.starts}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])

    def models(self) -> list[str]:
        status, data = http_json("GET", self.base_url + "/v1/models")
        assert status == 200, data
        return [m["id"] for m in data["data"]]

    def complete(self, model: str, prompt: str = "Hello", max_tokens: int = 4) -> tuple[int, Any]:
        return http_json("POST", self.base_url + "/v1/completions",
                         {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0})


@pytest.fixture(scope="session")
def alpaca_rows(alpaca: Callable[[str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """120 real AlpacaEval rows (instruction, output, preference)."""
    return alpaca("FuseChat-Llama-3.2-3B")[:120]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, alpaca_rows: list[dict[str, Any]]) -> Path:
    """The tiny Llama vLLM serves (head dimension 64), tokenizer trained on the AlpacaEval texts."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from afs_continuous.training.tiny import build_tiny_model

    texts = [t for r in alpaca_rows for t in (r["instruction"][:300], r["output"][:600])]
    return build_tiny_model(tmp_path_factory.mktemp("vllm-base") / "tiny", texts, hidden_size=256, n_heads=4,
                            n_layers=2)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[VLLMServer]:
    """The session's vLLM server; skips with the reason when not asked for or not installed."""
    if os.environ.get("AFS_TEST_VLLM") != "1":
        pytest.skip("set AFS_TEST_VLLM=1 to run the tests against a real vLLM server (.ci/run does)")
    python, looked = engine_python()
    if python is None:
        pytest.skip(f"no vLLM engine environment ({looked}); create it with bash scripts/vllm_env.sh")
    tiny_base: Path = request.getfixturevalue("tiny_base")  # built only when a server will start
    server = VLLMServer(python, tiny_base, tmp_path_factory.mktemp("vllm-logs"))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    try:
        server.start()
        if reporter is not None:
            reporter.write_line(f"vLLM server {server.base_url} started in {server.startup_s:.1f} s ({python})")
        yield server
    finally:
        server.stop()
        if reporter is not None and server.starts > 1:
            reporter.write_line(f"vLLM server restarted; last start-up {server.startup_s:.1f} s")


def train_adapter(base: Path, rows: list[dict[str, Any]], out: Path, **overrides: Any) -> Path:
    """A real adapter from the reference trainer (tiny settings: q/k/v/o_proj and lm_head, rank 8)."""
    from afs_continuous.training.lora import LoRATrainingConfig, train_lora
    from afs_continuous.training.tiny import TINY_LORA_SETTINGS

    data = out.parent / f"{out.name}.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["instruction"][:300]},
                                                     {"role": "assistant", "content": r["output"][:600]}]}) + "\n"
                            for r in rows), encoding="utf-8")
    settings = {**TINY_LORA_SETTINGS, "max_length": 96, "batch_size": 8, "epochs": 0.5, "device": "cpu",
                "validation_fraction": 0.0, **overrides}
    result = train_lora(data, LoRATrainingConfig(base_model=str(base), output_dir=str(out), **settings))
    return Path(result["model_path"])


@pytest.fixture(scope="session")
def tiny_adapter(tiny_base: Path, alpaca_rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One adapter trained by the reference trainer with the tiny settings."""
    pytest.importorskip("peft")
    return train_adapter(tiny_base, alpaca_rows[:64], tmp_path_factory.mktemp("adapters") / "a")
