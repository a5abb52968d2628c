/* One job, live: state, stage, progress and ETA while it runs (polled with If-None-Match, so an
 * unchanged job costs a 304); the summary, gates, downloads, samples and report when it succeeds;
 * the error when it fails; and the cancel button. */

import { api, blobURL, currentKey, ensureKey, localPath, problem } from "./api.js";
import { $, el, setText, showProblem } from "./dom.js";
import { fmtDuration, fmtFactor, fmtNum, fmtTime, isNum } from "./format.js";
import { renderFront } from "./front.js";
import { showReport } from "./report.js";

const ACTIVE = new Set(["queued", "running"]);
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const POLL_MS = 1000;
const ARTIFACT_INFO = {
  "model.onnx": "the compressed model",
  "report.json": "the report as data",
  "report.html": "the report as a page",
  "samples.png": "teacher and student samples",
  "log.txt": "the job's log",
};
const CANDIDATE = /^candidate-\d+\.onnx$/;

function renderSummary(summary) {
  setText("summary-ssim", fmtNum(summary.ssim, 4));
  setText("summary-psnr", isNum(summary.psnr) ? `${fmtNum(summary.psnr, 2)} dB` : "n/a");
  setText("summary-speedup", fmtFactor(summary.speedup));
  setText("summary-macs", fmtFactor(summary.mac_reduction));
  setText("summary-size", fmtFactor(summary.size_reduction));
  const gates = summary.gates || {};
  const results = Array.isArray(gates.results) ? gates.results : [];
  const passed = summary.gates_passed !== undefined ? summary.gates_passed : gates.passed;
  const gb = $("#gates-badge");
  if (!results.length) { gb.textContent = "No gates set"; gb.className = "badge gate-none"; gb.dataset.passed = "true"; }
  else if (passed) { gb.textContent = "Gates passed"; gb.className = "badge gate-pass"; gb.dataset.passed = "true"; }
  else { gb.textContent = "Gates failed"; gb.className = "badge gate-fail"; gb.dataset.passed = "false"; }
  $("#gate-results").replaceChildren(...results.map((g) => el("li", { class: g.passed ? "pass" : "fail", dataset: { testid: `gate-${g.gate}` } },
    el("span", { class: "mark", "aria-hidden": "true", text: g.passed ? "✓" : "✗" }),
    ` ${g.metric} ≥ ${g.threshold}: ${isNum(g.value) ? fmtNum(g.value, 4) : "not measured"}`,
    el("span", { class: "sr-only", text: g.passed ? " (passed)" : " (failed)" }),
    g.reason ? el("span", { class: "muted", text: ` — ${g.reason}` }) : null,
  )));
}

function renderArtifacts(artifacts) {
  const list = $("#artifact-list");
  const names = Object.keys(artifacts);
  if (list.dataset.names === names.join(",")) return;
  list.dataset.names = names.join(",");
  list.replaceChildren(...names.map((name) => {
    const href = localPath(artifacts[name]);
    const link = el("a", { href, download: name, dataset: { testid: `artifact-${name}`, artifact: name }, class: "artifact" },
      el("span", { class: "name", text: name }));
    link.addEventListener("click", async (ev) => {
      if (!currentKey()) return; // a plain link works without a key
      ev.preventDefault();
      try {
        const url = await blobURL(href);
        const a = el("a", { href: url, download: name });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
      } catch (e) {
        showProblem($("#job-error-load"), { title: `${name} could not be downloaded`, detail: e.message, code: "", status: 0 });
      }
    });
    const info = ARTIFACT_INFO[name] || (CANDIDATE.test(name) ? "a candidate of the search's front" : "");
    return el("li", {}, link, el("span", { class: "muted", text: ` ${info}` }));
  }));
  $("#artifacts").hidden = names.length === 0;
}

async function showSamples(url) {
  const img = $("#samples-img");
  const path = localPath(url);
  img.addEventListener("load", () => {
    // Sample grids of small generators are tiny: show them up to twice their size, crisp.
    img.style.width = `${Math.min(img.naturalWidth * 2, 1072)}px`;
  }, { once: true });
  img.src = currentKey() ? await blobURL(path) : path;
  $("#samples").hidden = false;
}



