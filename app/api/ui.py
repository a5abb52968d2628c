"""The web UI: server-rendered page shells (Jinja2) whose data comes from the JSON API via ``fetch``.

The pages hold no job data themselves, so API keys work the same as for curl: when the API answers
401 the page asks for a key, keeps it in ``localStorage`` and sends ``Authorization: Bearer``.
Nothing external is ever loaded (one CSS file and vanilla ES modules, all served here), and every page
carries a Content-Security-Policy that says so.

Pages: ``/`` (submit), ``/jobs`` (list), ``/jobs/{id}`` (live status and results),
``/jobs/{id}/report`` (report.html on its own, in a sandboxed frame).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from worker.core.jobs import JobState
from worker.errors import NotFoundError
from worker.spec import JOB_FILES

WEB = Path(__file__).resolve().parent.parent / "web"
STATIC = WEB / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
JOB_ID = re.compile(r"^job_[A-Za-z0-9_-]{1,59}$")

# report.html is rendered inside a sandboxed frame (srcdoc), which inherits this policy: it needs
# inline styles and data: images. Scripts come only from this origin, and nothing leaves it.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "frame-src 'self' blob: data:",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'self'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(WEB / "templates"))


@lru_cache(maxsize=32)
def _static_version(name: str) -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    """``/static/<name>?v=<content hash>``: cached for a year, and a new file gets a new URL."""
    return f"/static/{name}?v={_static_version(name)}"


templates.env.globals["static_url"] = static_url


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status, headers=HEADERS)
    return response


@router.get("/", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    return _page(request, "submit.html", nav="submit", title="Compress a generator")


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return _page(request, "jobs.html", nav="jobs", title="Jobs", states=[str(s) for s in JobState])


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    if not JOB_ID.match(job_id):
        return _page(request, "not_found.html", 404, nav="jobs", title="Not found", what=job_id)
    return _page(request, "job.html", nav="jobs", title=f"Job {job_id}", job_id=job_id, artifacts=JOB_FILES)


@router.get("/jobs/{job_id}/report", response_class=HTMLResponse)
def report_page(request: Request, job_id: str) -> HTMLResponse:
    if not JOB_ID.match(job_id):
        return _page(request, "not_found.html", 404, nav="jobs", title="Not found", what=job_id)
    return _page(request, "report.html", nav="jobs", title=f"Report of {job_id}", job_id=job_id)


@router.get("/static/{name}")
def static_file(request: Request, name: str, v: str | None = None) -> Response:
    """A static file. With the current ``?v=`` (the pages' entry script and stylesheet) it is cached
    for a year; without it (the ES modules the entry script imports) the browser revalidates it
    with ``If-None-Match`` and an unchanged file costs a ``304``."""
    path = STATIC / name
    suffix = Path(name).suffix
    if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES or not path.is_file():
        raise NotFoundError(f"no static file {name!r}")
    version = _static_version(name)
    cache = "public, max-age=31536000, immutable" if v == version else "no-cache"
    headers = {"Cache-Control": cache, "X-Content-Type-Options": "nosniff", "ETag": f'"{version}"'}
    if f'"{version}"' in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=STATIC_TYPES[suffix], headers=headers)
