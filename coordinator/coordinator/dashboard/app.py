"""The dashboard's ASGI application: HTML pages and the JSON API under ``/api/``.

Everything is read-only. Every path but ``/login`` and ``/static/`` needs a
session (cookie, from logging in with the operator token) or, for the API,
``Authorization: Bearer TOKEN``. Pages are rendered on the server (Jinja2,
autoescaped: party names and ids come from parties) and refresh themselves
with ``<meta http-equiv="refresh">``; no script runs, and the
Content-Security-Policy lets the page load nothing but the coordinator's own
stylesheet.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.middleware.trustedhost import TrustedHostMiddleware

from coordinator.dashboard import charts
from coordinator.dashboard.access import SESSION_COOKIE, SESSION_SECONDS, Sessions, token_matches
from coordinator.dashboard.views import (
    AUDIT_PAGE,
    AuditLog,
    Dataset,
    Enclave,
    Job,
    JobSummary,
    Model,
    Overview,
    Party,
    Views,
)
from protocols.errors import NotFound

REFRESH_SECONDS = 5
FAILED_LOGIN_DELAY = 0.5
MAX_LOGIN_BODY = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
OPEN_PATHS = ("/login", "/static/")


def _when(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{value:.1f} s"


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("coordinator.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.filters["size"] = _size
    return env


def create_app(views: Views, token: str, sessions: Sessions | None = None) -> FastAPI:
    """The dashboard over ``views``; ``token`` is the operator token that logs in."""
    sessions = sessions or Sessions()
    templates = _templates()
    app = FastAPI(
        title="Detente coordinator dashboard",
        description="Read-only view of the coordinator: enclaves, parties, data sets' public "
        "metadata, jobs, sealed models and the audit log. Authenticate with "
        "`Authorization: Bearer <operator token>` or the session cookie of the pages.",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: no external network
        redoc_url=None,
    )
    app.mount("/static", StaticFiles(packages=[("coordinator.dashboard", "static")]), name="static")

    def signed_in(request: Request) -> bool:
        if sessions.valid(request.cookies.get(SESSION_COOKIE)):
            return True
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(presented) and token_matches(token, presented)

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if not path.startswith(OPEN_PATHS) and not signed_in(request):
            if path.startswith("/api/"):
                response: Response = JSONResponse(
                    {
                        "detail": "log in: send `Authorization: Bearer <operator token>` (the "
                        "token is in the coordinator's home, file dashboard-token)"
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            else:
                response = RedirectResponse("/login", status_code=303)
        else:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def page(
        name: str, status: int = 200, refresh: int | None = REFRESH_SECONDS, **context: Any
    ) -> HTMLResponse:
        body = templates.get_template(name).render(
            simulation=views.simulation(),
            refresh=refresh,
            now=_when(int(time.time() * 1000)),
            **context,
        )
        return HTMLResponse(body, status_code=status)

    # -- login -------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form() -> HTMLResponse:
        return page("login.html", refresh=None, failed=False)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        body = await request.body()
        presented = ""
        if len(body) <= MAX_LOGIN_BODY:
            presented = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if not presented or not token_matches(token, presented):
            time.sleep(FAILED_LOGIN_DELAY)  # slows guessing (the token has 256 bits anyway)
            return page("login.html", status=401, refresh=None, failed=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.open(),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        sessions.close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- pages -------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview_page() -> HTMLResponse:
        return page("overview.html", overview=views.overview(), jobs=views.jobs()[:10])

    @app.get("/enclaves", response_class=HTMLResponse, include_in_schema=False)
    def enclaves_page() -> HTMLResponse:
        return page("enclaves.html", enclaves=views.enclaves())

    @app.get("/parties", response_class=HTMLResponse, include_in_schema=False)
    def parties_page() -> HTMLResponse:
        return page("parties.html", parties=views.parties(), datasets=views.datasets())

    @app.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page() -> HTMLResponse:
        return page("jobs.html", jobs=views.jobs())

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: str) -> HTMLResponse:
        try:
            job = views.job(job_id)
        except NotFound:
            return page("missing.html", status=404, what=f"no job {job_id}")
        progress = charts.line_chart(
            [(p.seconds, float(p.round)) for p in job.progress],
            "seconds since start",
            "rounds",
            y_max=float(job.rounds),
        )
        curves = [
            (s, charts.metric_chart([(p.round, p.value) for p in s.points], job.rounds))
            for s in job.metrics
            if s.points
        ]
        return page("job.html", job=job, progress_chart=progress, metric_charts=curves)

    @app.get("/models", response_class=HTMLResponse, include_in_schema=False)
    def models_page() -> HTMLResponse:
        return page("models.html", models=views.models())

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit_page() -> HTMLResponse:
        return page("audit.html", audit=views.audit())

    # -- JSON API ----------------------------------------------------------------------
    @app.get("/api/overview", tags=["api"])
    def api_overview() -> Overview:
        return views.overview()

    @app.get("/api/enclaves", tags=["api"])
    def api_enclaves() -> list[Enclave]:
        return views.enclaves()

    @app.get("/api/parties", tags=["api"])
    def api_parties() -> list[Party]:
        return views.parties()

    @app.get("/api/datasets", tags=["api"])
    def api_datasets() -> list[Dataset]:
        return views.datasets()

    @app.get("/api/jobs", tags=["api"])
    def api_jobs() -> list[JobSummary]:
        return views.jobs()

    @app.get("/api/jobs/{job_id}", tags=["api"])
    def api_job(job_id: str) -> Job:
        try:
            return views.job(job_id)
        except NotFound:
            raise HTTPException(404, f"no job {job_id!r}: list jobs at /api/jobs") from None

    @app.get("/api/models", tags=["api"])
    def api_models() -> list[Model]:
        return views.models()

    @app.get("/api/audit", tags=["api"])
    def api_audit(
        limit: int = Query(AUDIT_PAGE, ge=0, le=10_000, description="newest entries to list"),
    ) -> AuditLog:
        return views.audit(limit)

    return app


def with_trusted_hosts(app: FastAPI, host: str) -> Any:
    """Refuse requests whose Host header is not this address (DNS rebinding)."""
    hosts = {"127.0.0.1", "localhost", "::1", "[::1]", host}
    return TrustedHostMiddleware(app, allowed_hosts=sorted(hosts))