function renderJob(job, state) {
  const stateBadge = $("#job-state");
  stateBadge.textContent = job.state;
  stateBadge.dataset.state = job.state;
  stateBadge.className = `badge state-${job.state}`;
  document.title = `${job.state} · Job ${job.id} · gancompress`;
  $("#status").hidden = false;

  const p = job.progress || {};
  const done = job.state === "succeeded";
  setText("job-stage", job.stage || "—");
  setText("job-step", p.total ? `${p.step} / ${p.total}` : "—");
  setText("job-loss", isNum(p.loss) ? p.loss.toPrecision(4) : "—");
  setText("job-eta", ACTIVE.has(job.state) ? fmtDuration(p.eta_seconds) : "—");
  const fraction = done ? 1 : Math.min(1, Math.max(0, p.fraction || 0));
  $("#job-progress").value = fraction;
  setText("job-percent", `${Math.round(fraction * 100)}%`);
  setText("job-message", p.message || "");
  setText("job-created", fmtTime(job.created_at));
  setText("job-started", fmtTime(job.started_at));
  setText("job-finished", fmtTime(job.finished_at));
  setText("job-model", job.model_id || "—");
  setText("job-spec", JSON.stringify(job.spec, null, 2));

  const cancelable = ACTIVE.has(job.state);
  $("#cancel-button").hidden = !cancelable || job.cancel_requested;
  $("#cancel-note").hidden = !(cancelable && job.cancel_requested);

  const failure = $("#failure");
  if ((job.state === "failed" || job.state === "canceled") && (job.error || job.state === "failed")) {
    setText("failure-title", job.state === "failed" ? "The job failed" : "The job was canceled");
    failure.classList.toggle("canceled", job.state === "canceled");
    setText("error-code", job.error ? job.error.code : "unknown");
    setText("error-detail", job.error ? job.error.detail : "No detail was recorded.");
    failure.hidden = false;
  } else if (job.state === "canceled") {
    setText("failure-title", "The job was canceled");
    failure.classList.add("canceled");
    setText("error-code", "canceled");
    setText("error-detail", "The job was canceled before it finished.");
    failure.hidden = false;
  } else {
    failure.hidden = true;
  }

  renderArtifacts(job.artifacts || {});
  const target = (job.spec && job.spec.target) || null;
  if (p.candidates && p.candidates.length && !state.front && !done) { // the live front (the report's once done)
    renderFront(p.candidates, target, null, {}, { state: job.state, stage: job.stage });
  }
  if (done && !state.front && (job.artifacts || {})["report.json"] && (target || p.candidates)) {
    state.front = true; // the report has the whole front, the pick and each candidate's file
    loadReportFront(job, target).catch((e) => console.warn("front:", e.message));
  }
  if (done && job.summary) {
    renderSummary(job.summary);
    $("#results").hidden = false;
  }
  if (done && !state.shown) {
    state.shown = true;
    const a = job.artifacts || {};
    if (a["samples.png"]) showSamples(a["samples.png"]).catch((e) => console.warn("samples:", e.message));
    if (a["report.html"]) {
      $("#report").hidden = false;
      showReport($("#report-frame"), a["report.html"]).catch((e) => {
        $("#report").replaceChildren(el("h2", { text: "Report" }), el("p", { class: "alert error", text: `The report could not be loaded: ${e.message}` }));
      });
    }
  }
}

async function loadReportFront(job, target) {
  const res = await api(localPath(job.artifacts["report.json"]));
  if (!res.ok) throw new Error((await problem(res)).detail);
  const report = await res.json();
  if (report.search) renderFront(report.search.candidates, target, job.summary, job.artifacts || {});
}

/** The job page: poll the job (conditional GET) until it ends, render it, cancel it. */
export async function initJob() {
  const id = document.body.dataset.jobId;
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const loadError = $("#job-error-load");
  const state = { etag: null, job: null, timer: null, failures: 0, shown: false };

  const schedule = (ms = POLL_MS) => {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, document.hidden ? Math.max(ms, 5000) : ms);
  };

  async function poll() {
    let res;
    try {
      res = await api(path, { headers: state.etag ? { "If-None-Match": state.etag } : {} });
    } catch (e) {
      state.failures += 1;
      showProblem(loadError, { title: "Connection lost", detail: `${e.message}; retrying…`, code: "", status: 0 });
      schedule(Math.min(10000, POLL_MS * 2 ** state.failures));
      return;
    }
    state.failures = 0;
    if (res.status === 304) { loadError.hidden = true; schedule(); return; }
    if (!res.ok) {
      const p = await problem(res);
      showProblem(loadError, p);
      if (res.status === 404) {
        const stateBadge = $("#job-state");
        stateBadge.textContent = "not found";
        stateBadge.dataset.state = "not-found";
      } else {
        schedule(5000);
      }
      return;
    }
    loadError.hidden = true;
    state.etag = res.headers.get("ETag");
    state.job = await res.json();
    renderJob(state.job, state);
    if (!TERMINAL.has(state.job.state)) schedule();
  }

  $("#cancel-button").addEventListener("click", async () => {
    const button = $("#cancel-button");
    button.disabled = true;
    try {
      const res = await api(`${path}:cancel`, { method: "POST" });
      if (res.ok) {
        state.etag = null;
        state.job = await res.json();
        renderJob(state.job, state);
      } else {
        showProblem(loadError, await problem(res));
      }
    } catch (e) {
      showProblem(loadError, { title: "Not canceled", detail: e.message, code: "", status: 0 });
    } finally {
      button.disabled = false;
      if (!state.job || !TERMINAL.has(state.job.state)) schedule(300);
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.job && !TERMINAL.has(state.job.state)) schedule(0);
  });

  await ensureKey();
  await poll();
}
