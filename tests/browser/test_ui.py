"""The web UI in headless Chromium against the real service (uvicorn + Celery worker + Redis + the
sandboxed engine): submit, watch, cancel, fail, list, and the API-key prompt. Every test also checks
that the page logged no errors and asked nothing of another host, and screenshots each page at 1280
and 390 pixels wide (into tmp_path and /tmp/ui-shots/)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import httpx
import pytest

from tests.app.files import onnx_bytes
from tests.browser.conftest import JOB_TIMEOUT_MS, Browser, KeyedService
from tests.integration.conftest import Service, wait_for

pytestmark = pytest.mark.browser

TINY = {"steps": "5", "budget": "5"}
LONG = {"steps": "1000000", "budget": "120"}
JOB_URL = re.compile(r".*/jobs/(job_[A-Za-z0-9_-]+)$")

# Records every state the job page shows from now on (the poll may be quicker than a Python loop).
# Installed with evaluate(), not add_init_script(): an init script also runs in the report's
# sandboxed frame, where Chromium refuses it with a console error.
RECORD_STATES = """() => {
  window.__seen = [];
  const badge = document.querySelector("[data-testid=job-state]");
  const record = () => window.__seen.push({
    state: badge.dataset.state,
    stage: document.querySelector("[data-testid=job-stage]").textContent,
    step: document.querySelector("[data-testid=job-step]").textContent,
    percent: document.querySelector("[data-testid=job-percent]").textContent,
  });
  record();
  new MutationObserver(record).observe(document.querySelector("main"),
    { subtree: true, childList: true, characterData: true, attributes: true });
}"""


def _state(b: Browser, *states: str, timeout: float = JOB_TIMEOUT_MS) -> str:
    """Wait until the job page's state badge shows one of ``states``; return it."""
    sel = ", ".join(f"[data-testid=job-state][data-state={s}]" for s in states)
    b.page.wait_for_selector(sel, timeout=timeout)
    return str(b.page.get_attribute("[data-testid=job-state]", "data-state"))


def _open_form(b: Browser) -> None:
    b.go("/")
    b.page.wait_for_selector("[data-testid=submit-form][data-ready=true]")


def _fill_form(b: Browser, model: Path, steps: str, budget: str) -> None:
    _open_form(b)
    b.page.set_input_files("[data-testid=model-input]", str(model))
    b.page.fill("[data-testid=distill-steps]", steps)
    b.page.fill("[data-testid=distill-budget]", budget)


def _submit(b: Browser) -> str:
    """Click submit, wait for the job page, return the job id."""
    b.page.click("[data-testid=submit-button]")
    b.page.wait_for_url(JOB_URL)
    m = JOB_URL.match(b.page.url)
    assert m, b.page.url
    return m.group(1)


def _newest_job(b: Browser) -> str | None:
    r = b.page.request.get(f"{b.base}/v1/jobs?limit=1")
    assert r.status == 200, r.text()
    items = r.json()["items"]
    return str(items[0]["id"]) if items else None


