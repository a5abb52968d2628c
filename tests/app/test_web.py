"""The web UI's shells and static files, without a browser (tests/browser drives the pages): the
pages load one entry module, every module it imports (transitively) exists, is served as
JavaScript and stays under the size guide, and static files are cached by content."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import ui

STATIC = Path(ui.__file__).resolve().parent.parent / "web" / "static"
IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"\./([\w-]+\.js)";', re.M)
EXPORT = re.compile(r"^export (?:async )?(?:function|const|let) (\$|\w+)", re.M)
MAX_LINES = 400


@pytest.fixture(scope="module")
def web() -> TestClient:
    app = FastAPI()
    app.include_router(ui.router)
    return TestClient(app)


def _module_graph(entry: str = "app.js") -> dict[str, list[str]]:
    """Module name -> the modules it imports, from ``entry`` on."""
    graph: dict[str, list[str]] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in graph:
            continue
        graph[name] = [dep for _, dep in IMPORT.findall((STATIC / name).read_text())]
        todo += graph[name]
    return graph


@pytest.mark.parametrize("path", ["/", "/jobs", "/jobs/job_abc", "/jobs/job_abc/report"])
def test_every_page_loads_the_entry_module(web: TestClient, path: str) -> None:
    r = web.get(path)
    assert r.status_code == 200
    scripts = re.findall(r"<script[^>]*>", r.text)
    assert scripts == [f'<script type="module" src="{ui.static_url("app.js")}">'], scripts
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_every_module_is_reachable_and_exists() -> None:
    graph = _module_graph()
    on_disk = {p.name for p in STATIC.glob("*.js")}
    missing = {m for deps in graph.values() for m in deps} - on_disk
    assert not missing, f"imported but not in app/web/static: {missing}"
    assert set(graph) == on_disk, f"never imported from app.js: {on_disk - set(graph)}"


def test_modules_stay_under_the_size_guide() -> None:
    long = {p.name: n for p in STATIC.glob("*.js") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_the_imported_names_are_exported() -> None:
    """A misspelt import fails here, not only in Chromium."""
    for name in _module_graph():
        for names, dep in IMPORT.findall((STATIC / name).read_text()):
            exported = set(EXPORT.findall((STATIC / dep).read_text()))
            wanted = {n.strip() for n in names.split(",") if n.strip()}
            assert wanted <= exported, f"{name} imports {wanted - exported} from {dep}"


def test_static_files_are_cached_by_content(web: TestClient) -> None:
    versioned = web.get(ui.static_url("app.js"))
    assert versioned.status_code == 200
    assert versioned.headers["content-type"].startswith("text/javascript")
    assert "immutable" in versioned.headers["cache-control"]
    module = web.get("/static/api.js")  # imported without a version: revalidated on every load
    assert module.status_code == 200 and module.headers["cache-control"] == "no-cache"
    again = web.get("/static/api.js", headers={"If-None-Match": module.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert web.get("/static/api.js", headers={"If-None-Match": '"other"'}).status_code == 200
