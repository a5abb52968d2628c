/* The target search on the job page: every candidate measured so far as a point of the latency-
 * quality front (from progress.candidates while the job runs, from report.json's search section
 * once it is done, with the pick ringed), the target lines, a table, and the verdict. */

import { currentKey } from "./api.js";
import { $, el } from "./dom.js";
import { fmtNum, isNum } from "./format.js";

const NS = "http://www.w3.org/2000/svg";
const W = 560, H = 260, ML = 56, MR = 16, MT = 14, MB = 38;

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

/** Milliseconds to 3 significant digits (tiny generators run in hundredths of a millisecond). */
const fmtMs = (v) => (isNum(v) ? (v >= 100 ? v.toFixed(0) : v.toPrecision(3)) : "n/a");

function ticks(lo, hi, n = 4) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(Number(v.toPrecision(6)));
  return out;
}

/** The chart: x = p50 latency at 1 thread (ms), y = SSIM (PSNR where no candidate has SSIM). */
function chart(cands, target) {
  const metric = cands.some((c) => isNum(c.ssim)) ? "ssim" : "psnr";
  const pts = cands.filter((c) => isNum(c.latency_ms) && isNum(c[metric]));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart front", role: "img",
    "aria-label": `${metric.toUpperCase()} by latency of ${pts.length} candidates`, "data-testid": "front-chart" });
  if (!pts.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "tick" }, "no candidate measured yet"));
    return root;
  }
  const line = metric === "ssim" && isNum(target.min_ssim) ? target.min_ssim : null;
  const xs = pts.map((c) => c.latency_ms).concat(isNum(target.max_latency_ms) ? [target.max_latency_ms] : []);
  const ys = pts.map((c) => c[metric]).concat(line !== null ? [line] : []);
  const x1 = Math.max(...xs) * 1.1;
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pad = 0.08 * ((y1 - y0) || Math.abs(y1) || 1);
  y0 -= pad; y1 += pad;
  const sx = (x) => ML + (x / x1) * (W - ML - MR);
  const sy = (y) => MT + (1 - (y - y0) / (y1 - y0)) * (H - MT - MB);
  for (const t of ticks(y0, y1)) {
    root.append(svg("line", { x1: ML, x2: W - MR, y1: sy(t), y2: sy(t), class: "grid" }));
    root.append(svg("text", { x: ML - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick" }, t.toPrecision(3)));
  }
  for (const t of ticks(0, x1)) {
    root.append(svg("text", { x: sx(t), y: H - MB + 15, "text-anchor": "middle", class: "tick" }, String(t)));
  }
  root.append(svg("text", { x: ML + (W - ML - MR) / 2, y: H - 6, "text-anchor": "middle", class: "label" },
    "latency, p50 at 1 thread (ms)"));
  root.append(svg("text", { x: 12, y: MT + (H - MT - MB) / 2, "text-anchor": "middle", class: "label",
    transform: `rotate(-90 12 ${MT + (H - MT - MB) / 2})` }, metric.toUpperCase()));
  if (line !== null) {
    root.append(svg("line", { x1: ML, x2: W - MR, y1: sy(line), y2: sy(line), class: "target", "data-testid": "front-target" }));
  }
  if (isNum(target.max_latency_ms)) {
    const x = sx(target.max_latency_ms);
    root.append(svg("line", { x1: x, x2: x, y1: MT, y2: H - MB, class: "target", "data-testid": "front-target" }));
  }
  for (const c of pts) {
    const kind = c.meets ? " meets" : c.meets_projected ? " projected" : "";
    const g = svg("g", { class: `point${kind}${c.picked ? " picked" : ""}`,
      "data-testid": "front-point", "data-id": c.id });
    const x = sx(c.latency_ms), y = sy(c[metric]);
    g.append(svg("title", {}, `${c.id}: level ${c.level}, ${c.quantize}, ${fmtMs(c.latency_ms)} ms, ` +
      `${metric.toUpperCase()} ${fmtNum(c[metric], 4)}${c.picked ? " (the pick)" : ""}`));
    g.append(c.quantize && c.quantize !== "none"
      ? svg("rect", { x: x - 4, y: y - 4, width: 8, height: 8 })
      : svg("circle", { cx: x, cy: y, r: 4 }));
    if (c.picked) g.append(svg("circle", { cx: x, cy: y, r: 8, class: "ring", "data-testid": "front-pick" }));
    g.append(svg("text", { x: x + 7, y: y + 12, class: "tick" }, c.id));
    root.append(g);
  }
  return root;
}

function row(c, artifacts) {
  let file = "";
  if (c.artifact && artifacts[c.artifact]) {
    file = el("a", { href: artifacts[c.artifact], download: c.artifact, dataset: { testid: `front-file-${c.id}` }, text: c.artifact });
    file.addEventListener("click", (ev) => { // with an API key, the downloads list fetches it with the key
      const same = document.querySelector(`#artifact-list a[data-artifact="${c.artifact}"]`);
      if (currentKey() && same) { ev.preventDefault(); same.click(); }
    });
  }
  const verdict = c.meets ? "meets" : c.meets_projected ? "projected to meet" : c.meets === false ? "misses" : "—";
  return el("tr", { dataset: { testid: "front-row", id: c.id }, class: c.picked ? "picked" : null },
    el("td", { text: `${c.id}${c.picked ? " (pick)" : ""}` }),
    el("td", { class: "num", text: String(c.level) }),
    el("td", { text: c.quantize || "none" }),
    el("td", { class: "num", text: fmtMs(c.latency_ms) }),
    el("td", { class: "num", text: fmtNum(c.ssim, 4) }),
    el("td", { class: "num", text: fmtNum(c.psnr, 2) }),
    el("td", { text: verdict }),
    el("td", {}, file));
}

/** What the verdict line says before the report is in: the job's ``state`` and ``stage``. */
function interim(n, state, stage) {
  const count = `${n} candidate${n === 1 ? "" : "s"}`;
  if (state === "failed" || state === "canceled") return `The job ended before a pick was shipped; ${count} measured.`;
  if (stage && stage !== "search") return `Search finished with ${count}; the pick is being distilled on.`;
  return `Searching: ${count} measured so far.`;
}

/** Show the search panel: ``cands`` (progress.candidates or report.search.candidates), the
 * spec's ``target``, the job's ``summary`` (null while it runs), its ``artifacts``, and while
 * there is no summary the job's ``state`` and ``stage`` for the verdict line. */
export function renderFront(cands, target, summary, artifacts, { state = null, stage = null } = {}) {
  const panel = $("#search");
  panel.hidden = false;
  const sorted = [...cands].sort((a, b) => (a.latency_ms ?? Infinity) - (b.latency_ms ?? Infinity));
  $("#front-chart").replaceChildren(chart(sorted, target || {}));
  $("#front-rows").replaceChildren(...sorted.map((c) => row(c, artifacts || {})));
  const verdict = $("#search-verdict");
  const met = summary ? summary.target_met : null;
  if (met === true || met === false) {
    const pick = cands.find((c) => c.picked);
    const from = pick ? ` (candidate ${pick.id}, distilled on)` : "";
    verdict.textContent = met ? `Target met by the shipped model${from}.`
      : `Target missed: ${(summary.target_misses || []).join("; ")}. The closest candidate was shipped${from}.`;
    verdict.className = met ? "verdict pass" : "verdict fail";
    verdict.dataset.met = String(met);
  } else {
    verdict.textContent = summary ? "" : interim(cands.length, state, stage);
    verdict.className = "verdict";
    delete verdict.dataset.met;
  }
}
