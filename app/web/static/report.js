/* report.html of a job, in a sandboxed frame: on the job page and on a page of its own. */

import { api, currentKey, ensureKey, localPath, problem } from "./api.js";
import { $, showProblem } from "./dom.js";

const ABSOLUTE = /^[a-z][a-z0-9+.-]*:/i;

/** report.html's links made to work in a srcdoc frame, whose relative links resolve against this
 * page, not the report: "#quality" would load this page into the frame (measured in Chromium), so
 * it becomes "about:srcdoc#quality", a jump within the frame; a file beside the report (a sweep's
 * candidate ONNX) becomes its artifact URL, opened in a new tab, which downloads it. A new tab
 * cannot send the API key, so with a key such a link says where the file is instead. */
export function frameable(html, reportUrl, withKey) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  for (const a of doc.querySelectorAll("a[href]")) {
    const href = a.getAttribute("href");
    if (ABSOLUTE.test(href)) continue;
    if (href.startsWith("#")) {
      a.setAttribute("href", `about:srcdoc${href}`);
    } else if (withKey) {
      const note = doc.createElement("span");
      note.textContent = `${a.textContent} (download it from this job's page: the report cannot send the API key)`;
      note.dataset.testid = "report-file-note";
      a.replaceWith(note);
    } else {
      a.setAttribute("href", new URL(href, reportUrl).href);
      a.setAttribute("target", "_blank");
      a.setAttribute("rel", "noopener");
      a.removeAttribute("download"); // a sandboxed frame may not download; the new tab does
    }
  }
  return `<!doctype html>\n${doc.documentElement.outerHTML}`;
}

/** Show report.html in ``frame``: fetched with the key, set as srcdoc of a sandboxed frame. */
export async function showReport(frame, url) {
  const path = localPath(url);
  const res = await api(path);
  if (!res.ok) throw new Error((await problem(res)).detail);
  // srcdoc in a sandboxed frame (no scripts, opaque origin): the report cannot reach this page.
  frame.srcdoc = frameable(await res.text(), new URL(path, location.href).href, Boolean(currentKey()));
}

/** The report page: report.html on its own, full window. */
export async function initReport() {
  const id = document.body.dataset.jobId;
  const box = $("#report-error");
  await ensureKey();
  try {
    const res = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    if (!res.ok) throw new Error((await problem(res)).detail);
    const job = await res.json();
    const url = (job.artifacts || {})["report.html"];
    if (!url) throw new Error(`job ${id} has no report (state: ${job.state}).`);
    await showReport($("#report-frame"), url);
  } catch (e) {
    showProblem(box, { title: "The report could not be loaded", detail: e.message, code: "", status: 0 });
    $("#report-frame").hidden = true;
  }
}
