"""A small Python client of the gancompress HTTP API (what ``gancompress submit`` is built on).

::

    c = GanCompressClient("http://localhost:8000", api_key="...")
    model = c.upload_model(Path("generator.onnx"))
    job = c.submit(model["id"], {"distill": {"steps": 300}}, idempotency_key="build-42")
    job = c.wait(job["id"], on_update=print)
    c.download(job, Path("out"))

Errors from the server raise ``ApiError`` with the problem's ``status``, ``code`` and ``detail``.
Connection errors and 502/503/504 are retried with backoff; a job submission is only retried with
an ``Idempotency-Key`` (one is generated when none is given), so a retry never makes two jobs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "canceled")
RETRY_STATUS = (502, 503, 504)


class ApiError(Exception):
    """An error answer of the API (problem+json), or the server could not be reached (status 0)."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail, self.body = status, code, detail, body or {}


class GanCompressClient:
    def __init__(
        self,
        server: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.server = server.rstrip("/")
        self.retries = retries
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GanCompressClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------
    def _request(
        self, method: str, url: str, *, expect: tuple[int, ...] = (200,), **kw: Any
    ) -> httpx.Response:
        delay = 0.5
        for attempt in range(self.retries + 1):
            body = kw.get("content")
            if body is not None and hasattr(body, "seek"):
                body.seek(0)  # a retried streamed upload starts again from the beginning
            try:
                r = self.http.request(method, url, **kw)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise ApiError(0, "connection_failed", f"cannot reach {self.server}: {e}") from e
                log.info("client.retry url=%s error=%s", url, e)
            else:
                if r.status_code in expect:
                    return r
                if r.status_code not in RETRY_STATUS or attempt == self.retries:
                    raise _error(r)
                log.info("client.retry url=%s status=%d", url, r.status_code)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    def _upload(self, url: str, path: Path) -> dict[str, Any]:
        with path.open("rb") as fh:  # streamed from disk, never read whole into memory
            headers = {"Content-Type": "application/octet-stream", "X-Filename": path.name}
            return self._request("POST", url, content=fh, headers=headers, expect=(200, 201)).json()

    # --- API ---------------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        return self._request("GET", "/readyz").json()

    def upload_model(self, path: Path) -> dict[str, Any]:
        """``POST /v1/models``: ``{id, sha256, format, bytes, inputs}``."""
        return self._upload("/v1/models", path)

    def upload_calibration(self, path: Path) -> dict[str, Any]:
        return self._upload("/v1/calibrations", path)

    def submit(
        self,
        model_id: str,
        spec: dict[str, Any] | None = None,
        calibration: dict[str, str] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/jobs``; ``calibration`` maps input name (``""``: the only image input) to an id."""
        body: dict[str, Any] = {"model_id": model_id, "spec": spec or {}}
        if calibration:
            body["calibration_id"] = calibration
        headers = {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4().hex}"}
        return self._request("POST", "/v1/jobs", json=body, headers=headers, expect=(202,)).json()

    def job(self, job_id: str, etag: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
        """``GET /v1/jobs/{id}``; returns ``(None, etag)`` when unchanged since ``etag``."""
        headers = {"If-None-Match": etag} if etag else {}
        r = self._request("GET", f"/v1/jobs/{job_id}", headers=headers, expect=(200, 304))
        return (None if r.status_code == 304 else r.json()), r.headers.get("etag")

    def jobs(self, state: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        if cursor:
            params["cursor"] = cursor
        return self._request("GET", "/v1/jobs", params=params).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}:cancel", expect=(200, 202)).json()

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}", expect=(204,))

    def wait(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        *,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job finishes (If-None-Match keeps polls cheap); returns the final job."""
        deadline = time.monotonic() + timeout if timeout else None
        etag: str | None = None
        job: dict[str, Any] | None = None
        while True:
            fresh, etag = self.job(job_id, etag)
            if fresh is not None:
                job = fresh
                if on_update is not None:
                    on_update(job)
            if job is not None and job["state"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(0, "wait_timeout", f"job {job_id} did not finish within {timeout:.0f} s", job)
            time.sleep(poll_seconds)

    def download(self, job: dict[str, Any], out_dir: Path, names: list[str] | None = None) -> list[Path]:
        """Download the job's artifacts (all, or ``names``) into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, url in job.get("artifacts", {}).items():
            if names is not None and name not in names:
                continue
            dest = out_dir / Path(name).name
            tmp = dest.with_suffix(dest.suffix + ".part")
            with self.http.stream("GET", url) as r:
                if r.status_code != 200:
                    r.read()
                    raise _error(r)
                with tmp.open("wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
            tmp.replace(dest)
            paths.append(dest)
        return paths


def _error(r: httpx.Response) -> ApiError:
    try:
        body = r.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or f"http_{r.status_code}")
    detail = str(body.get("detail") or r.reason_phrase or "error")
    return ApiError(r.status_code, code, detail, body)