def _api_job(b: Browser, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = b.page.request.get(f"{b.base}/v1/jobs/{job_id}", headers=headers or {})
    assert r.status == 200, r.text()
    return dict(r.json())


def test_submit_a_generator_and_watch_it_succeed(ui: Browser, generator_onnx: Path) -> None:
    """The form (choices from /v1/catalog), the live job page, the summary, downloads, samples and
    the embedded report; then the job list shows the job."""
    page = ui.page
    _open_form(ui)
    catalog = page.request.get(f"{ui.base}/v1/catalog").json()
    for testid, key in (("prune-method", "prune_methods"), ("prune-criterion", "criteria"),
                        ("export-quantize", "quantization")):  # fmt: skip
        options = page.eval_on_selector_all(f"[data-testid={testid}] option", "os => os.map(o => o.value)")
        assert options == [item["name"] for item in catalog[key]], testid
    assert page.input_value("[data-testid=export-opset]") == "17"
    # Descriptions and which parameters apply come from the catalogue too.
    methods = {m["name"]: m for m in catalog["prune_methods"]}
    assert page.inner_text("#prune-method-help") == methods["channel"]["description"]
    page.select_option("[data-testid=prune-method]", "unstructured")
    assert "criterion" not in methods["unstructured"]["parameters"]["properties"]
    assert page.is_disabled("[data-testid=prune-criterion]")
    assert page.inner_text("#prune-method-help") == methods["unstructured"]["description"]
    page.select_option("[data-testid=prune-method]", "channel")
    assert page.is_enabled("[data-testid=prune-criterion]")
    ui.assert_labelled()
    page.set_input_files("[data-testid=model-input]", str(generator_onnx))
    page.select_option("[data-testid=prune-method]", "channel")
    page.fill("[data-testid=prune-ratio]", "0.5")
    page.fill("[data-testid=distill-steps]", TINY["steps"])
    page.fill("[data-testid=distill-budget]", TINY["budget"])
    page.fill("[data-testid=gate-min-ssim]", "-1")  # always passes: the badge says so
    page.click("[data-testid=advanced] summary")
    preview = json.loads(page.inner_text("[data-testid=spec-preview]"))
    assert preview["distill"] == {"steps": 5, "budget_seconds": 5}
    assert preview["gates"] == {"min_ssim": -1}
    ui.at_widths("submit-form")

    job_id = _submit(ui)
    page.evaluate(RECORD_STATES)
    assert page.inner_text("[data-testid=job-id]") == job_id
    _state(ui, "queued", "running", "succeeded")
    ui.assert_labelled()
    ui.at_widths("job-submitted")
    assert _state(ui, "succeeded", "failed", "canceled") == "succeeded", page.inner_text("main")

    seen = page.evaluate("window.__seen")
    running = [s for s in seen if s["state"] == "running"]
    assert any(s["stage"] not in ("queued", "—", "") for s in running), f"no progress was shown: {seen}"
    assert page.eval_on_selector("[data-testid=job-progress]", "p => p.value") == 1
    assert page.inner_text("[data-testid=job-percent]") == "100%"
    assert page.is_hidden("[data-testid=cancel-button]")

    job = _api_job(ui, job_id)
    summary = job["summary"]
    page.wait_for_selector("[data-testid=results-panel]:visible")
    assert page.inner_text("[data-testid=summary-ssim]") == f"{summary['ssim']:.4f}"
    assert page.inner_text("[data-testid=summary-psnr]") == f"{summary['psnr']:.2f} dB"
    for testid, key in (("summary-speedup", "speedup"), ("summary-macs", "mac_reduction"),
                        ("summary-size", "size_reduction")):  # fmt: skip
        assert page.inner_text(f"[data-testid={testid}]") == f"{summary[key]:.2f}×", testid
    assert page.text_content("[data-testid=gates-badge]") == "Gates passed"
    assert page.get_attribute("[data-testid=gates-badge]", "data-passed") == "true"
    assert page.is_visible("[data-testid=gate-min_ssim]")

    # every artifact is linked, and every link downloads
    links = page.eval_on_selector_all(
        "[data-testid=artifact-list] a[data-artifact]", "as => as.map(a => [a.dataset.artifact, a.href])"
    )
    assert {name for name, _ in links} == set(job["artifacts"])
    assert {"model.onnx", "report.json", "report.html", "log.txt"} <= set(job["artifacts"])
    for name, href in links:
        r = page.request.get(href)
        assert r.status == 200 and r.body(), name
    report_json = json.loads(page.request.get(dict(links)["report.json"]).body())
    assert report_json["summary"]["ssim"] == pytest.approx(summary["ssim"])
    with page.expect_download() as dl:
        page.click("[data-testid='artifact-model.onnx']")
    assert dl.value.suggested_filename == "model.onnx"
    assert Path(dl.value.path()).stat().st_size > 0

    if "samples.png" in job["artifacts"]:
        page.wait_for_function(
            "() => { const i = document.querySelector('[data-testid=samples-img]'); "
            "return i && i.complete && i.naturalWidth > 0; }"
        )

    # the embedded report (sandboxed frame) shows its headline numbers
    frame = page.frame_locator("[data-testid=report-frame]")
    headline = frame.locator("[data-testid=headline-ssim]")
    headline.wait_for()
    assert float(headline.inner_text()) == pytest.approx(summary["ssim"], abs=1e-4)
    assert frame.locator("[data-testid=headline-psnr]").inner_text().startswith(f"{summary['psnr']:.2f}")
    ui.at_widths("job-succeeded")
    ui.frame_shots("job-succeeded-report", "[data-testid=report-frame]")
    # its contents links jump within the frame (a plain "#quality" in srcdoc loads this page there)
    inner = page.query_selector("[data-testid=report-frame]").content_frame()
    frame.locator("a[href$='#quality']").first.click()
    for _ in range(50):
        if inner.url != "about:srcdoc":
            break
        page.wait_for_timeout(100)
    assert inner.url == "about:srcdoc#quality"
    assert frame.locator("[data-testid=headline-ssim]").count() == 1
    ui.guard.assert_clean()

    # the report on its own
    href = page.get_attribute("[data-testid=report-open]", "href")
    assert href == f"/jobs/{job_id}/report"
    ui.go(href)
    frame = page.frame_locator("[data-testid=report-frame]")
    assert float(frame.locator("[data-testid=headline-ssim]").inner_text()) == pytest.approx(
        summary["ssim"], abs=1e-4
    )
    ui.at_widths("report-page")

    # the list shows it, and the filter keeps or drops it
    ui.go("/jobs")
    row = page.locator(f"[data-testid=job-row][data-job-id={job_id}]")
    row.wait_for()
    assert row.locator("[data-testid=job-row-state]").inner_text().lower() == "succeeded"
    page.select_option("[data-testid=state-filter]", "failed")
    row.wait_for(state="detached")
    assert "state=failed" in page.url
    page.select_option("[data-testid=state-filter]", "succeeded")
    row.wait_for()
    ui.assert_labelled()
    ui.at_widths("jobs-list")
    row.locator("[data-testid=job-link]").click()
    page.wait_for_url(f"**/jobs/{job_id}")
    _state(ui, "succeeded")
    ui.guard.assert_clean()


def test_invalid_uploads_show_the_error_on_the_form(
    ui: Browser, generator_onnx: Path, tmp_path: Path
) -> None:
    page = ui.page
    ui.guard.allow_status(415, 422)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a model at all\x00\x01\x02" * 64)
    _fill_form(ui, garbage, **TINY)
    page.click("[data-testid=submit-button]")
    error = page.locator("[data-testid=form-error]")
    error.wait_for()
    assert "neither a TorchScript archive nor an ONNX model" in error.inner_text()
    assert "unsupported_format" in error.inner_text() and "415" in error.inner_text()
    assert page.url == f"{ui.base}/"
    assert page.is_enabled("[data-testid=submit-button]")
    ui.at_widths("submit-error")

    # a valid model with an invalid spec: the 422 detail names the field
    page.set_input_files("[data-testid=model-input]", str(generator_onnx))
    page.click("[data-testid=advanced] summary")
    page.fill("[data-testid=spec-extra]", '{"prune": {"method": "channel", "ratio": 0.95}}')
    page.click("[data-testid=submit-button]")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=form-error]').textContent.includes('422')"
    )
    assert "ratio" in error.inner_text()
    assert page.url == f"{ui.base}/"

    # JSON that does not parse never leaves the browser
    page.fill("[data-testid=spec-extra]", "{not json")
    page.click("[data-testid=submit-button]")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=form-error]').textContent.includes('not valid JSON')"
    )
    assert page.inner_text("[data-testid=spec-preview]").startswith("Extra spec: not valid JSON")

    # no model: the browser's own validation stops the submission
    _open_form(ui)
    page.click("[data-testid=submit-button]")
    assert page.evaluate("() => document.querySelector('[data-testid=model-input]').validity.valueMissing")
    assert page.is_hidden("[data-testid=form-error]")
    ui.guard.assert_clean()


