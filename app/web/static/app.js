/* gancompress web UI: plain JavaScript over the JSON API (no framework, no build step, nothing
 * external). This entry module starts the page named by <body data-page>; the pages and their
 * helpers are ES modules beside it:
 *
 *   api.js      the API key, fetch with the key, problem+json, the multipart upload
 *   dom.js      element helpers, problem boxes, badges
 *   format.js   numbers, durations, times, sizes
 *   catalog.js  the submit form from GET /v1/catalog
 *   submit.js   page "/": the form, the spec preview, the upload
 *   jobs.js     page "/jobs": the job list
 *   job.js      page "/jobs/{id}": one job, live
 *   report.js   page "/jobs/{id}/report", and the report frame of the job page */

import { initKeyForm } from "./api.js";
import { initJob } from "./job.js";
import { initJobs } from "./jobs.js";
import { initReport } from "./report.js";
import { initSubmit } from "./submit.js";

const PAGES = { submit: initSubmit, jobs: initJobs, job: initJob, report: initReport };

function start() {
  initKeyForm();
  const init = PAGES[document.body.dataset.page];
  if (init) init().catch((e) => console.error("gancompress:", e));
}

// A module runs after the document is parsed; the check keeps that true if it is ever loaded async.
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
