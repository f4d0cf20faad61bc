"""The report file and the live dashboard, opened in headless Chromium: every page loads without a console error,
its named charts hold data, and the dashboard shows new records on a reload (no restart)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.browser

DAILY = ("Calls per day", "Mean quality score per day", "Feedback rate and positive rate per day",
         "Latency p50 and p95 per day (ms)")
EXPERIMENT = ("Experiment 1: relative lift and its always-valid 95% interval",
              "Experiment 1: units per arm and sample-ratio check",
              "Experiment 1: guardrails (relative change, higher is worse)")
RUN = ("Run 1: training data funnel (samples after each stage)", "Run 1: loss curve")
TRAFFIC = "Traffic, last 24 h (calls per hour per version)"


def _assert_charts(charts: dict, titles: tuple[str, ...]) -> None:
    for title in titles:
        assert title in charts, f"no chart {title!r} among {sorted(charts)}"
        assert charts[title]["traces"] > 0 and charts[title]["points"] > 0, (title, charts[title])
        assert charts[title]["height"] > 200, (title, charts[title])


def test_the_report_opens_offline_with_every_chart(demo_workdir: Path, open_page, screenshots: Path,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "afs_continuous.cli", "report", "--db", str(demo_workdir / "usage.db"),
                           "--html", str(path)], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"report written to {path} (open it in a browser)"
    page = open_page(offline=True)
    page.goto(path.as_uri())
    charts = page.charts()
    _assert_charts(charts, (TRAFFIC, *DAILY, *EXPERIMENT, *RUN))
    assert charts[RUN[1]]["traces"] == 2  # training loss and eval loss (the LoRA trainer's stored curve)
    text = page.page.inner_text("body")
    assert "Champion fusechat-3b-ft1" in text and "promotion threshold +5.0%" in text
    assert "lift +22.0% >= 5% and significant" in text  # the final decision's reason, in the decision points
    page.shot(screenshots, "report")
    assert page.requests == [], page.requests  # nothing fetched from the network
    assert page.errors == []
    # the demo's own report (written at its end) holds the same charts
    demo = (demo_workdir / "report.html").read_text(encoding="utf-8")
    assert all(title in demo for title in (*EXPERIMENT, *RUN))


def _copy_store(src: Path, dst: Path) -> Path:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    dst.chmod(0o600)
    return dst


def test_the_dashboard_serves_every_page_and_shows_new_records_on_reload(
        demo_workdir: Path, open_page, start_ui, screenshots: Path, tmp_path: Path, sqlite_rows) -> None:
    db = _copy_store(demo_workdir / "usage.db", tmp_path / "usage.db")
    server = start_ui(db)
    stored = sqlite_rows(db)
    pages = {"/": (TRAFFIC, *DAILY), "/experiments/1": EXPERIMENT, "/runs": RUN, "/runs/1": RUN,
             "/experiments": (), "/versions": ()}
    page = open_page()  # one page for every route: plotly.js is loaded from the server once, then cached
    for route, titles in pages.items():
        page.goto(server.url + route)
        _assert_charts(page.charts(), titles)
        assert page.errors == [], (route, page.errors)
        page.shot(screenshots, "ui" + (route.replace("/", "-") if route != "/" else "-overview"))
    assert sqlite_rows(db) == stored  # serving every page wrote nothing
    versions = page.page.inner_text("body")  # the last page: versions and audit
    assert "fusechat-3b-ft1" in versions and "promote" in versions and "replaced by fusechat-3b-ft1" in versions
    page.page.click("text=Experiments")  # the header's links lead to the pages
    assert page.page.url == server.url + "/experiments"
    page.page.click("a[href='/experiments/1']")
    page.page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3")
    _assert_charts(page.charts(), EXPERIMENT)

    page.goto(server.url + "/")
    before = _traffic_sum(page)
    # a record logged after the server started, in the demo's last hour: a reload shows it
    from afs_continuous import ManualClock, UsageLogger

    with UsageLogger(str(db), clock=ManualClock(datetime(2026, 1, 8, 1, 30, tzinfo=timezone.utc))) as logger:
        logger.log("a question after the start", "an answer", "fusechat-3b-ft1", latency_ms=300.0, quality_score=0.9)
    page.reload()
    page.page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0")
    assert _traffic_sum(page) == before + 1
    assert f"{before + 1:,} calls" in page.page.inner_text("#overview")
    assert page.errors == []

    with urllib.request.urlopen(server.url + "/api/views", timeout=30) as r:  # the same data as JSON
        data = json.load(r)
    assert data["overview"]["traffic_24h"]["calls"] == before + 1
    assert [e["id"] for e in data["experiments"]] == [1] and data["training_runs"][0]["loss_curve"]
    response = page.page.goto(server.url + "/experiments/99")
    assert response is not None and response.status == 404


def _traffic_sum(page) -> int:
    return int(page.page.evaluate("""() => {
        const el = Array.from(document.querySelectorAll('.js-plotly-plot'))
            .find(e => e.layout.title.text.startsWith('Traffic, last 24 h'));
        return el.data.reduce((n, t) => n + t.y.reduce((a, b) => a + b, 0), 0); }"""))