def test_a_target_search_shows_its_front_and_each_candidate_downloads(
    ui: Browser, generator_onnx: Path
) -> None:
    """The target fields become spec.target (none when empty); the job page draws the front while
    the search runs and, when done, the pick, the verdict and every candidate's file (a sweep)."""
    import onnx

    page = ui.page
    _fill_form(ui, generator_onnx, steps="1000000", budget="25")
    page.click("[data-testid=advanced] summary")
    preview = json.loads(page.inner_text("[data-testid=spec-preview]"))
    assert "target" not in preview and "mode" not in preview.get("prune", {})
    assert page.is_checked("[data-testid=target-quantize]")  # the catalogue's default
    options = page.eval_on_selector_all("[data-testid=prune-mode] option", "os => os.map(o => o.value)")
    assert options == ["", "single", "search", "sweep"]
    page.fill("[data-testid=target-min-ssim]", "0.5")
    page.uncheck("[data-testid=target-quantize]")
    page.select_option("[data-testid=prune-mode]", "sweep")
    preview = json.loads(page.inner_text("[data-testid=spec-preview]"))
    assert preview["target"] == {"min_ssim": 0.5, "quantize": False}
    assert preview["prune"]["mode"] == "sweep"
    page.fill("[data-testid=target-min-ssim]", "")
    preview = json.loads(page.inner_text("[data-testid=spec-preview]"))
    assert "target" not in preview  # the box alone is no target
    page.fill("[data-testid=target-min-ssim]", "0.5")
    # uniform allocation: the sensitivity probing would take most of a 25 s budget on a busy CPU
    # and leave the search time for one candidate only
    page.fill("[data-testid=spec-extra]", '{"prune": {"allocation": "uniform"}}')
    ui.at_widths("submit-target")

    job_id = _submit(ui)
    # the live front: candidate points while it runs (progress.candidates; the pick's distillation
    # after the search takes 40% of the budget, so a 1 s poll cannot miss them all)
    page.wait_for_selector("[data-testid=front-point]", timeout=JOB_TIMEOUT_MS)
    live = page.get_attribute("[data-testid=job-state]", "data-state")
    verdict = page.inner_text("[data-testid=search-verdict]")
    assert live == "running" and re.match(r"Search(ing| finished)", verdict), (live, verdict)
    assert _state(ui, "succeeded", "failed", "canceled") == "succeeded", page.inner_text("main")
    page.wait_for_selector("[data-testid=front-pick]")
    job = _api_job(ui, job_id)
    report = json.loads(page.request.get(urljoin(ui.base + "/", job["artifacts"]["report.json"])).body())
    cands = report["search"]["candidates"]
    assert len(cands) >= 2
    rows = page.eval_on_selector_all("[data-testid=front-row]", "rs => rs.map(r => r.dataset.id)")
    assert sorted(rows) == sorted(c["id"] for c in cands)
    points = page.eval_on_selector_all("[data-testid=front-point]", "ps => ps.map(p => p.dataset.id)")
    assert sorted(points) == sorted(c["id"] for c in cands if c["ssim"] is not None)
    (pick,) = [c["id"] for c in cands if c["picked"]]
    assert page.get_attribute("[data-testid=front-row].picked", "data-id") == pick
    met = job["summary"]["target_met"]
    assert page.get_attribute("[data-testid=search-verdict]", "data-met") == str(met).lower()
    assert ("Target met" if met else "Target missed") in page.inner_text("[data-testid=search-verdict]")
    assert page.locator("[data-testid=front-target]").count() == 1  # the min SSIM line (no height)
    # pick another point of the front: each candidate's file downloads and is a valid ONNX model
    for c in cands:
        link = page.locator(f"[data-testid=front-file-{c['id']}]")
        assert link.get_attribute("download") == c["artifact"]
        body = page.request.get(str(link.get_attribute("href"))).body()
        onnx.checker.check_model(onnx.load_from_string(body))
    with page.expect_download() as dl:
        page.click(f"[data-testid=front-file-{cands[0]['id']}]")
    assert dl.value.suggested_filename == cands[0]["artifact"]
    # the embedded report links each candidate's file to its artifact URL, in a new tab
    frame = page.frame_locator("[data-testid=report-frame]")
    for c in cands:
        link = frame.locator(f"a[href$='/{c['artifact']}']")
        assert link.get_attribute("target") == "_blank"
        assert (
            urlparse(str(link.get_attribute("href"))).path == urlparse(job["artifacts"][c["artifact"]]).path
        )
        assert page.request.get(str(link.get_attribute("href"))).status == 200
    ui.assert_labelled()
    ui.at_widths("job-search")
    ui.guard.assert_clean()


