#!/usr/bin/env python3
"""Cost per call of the OpenAI integration against the plain ``openai`` client, on the same vLLM server.

The two clients alternate call by call (so both see the same server load) on the same short chat
(system prompt + question, ``max_tokens`` small, temperature 0) for ``--seconds`` (default 60),
after a warm-up. The integration routes (``loop.route``, cached), names the served model, and logs
the whole conversation with tokens (``log_usage``, ``async`` durability, SQLite store). Prints the
end-to-end latency p50/p99 of both, the ratio and the overhead in ms, and, separately, the
integration's own in-process work per call (routing + building the request + logging; no network).

Usage:
    python benchmarks/bench_openai.py --base-url http://127.0.0.1:8000 [--model NAME] [--seconds 60]
    python benchmarks/bench_openai.py [--seconds 60]   # starts a vLLM server on the tiny model itself

Starting the server needs the engine environment (``bash scripts/vllm_env.sh``; ``AFS_VLLM_PYTHON``)
and takes 1-4 minutes on 2 cores; it reuses the test suite's server helper (tests/serving/conftest.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from afs_continuous import ContinuousLearningLoop  # noqa: E402
from afs_continuous.config import load_config  # noqa: E402
from afs_continuous.integrations._openai_core import Call  # noqa: E402
from afs_continuous.integrations.openai import OpenAI  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Give three tips for staying healthy."}]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _start_server(workdir: Path) -> Any:
    from tests.serving.conftest import SERVED_NAME, VLLMServer, engine_python  # the suite's helper

    from afs_continuous.training.tiny import build_tiny_model

    python, looked = engine_python()
    if python is None:
        sys.exit(f"no vLLM engine environment ({looked}); run bash scripts/vllm_env.sh or pass --base-url")
    texts = [f"Question {i}: how do I stay healthy? Answer: sleep, water and exercise, {i} times." for i in range(300)]
    base = build_tiny_model(workdir / "tiny", texts, hidden_size=256, n_heads=4, n_layers=2)
    server = VLLMServer(python, base, workdir)
    print(f"starting vLLM on the tiny model ({python}) ...", flush=True)
    server.start()
    print(f"vLLM answered after {server.startup_s:.0f} s at {server.base_url}", flush=True)
    return server, SERVED_NAME


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", help="a running vLLM server (http://HOST:PORT); default: start one")
    ap.add_argument("--model", help="the base model's served name (default: asked from the server)")
    ap.add_argument("--seconds", type=float, default=60.0, help="measuring time, both clients together")
    ap.add_argument("--max-tokens", type=int, default=4)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = None
        base_url, model = args.base_url, args.model
        if base_url is None:
            server, model = _start_server(work)
            base_url = server.base_url
        try:
            serving = {"engine": "vllm", "base_urls": [base_url.rstrip("/")]}
            if model:
                serving["base_model_name"] = model
            loop = ContinuousLearningLoop(load_config(env={}, overrides={
                "db_path": str(work / "usage.db"), "data_dir": str(work / "data"), "serving": serving}))
            plain = openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="EMPTY")
            ours = OpenAI(loop=loop, base_url=base_url.rstrip("/") + "/v1", api_key="EMPTY")
            served = loop.served_model_name(loop.route("u"))
            kw = {"max_tokens": args.max_tokens, "temperature": 0.0}

            def call_plain(i: int) -> Any:
                return plain.chat.completions.create(model=served, messages=MESSAGES, user=f"u-{i}", **kw)

            def call_ours(i: int) -> Any:
                return ours.chat.completions.create(messages=MESSAGES, user=f"u-{i}", **kw)

            for i in range(10):  # warm-up: connections, the server's prefix cache
                call_plain(i), call_ours(i)
            times: dict[str, list[float]] = {"plain openai": [], "afs integration": []}
            end = time.monotonic() + args.seconds
            i = 0
            while time.monotonic() < end:
                for name, fn in (("plain openai", call_plain), ("afs integration", call_ours)) if i % 2 == 0 else \
                        (("afs integration", call_ours), ("plain openai", call_plain)):
                    t0 = time.perf_counter()
                    fn(i)
                    times[name].append((time.perf_counter() - t0) * 1000.0)
                i += 1
            loop.logger.flush()
            logged = loop.logger.n_logged

            # the integration's own work, without the network: route + request + log of a real completion
            completion = call_plain(0)
            n = 20000
            t0 = time.perf_counter()
            for j in range(n):
                call = Call(loop, {"messages": MESSAGES, "user": f"u-{j}", **kw})
                call.log_completion(completion)
            own_us = (time.perf_counter() - t0) / n * 1e6
            loop.close()
        finally:
            if server is not None:
                server.stop()

    p = {k: (statistics.median(v), _pct(v, 0.99)) for k, v in times.items()}
    print(f"\n{len(times['plain openai'])} calls each, alternating, {args.seconds:g} s, max_tokens={args.max_tokens}, "
          f"model {served!r} at {base_url}")
    for name, (p50, p99) in p.items():
        print(f"  {name:16s} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms")
    (a50, a99), (b50, b99) = p["afs integration"], p["plain openai"]
    print(f"  ratio (integration / plain): p50 {a50 / b50:.3f}   p99 {a99 / b99:.3f}")
    print(f"  overhead: p50 {a50 - b50:+.2f} ms   p99 {a99 - b99:+.2f} ms")
    print(f"  integration's own work per call (route + request + log_usage, no network): {own_us:.1f} us")
    print(f"  calls logged by the integration during the timed run: {logged}")


if __name__ == "__main__":
    main()
