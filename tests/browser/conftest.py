"""Browser tests of the dashboard: the HTML report and ``afs-continuous ui`` in a real headless Chromium.

They need Chromium (``AFS_CHROMIUM``, else ``chromium`` on PATH, else /usr/bin/chromium) and the playwright
package (never ``playwright install``: the system's Chromium is used), and skip with the reason otherwise
(fail, with ``AFS_REQUIRE_BROWSER=1``, as in CI).
One demo store is built per session by running the demo script (real LoRA training, ~25-35 s). Full-page
screenshots go to ``$AFS_ARTIFACTS_DIR/screenshots`` (default ``artifacts/screenshots/`` at the repository root).
``AFS_TEST_DEMO_DIR`` reuses an earlier demo run's workdir (see :func:`demo_workdir`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).parents[2]
DEMO = ROOT / "examples" / "continuous_learning_demo.py"


def chromium_path() -> str | None:
    """The Chromium executable to drive, or None."""
    for candidate in (os.environ.get("AFS_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (python) is not installed"
    for mod in ("plotly", "fastapi", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is not installed (pip install 'afs-continuous[ui]')"
    if chromium_path() is None:
        return "no Chromium executable (set AFS_CHROMIUM, or install chromium)"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; fail instead when ``AFS_REQUIRE_BROWSER=1`` (CI: the browser tests must run)."""
    if os.environ.get("AFS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (AFS_REQUIRE_BROWSER=1: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _browser_available(request: Any) -> None:
    if "browser" in request.keywords:
        reason = _skip_reason()
        if reason is not None:
            skip_or_fail(reason)


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = Path(os.environ.get("AFS_ARTIFACTS_DIR") or ROOT / "artifacts") / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store the demo built: one experiment (promoted), one LoRA training run with its loss curve, audit.

    ``AFS_TEST_DEMO_DIR``: reuse the workdir of an earlier ``continuous_learning_demo.py --workdir DIR`` run
    (of this version) instead of running the demo again (quicker while working on the dashboard).
    """
    reuse = os.environ.get("AFS_TEST_DEMO_DIR")
    if reuse:
        assert (Path(reuse) / "usage.db").is_file() and (Path(reuse) / "report.html").is_file(), reuse
        return Path(reuse)
    data = Path(os.environ.get("AFS_ALPACA_EVAL_DIR") or ROOT.parent / "shared" / "data" / "alpaca_eval")
    if not (data / "FuseChat-Llama-3.2-3B-Instruct.jsonl.gz").exists():
        skip_or_fail(f"AlpacaEval data not found in {data} (set AFS_ALPACA_EVAL_DIR)")
    workdir = tmp_path_factory.mktemp("demo") / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(DEMO), "--workdir", str(workdir), "--data-dir", str(data),
                           "--no-download"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"report: {workdir / 'report.html'} (open it in a browser)" in proc.stdout
    return workdir


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True)
        yield b
        b.close()


class Page:
    """A Chromium page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, *, offline: bool = False) -> None:
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1300, "height": 900})
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.requests: list[str] = []
        if offline:  # the report must not reach the network: every non-file request fails (and is recorded)
            def block(route: Any) -> None:
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    self.requests.append(route.request.url)
                    route.abort()

            self.page.route("**/*", block)

    def goto(self, url: str) -> None:
        response = self.page.goto(url, wait_until="load")
        assert response is None or response.ok, f"{url}: HTTP {response.status}"
        self.page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length"
                                    " >= document.querySelectorAll('.js-plotly-plot').length", timeout=15_000)

    def reload(self) -> None:
        self.page.reload(wait_until="load")

    def charts(self) -> dict[str, dict[str, int]]:
        """Every plotly chart of the page: ``{title: {"traces": n, "points": points in all traces}}``."""
        found = self.page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => ({
            title: (el.layout && el.layout.title && el.layout.title.text) || '',
            traces: (el.data || []).length,
            points: (el.data || []).reduce((n, t) => n + ((t.x || t.y || []).length || 0), 0),
            height: el.getBoundingClientRect().height}))""")
        return {c["title"]: c for c in found}

    def shot(self, folder: Path, name: str) -> Path:
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    pages: list[Page] = []

    def make(**kwargs: Any) -> Page:
        p = Page(browser, **kwargs)
        pages.append(p)
        return p

    yield make
    for p in pages:
        p.close()