def test_report_links_are_rewritten_for_the_frame(ui: Browser) -> None:
    """``frameable`` in Chromium: section links stay in the frame, a file beside the report becomes
    its artifact URL in a new tab, or, when the UI holds an API key, a note (a tab cannot send it)."""
    ui.go("/jobs")
    src = ui.page.get_attribute("script[type=module]", "src")
    html = (
        '<html><body><a href="#gates">Gates</a> <a href="candidate_c1.onnx" download>candidate_c1.onnx</a>'
        ' <a href="https://example.org/x">x</a></body></html>'
    )
    out = ui.page.evaluate(
        """async ([src, html]) => {
            const { frameable } = await import(new URL(src.replace("app.js", "report.js"), location.href).href);
            const read = (h) => {
                const d = new DOMParser().parseFromString(h, "text/html");
                return [...d.body.querySelectorAll("a, span")].map(e =>
                    [e.tagName, e.getAttribute("href"), e.getAttribute("target"), e.hasAttribute("download"),
                     e.textContent]);
            };
            const url = location.origin + "/v1/jobs/job_x/artifacts/report.html";
            return [read(frameable(html, url, false)), read(frameable(html, url, true))];
        }""",
        [src, html],
    )
    plain, keyed = out
    assert plain == [
        ["A", "about:srcdoc#gates", None, False, "Gates"],
        ["A", f"{ui.base}/v1/jobs/job_x/artifacts/candidate_c1.onnx", "_blank", False, "candidate_c1.onnx"],
        ["A", "https://example.org/x", None, False, "x"],
    ]
    assert keyed[0] == plain[0] and keyed[2] == plain[2]
    assert keyed[1][0] == "SPAN" and keyed[1][4].startswith(
        "candidate_c1.onnx (download it from this job's page"
    )
    ui.guard.assert_clean()


