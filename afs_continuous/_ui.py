"""The live dashboard (private): a FastAPI app serving the views of :mod:`afs_continuous.views`.

Every request opens its own read transaction(s) on the store, so a reload shows what the
daemon and the loggers wrote since; nothing is written and no loop is opened. Pages:
``/`` (overview and per-day figures), ``/experiments`` and ``/experiments/{id}``, ``/runs`` (the charts of
the newest :data:`~afs_continuous._html_report.DETAILED`) and ``/runs/{id}``,
``/versions`` (versions and audit trail); ``/api/views`` the same data as JSON;
``/static/plotly.min.js`` the plotly.js bundle of the installed plotly package (no CDN).
Started by ``afs-continuous ui`` (docs/dashboard.md).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response

from . import _html_report as H
from . import views
from .errors import AfsContinuousError
from .store import Store

__all__ = ["create_app"]

_NAV = (("Overview", "/"), ("Experiments", "/experiments"), ("Training runs", "/runs"),
        ("Versions and audit", "/versions"))
_SCRIPT = '<script src="/static/plotly.min.js"></script>'


def _link(kind: str, key: Any) -> str:
    return f"/experiments/{key}" if kind == "experiment" else f"/runs/{key}"


def create_app(store: Store, *, promotion_threshold: float | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The dashboard app over ``store`` (opened by the caller; read only here).

    Args:
        store: The store to read.
        promotion_threshold: Shown for experiments whose looks recorded none (fraction).
        allowed_hosts: ``Host`` header values served (Starlette's ``TrustedHostMiddleware``);
            others get 400. ``afs-continuous ui`` on a loopback address passes the loopback
            names, so a web page that rebinds its domain to 127.0.0.1 (DNS rebinding) cannot
            read the dashboard. None: every host.

    Raises:
        AfsContinuousError: plotly is not installed (names ``afs-continuous[ui]``'s parts).
    """
    plotly_js = H.plotly_js()  # fail at start, not at the first page, when plotly is missing
    app = FastAPI(title="afs_continuous dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    def html(title: str, body: str) -> HTMLResponse:
        return HTMLResponse(H.page(title, body, script=_SCRIPT, nav=_NAV, note=f"store {H.esc(store.display_url)}"),
                            headers={"Cache-Control": "no-store"})

    @app.exception_handler(AfsContinuousError)
    def store_failed(_request: Any, exc: AfsContinuousError) -> HTMLResponse:  # e.g. the store became unreachable
        body = f'<section><h2>The store cannot be read</h2><p>{H.esc(exc)}</p><p>Reload to try again.</p></section>'
        return HTMLResponse(H.page("afs_continuous: store error", body, script="", nav=_NAV), status_code=503)

    @app.get("/", response_class=HTMLResponse)
    def overview() -> HTMLResponse:
        return html("afs_continuous: overview",
                    H.overview_section(views.overview(store), _link) + H.daily_section(views.model_days(store)))

    @app.get("/experiments", response_class=HTMLResponse)
    def experiments() -> HTMLResponse:
        return html("afs_continuous: experiments",
                    H.experiments_index(views.experiments(store, promotion_threshold=promotion_threshold), _link))

    @app.get("/experiments/{experiment_id}", response_class=HTMLResponse)
    def experiment(experiment_id: int) -> HTMLResponse:
        exp = views.experiment(store, experiment_id, promotion_threshold=promotion_threshold)
        if exp is None:
            raise HTTPException(status_code=404, detail=f"no experiment {experiment_id}")
        return html(f"afs_continuous: experiment {experiment_id}", H.experiment_section(exp))

    @app.get("/runs", response_class=HTMLResponse)
    def runs() -> HTMLResponse:
        return html("afs_continuous: training runs", H.runs_section(views.training_runs(store), _link))

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(run_id: int) -> HTMLResponse:
        found = views.training_run(store, run_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no training run {run_id}")
        return html(f"afs_continuous: training run {run_id}", H.runs_section([found], _link))

    @app.get("/versions", response_class=HTMLResponse)
    def versions() -> HTMLResponse:
        body = ('<section id="versions"><h2>Versions</h2>' + H.versions_section(views.overview(store)) + "</section>"
                + H.audit_section(views.audit_trail(store)))
        return html("afs_continuous: versions and audit", body)

    @app.get("/api/views")
    def api() -> JSONResponse:
        return JSONResponse(views.dashboard(store, promotion_threshold=promotion_threshold),
                            headers={"Cache-Control": "no-store"})

    @app.get("/static/plotly.min.js")
    def plotly() -> Response:
        return Response(plotly_js, media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    return app
