/* report.html of a job, in a sandboxed frame: on the job page and on a page of its own. */

import { api, ensureKey, localPath, problem } from "./api.js";
import { $, showProblem } from "./dom.js";

/** Show report.html in ``frame``: fetched with the key, set as srcdoc of a sandboxed frame. */
export async function showReport(frame, url) {
  const res = await api(localPath(url));
  if (!res.ok) throw new Error((await problem(res)).detail);
  // srcdoc in a sandboxed frame (no scripts, opaque origin): the report cannot reach this page.
  frame.srcdoc = await res.text();
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