def test_an_invalid_target_is_refused_before_any_job(ui: Browser, generator_onnx: Path) -> None:
    """Out of range: the browser's validation (the catalogue's limits) stops it, and sent anyway
    (the advanced JSON) the server's 422 detail is shown on the form; likewise a target with no
    figure at all. No job starts."""
    page = ui.page
    ui.guard.allow_status(422)
    newest = _newest_job(ui)
    _fill_form(ui, generator_onnx, **TINY)
    page.fill("[data-testid=target-min-ssim]", "2")
    page.click("[data-testid=submit-button]")
    assert page.evaluate(
        "() => document.querySelector('[data-testid=target-min-ssim]').validity.rangeOverflow"
    )
    assert page.url == f"{ui.base}/"
    page.fill("[data-testid=target-min-ssim]", "")
    page.click("[data-testid=advanced] summary")
    error = page.locator("[data-testid=form-error]")
    for extra, detail in (
        ('{"target": {"min_ssim": 2}}', "min_ssim"),
        ('{"target": {"quantize": false}}', "a target needs at least one of"),
    ):
        page.fill("[data-testid=spec-extra]", extra)
        page.click("[data-testid=submit-button]")
        page.wait_for_function(
            "d => { const box = document.querySelector('[data-testid=form-error]');"
            " return !box.hidden && box.textContent.includes('422') && box.textContent.includes(d); }",
            arg=detail,
        )
        assert error.get_attribute("role") == "alert"  # announced
        code = page.inner_text("[data-testid=form-error] [data-testid=problem-code]")
        assert re.fullmatch(r"[a-z_]+ · 422", code), code  # the problem's code and status
        assert page.url == f"{ui.base}/"
    ui.at_widths("submit-target-error")
    assert _newest_job(ui) == newest  # nothing was submitted
    ui.guard.assert_clean()


