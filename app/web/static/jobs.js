/* The job list: newest first, filtered by state, paged with the API's cursor. */

import { api, ensureKey, problem } from "./api.js";
import { $, badge, el, showProblem, timeEl } from "./dom.js";
import { fmtFactor, fmtNum, isNum } from "./format.js";

function resultText(job) {
  if (job.summary) {
    const s = job.summary;
    const parts = [];
    if (isNum(s.ssim)) parts.push(`SSIM ${fmtNum(s.ssim, 3)}`);
    if (isNum(s.speedup)) parts.push(`${fmtFactor(s.speedup)} faster`);
    if (isNum(s.size_reduction)) parts.push(`${fmtFactor(s.size_reduction)} smaller`);
    return parts.join(" · ") || "done";
  }
  if (job.error) return job.error.code;
  return "";
}

function jobRow(job) {
  const prune = (job.spec && job.spec.prune) || {};
  const method = [prune.method, isNum(prune.ratio) ? prune.ratio : null].filter((x) => x !== null && x !== undefined).join(" ");
  const progress = job.state === "running"
    ? `${job.stage} · ${Math.round((job.progress.fraction || 0) * 100)}%`
    : job.stage;
  return el("tr", { dataset: { testid: "job-row", jobId: job.id, state: job.state } },
    el("td", { dataset: { label: "Job" } },
      el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, class: "job-link", title: job.id, dataset: { testid: "job-link" } }, el("code", { text: job.id }))),
    el("td", { dataset: { label: "State" } }, badge(job.state, "job-row-state")),
    el("td", { dataset: { label: "Stage" }, text: progress }),
    el("td", { dataset: { label: "Method" }, text: method || "—" }),
    el("td", { dataset: { label: "Result" }, class: job.state === "failed" ? "error-text" : "", text: resultText(job) || "—" }),
    el("td", { dataset: { label: "Created" } }, timeEl(job.created_at)),
  );
}

/** The job list page: a state filter (kept in the URL), refresh and cursor pagination. */
export async function initJobs() {
  const body = $("#jobs-body");
  const table = $("[data-testid=jobs-table]");
  const filter = $("#state-filter");
  const more = $("#load-more");
  const empty = $("#jobs-empty");
  const loading = $("#jobs-loading");
  const errorBox = $("#list-error");
  let cursor = null;
  let generation = 0;

  filter.value = new URLSearchParams(location.search).get("state") || "";

  async function load(reset) {
    const mine = reset ? ++generation : generation;
    const q = new URLSearchParams({ limit: "20" });
    if (filter.value) q.set("state", filter.value);
    if (!reset && cursor) q.set("cursor", cursor);
    loading.hidden = false;
    more.disabled = true;
    errorBox.hidden = true;
    try {
      const res = await api(`/v1/jobs?${q}`);
      if (mine !== generation) return; // a newer filter won
      if (!res.ok) { showProblem(errorBox, await problem(res)); return; }
      const page = await res.json();
      if (reset) body.replaceChildren();
      body.append(...page.items.map(jobRow));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      empty.hidden = body.children.length > 0;
      table.hidden = body.children.length === 0;
      empty.firstChild.textContent = filter.value ? `No ${filter.value} jobs. ` : "No jobs yet. ";
    } catch (e) {
      showProblem(errorBox, { title: "The jobs could not be loaded", detail: e.message, code: "", status: 0 });
    } finally {
      if (mine === generation) { loading.hidden = true; more.disabled = false; }
    }
  }

  filter.addEventListener("change", () => {
    const url = new URL(location.href);
    if (filter.value) url.searchParams.set("state", filter.value); else url.searchParams.delete("state");
    history.replaceState(null, "", url);
    load(true);
  });
  $("#filter-form").addEventListener("submit", (ev) => { ev.preventDefault(); load(true); });
  $("[data-action=refresh]").addEventListener("click", () => load(true));
  more.addEventListener("click", () => load(false));
  await ensureKey();
  await load(true);
}