def test_cancel_a_long_job(ui: Browser, generator_onnx: Path) -> None:
    page = ui.page
    _fill_form(ui, generator_onnx, **LONG)
    job_id = _submit(ui)
    # wait until the engine is distilling (the long part), then cancel
    page.wait_for_selector("[data-testid=job-state][data-state=running]", timeout=JOB_TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=job-stage]').textContent === 'distill'",
        timeout=JOB_TIMEOUT_MS,
    )
    page.wait_for_function(  # the bar moves: step n / total with n > 0
        "() => /^[1-9][0-9]* \\/ [0-9]+$/.test(document.querySelector('[data-testid=job-step]').textContent)",
        timeout=JOB_TIMEOUT_MS,
    )
    assert page.inner_text("[data-testid=job-eta]") != "—"
    ui.at_widths("job-running")
    page.click("[data-testid=cancel-button]")
    # the API either canceled at once or flagged it for the worker
    page.wait_for_selector(
        "[data-testid=cancel-note]:visible, [data-testid=job-state][data-state=canceled]", timeout=30_000
    )
    assert _state(ui, "canceled", "succeeded", "failed", timeout=120_000) == "canceled"
    assert page.is_hidden("[data-testid=cancel-button]")
    assert page.is_hidden("[data-testid=cancel-note]")
    assert page.inner_text("[data-testid=error-code]") == "canceled"
    assert _api_job(ui, job_id)["state"] == "canceled"
    ui.at_widths("job-canceled")
    ui.guard.assert_clean()


def test_a_failed_job_shows_its_error(ui: Browser, service: Service) -> None:
    """A model that passes the upload checks but that the engine rejects."""
    with service.client() as c:
        spec = {"distill": {"steps": 5, "budget_seconds": 5}}
        r = c.post("/v1/jobs", files={"model": ("broken.onnx", onnx_bytes(then="Hardmax"))},
                   data={"spec": json.dumps(spec)})  # fmt: skip
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
    ui.go(f"/jobs/{job_id}")
    assert _state(ui, "failed", "succeeded", "canceled") == "failed"
    job = _api_job(ui, job_id)
    ui.page.wait_for_selector("[data-testid=failure-panel]:visible")
    assert ui.page.inner_text("[data-testid=error-code]") == job["error"]["code"]
    assert ui.page.inner_text("[data-testid=error-detail]") == job["error"]["detail"]
    assert ui.page.is_hidden("[data-testid=results-panel]")
    ui.at_widths("job-failed")
    ui.guard.assert_clean()


def test_job_list_pages_with_load_more(ui: Browser, service: Service, generator_onnx: Path) -> None:
    """More jobs than one page: "Load more" follows the API's cursor until the end, newest first."""
    with service.client() as c:
        model_id = c.post("/v1/models", files={"file": ("g.onnx", generator_onnx.read_bytes())}).json()["id"]
        ids = []
        for _ in range(21):  # canceled while queued: the worker skips them
            r = c.post("/v1/jobs", json={"model_id": model_id, "spec": {"distill": {"steps": 1}}})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
            assert c.post(f"/v1/jobs/{ids[-1]}:cancel").status_code in (200, 202)
        for job_id in ids:  # one the worker had already started stops within seconds
            assert (
                wait_for(c, job_id, ("canceled", "succeeded", "failed"), timeout=120)["state"] == "canceled"
            )
        expected: list[str] = []
        cursor = None
        while True:
            params = {"state": "canceled", "limit": 100} | ({"cursor": cursor} if cursor else {})
            page_ = c.get("/v1/jobs", params=params).json()
            expected += [j["id"] for j in page_["items"]]
            cursor = page_["next_cursor"]
            if not cursor:
                break
    ui.go("/jobs?state=canceled")
    page = ui.page
    assert page.input_value("[data-testid=state-filter]") == "canceled"
    rows = page.locator("[data-testid=job-row]")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=job-row]').length === 20")
    clicks = 0
    while page.is_visible("[data-testid=load-more]"):
        before = rows.count()
        page.click("[data-testid=load-more]")
        page.wait_for_function(f"() => document.querySelectorAll('[data-testid=job-row]').length > {before}")
        clicks += 1
    assert clicks >= 1
    shown = rows.evaluate_all("rs => rs.map(r => r.dataset.jobId)")
    assert shown == expected
    states = set(rows.evaluate_all("rs => rs.map(r => r.dataset.state)"))
    assert states == {"canceled"}
    ui.at_widths("jobs-load-more")
    ui.guard.assert_clean()


def test_keyboard_reaches_every_control(ui: Browser) -> None:
    page = ui.page
    _open_form(ui)
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    seen: list[str] = []
    for _ in range(60):
        page.keyboard.press("Tab")
        testid = page.evaluate("() => document.activeElement.dataset.testid || document.activeElement.id")
        seen.append(testid)
        if testid == "submit-button":
            break
    for testid in ("model-input", "calibration-input", "inputs-input", "prune-method", "prune-ratio",
                   "prune-criterion", "distill-steps", "distill-budget", "export-quantize", "export-opset",
                   "gate-min-ssim", "submit-button"):  # fmt: skip
        assert testid in seen, f"{testid} is not reachable with Tab: {seen}"
    # the advanced section opens from the keyboard
    page.focus("[data-testid=advanced] summary")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.querySelector('[data-testid=advanced]').open")
    ui.guard.assert_clean()


def test_api_key_prompt(
    keyed_ui: Browser, keyed_service: KeyedService, generator_onnx: Path, tmp_path: Path
) -> None:
    """With API keys configured the pages ask for one, keep it, send it (fetch, the upload,
    artifacts, the embedded report) and ask again for a wrong one."""
    b, page = keyed_ui, keyed_ui.page
    b.guard.allow_status(401, 415)
    b.go("/jobs")
    panel = page.locator("[data-testid=apikey-panel]")
    panel.wait_for()
    assert "needs an API key" in page.inner_text("[data-testid=apikey-reason]")
    b.assert_labelled()
    b.at_widths("apikey-prompt")

    page.fill("[data-testid=apikey-input]", "not-the-key")
    page.click("[data-testid=apikey-save]")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=apikey-reason]').textContent.includes('unknown API key')"
    )
    assert panel.is_visible()
    page.fill("[data-testid=apikey-input]", keyed_service.key)
    page.keyboard.press("Enter")
    page.locator("[data-testid=jobs-empty]").wait_for()
    assert panel.is_hidden()
    assert page.is_visible("[data-testid=apikey-status]")
    assert page.evaluate("() => localStorage.getItem('gancompress.apiKey')") == keyed_service.key

    # the stored key goes with the upload: garbage gets its 415, not a 401
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00garbage" * 100)
    _fill_form(b, garbage, **TINY)
    assert panel.is_hidden()
    page.click("[data-testid=submit-button]")
    page.locator("[data-testid=form-error]").wait_for()
    assert "unsupported_format" in page.inner_text("[data-testid=form-error]")

    # a whole job with the key: artifacts, samples and the report are fetched with it
    page.set_input_files("[data-testid=model-input]", str(generator_onnx))
    job_id = _submit(b)
    assert _state(b, "succeeded", "failed", "canceled") == "succeeded", page.inner_text("main")
    assert httpx.get(f"{keyed_service.url}/v1/jobs/{job_id}").status_code == 401
    frame = page.frame_locator("[data-testid=report-frame]")
    frame.locator("[data-testid=headline-ssim]").wait_for()
    if page.is_visible("[data-testid=samples-panel]"):
        page.wait_for_function(
            "() => { const i = document.querySelector('[data-testid=samples-img]'); "
            "return i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0; }"
        )
    with page.expect_download() as dl:
        page.click("[data-testid='artifact-report.json']")
    report = json.loads(Path(dl.value.path()).read_text())
    assert report["summary"]["ssim"] == pytest.approx(
        _api_job(b, job_id, {"Authorization": f"Bearer {keyed_service.key}"})["summary"]["ssim"]
    )

    # forgetting the key asks again
    b.go("/jobs")
    page.locator(f"[data-testid=job-row][data-job-id={job_id}]").wait_for()
    page.click("[data-testid=apikey-forget]")
    page.wait_for_load_state("domcontentloaded")
    panel.wait_for()
    assert page.evaluate("() => localStorage.getItem('gancompress.apiKey')") is None
    b.guard.assert_clean()
