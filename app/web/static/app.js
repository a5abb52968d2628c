/* gancompress web UI: plain JavaScript over the JSON API (no framework, nothing external).
 *
 * Every call goes through api(): it sends the API key kept in localStorage as
 * "Authorization: Bearer", and when the API answers 401 it shows the key form, waits for a key and
 * retries. Errors are RFC 9457 problem+json; their "detail" is shown where the action happened. */
"use strict";

(() => {
  const KEY = "gancompress.apiKey";
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

  const $ = (sel, root = document) => root.querySelector(sel);

  /** Create an element: el("a", {href: "/", class: "x", dataset: {testid: "y"}}, "text", child). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  // --- API key ----------------------------------------------------------------------------------
  const keyStore = {
    get() {
      try { return localStorage.getItem(KEY) || ""; } catch { return ""; }
    },
    set(v) {
      try { localStorage.setItem(KEY, v); } catch { /* private mode: the key lives for this page */ }
      memoryKey = v;
    },
    clear() {
      try { localStorage.removeItem(KEY); } catch { /* nothing stored */ }
      memoryKey = "";
    },
  };
  let memoryKey = "";
  const currentKey = () => keyStore.get() || memoryKey;
  let keyWaiters = [];

  function showKeyStatus() {
    const status = $("[data-testid=apikey-status]");
    if (status) status.hidden = !currentKey();
  }

  /** Show the key form with the server's reason; resolves once a key was entered. */
  function askForKey(reason) {
    const panel = $("#auth");
    $("#auth-reason").textContent = reason || "Enter an API key to continue.";
    if (panel.hidden) {
      panel.hidden = false;
      $("#api-key").focus();
    }
    return new Promise((resolve) => keyWaiters.push(resolve));
  }

  function initKeyForm() {
    const form = $("#auth-form");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("#api-key");
      const value = input.value.trim();
      if (!value) { input.focus(); return; }
      keyStore.set(value);
      input.value = "";
      $("#auth").hidden = true;
      showKeyStatus();
      const waiting = keyWaiters;
      keyWaiters = [];
      waiting.forEach((resolve) => resolve());
    });
    const forget = $("[data-action=forget-key]");
    forget.addEventListener("click", () => {
      keyStore.clear();
      location.reload();
    });
    showKeyStatus();
  }

  function authHeaders(headers = {}) {
    const key = currentKey();
    return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
  }

  /** fetch() with the API key; a 401 asks for a key and retries. Network errors throw. */
  async function api(path, options = {}) {
    for (;;) {
      const headers = authHeaders({ Accept: "application/json", ...(options.headers || {}) });
      const res = await fetch(path, { ...options, headers, cache: "no-store", credentials: "same-origin" });
      if (res.status !== 401) return res;
      const p = await problem(res);
      await askForKey(currentKey() ? `The server refused the key: ${p.detail}.` : p.detail);
    }
  }

  /** When the service has keys and none is stored, ask before the first call (no 401 round trip). */
  async function ensureKey() {
    if (currentKey()) return;
    try {
      const res = await fetch("/healthz", { cache: "no-store", headers: { Accept: "application/json" } });
      if (res.ok && (await res.json()).auth) await askForKey("This service needs an API key.");
    } catch { /* the API call that follows reports the problem */ }
  }

  /** The problem+json of a failed response, or a stand-in when the body is something else. */
  async function problem(res) {
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    if (body && typeof body === "object" && (body.detail || body.title)) {
      return {
        status: res.status,
        code: body.code || "",
        title: body.title || res.statusText,
        detail: String(body.detail || body.title),
        errors: Array.isArray(body.errors) ? body.errors : [],
      };
    }
    return { status: res.status, code: "", title: res.statusText || "Error", detail: `The server answered HTTP ${res.status}.`, errors: [] };
  }

  function showProblem(box, p) {
    box.replaceChildren(
      el("p", { class: "title" }, el("strong", { text: p.title })),
      el("p", { class: "detail", dataset: { testid: "problem-detail" }, text: p.detail }),
    );
    if (p.errors && p.errors.length > 1) {
      box.append(el("ul", {}, ...p.errors.map((e) => el("li", { text: `${(e.loc || []).join(".")}: ${e.msg}` }))));
    }
    if (p.code || p.status) {
      box.append(el("p", { class: "code" }, el("code", { dataset: { testid: "problem-code" }, text: [p.code, p.status].filter(Boolean).join(" · ") })));
    }
    box.hidden = false;
  }

  // --- formatting ---------------------------------------------------------------------------------
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmtNum = (v, digits) => (isNum(v) ? v.toFixed(digits) : "n/a");
  const fmtFactor = (v) => (isNum(v) ? `${v.toFixed(2)}×` : "n/a");

  function fmtDuration(s) {
    if (!isNum(s)) return "—";
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
  }

  function timeEl(iso) {
    return iso ? el("time", { datetime: iso, title: iso, text: fmtTime(iso) }) : document.createTextNode("—");
  }

  function badge(state, testid) {
    return el("span", { class: `badge state-${state}`, dataset: { state, testid }, text: state });
  }

  /** The path of an API URL: the API builds absolute URLs from the Host it saw, which behind a
   * proxy may not be the one the browser used; the UI and the API are always the same app. */
  function localPath(url) {
    const u = new URL(url, location.href);
    return u.pathname + u.search;
  }

  /** An object URL for an API resource fetched with the key (for <img> and downloads). */
  async function blobURL(path) {
    const res = await api(path);
    if (!res.ok) throw new Error((await problem(res)).detail);
    return URL.createObjectURL(await res.blob());
  }

  // --- page: submit -------------------------------------------------------------------------------
  const SPEC_DEFS = { prune: "PruneSpec", distill: "DistillSpec", export: "ExportSpec", gates: "Gates" };

  function schemaOf(catalog, name) {
    const [section, field] = name.split(".");
    const def = catalog.spec && catalog.spec.$defs && catalog.spec.$defs[SPEC_DEFS[section]];
    return def && def.properties ? def.properties[field] : undefined;
  }

  /** {min, max, text} of a number property (pydantic puts bounds inside anyOf when it is optional). */
  function rangeOf(prop) {
    const p = (prop.anyOf || []).find((x) => x.type === "number" || x.type === "integer") || prop;
    const parts = [];
    if (p.minimum !== undefined) parts.push(`≥ ${p.minimum}`);
    if (p.exclusiveMinimum !== undefined) parts.push(`> ${p.exclusiveMinimum}`);
    if (p.maximum !== undefined) parts.push(`≤ ${p.maximum}`);
    if (p.exclusiveMaximum !== undefined) parts.push(`< ${p.exclusiveMaximum}`);
    return { min: p.minimum, max: p.maximum, text: parts.length ? `(${parts.join(", ")})` : "" };
  }

  function applyCatalog(form, catalog) {
    for (const select of form.querySelectorAll("select[data-catalog]")) {
      const items = catalog[select.dataset.catalog] || [];
      const prop = schemaOf(catalog, select.name) || {};
      select.replaceChildren(...items.map((it) => el("option", { value: it.name, title: it.description, text: it.name })));
      if (prop.default !== undefined) select.value = prop.default;
      const help = $(`#${select.id}-help`);
      const describe = () => {
        const it = items.find((x) => x.name === select.value);
        if (help) help.textContent = it ? it.description : "";
      };
      select.addEventListener("change", describe);
      describe();
    }
    for (const input of form.querySelectorAll("input[type=number]")) {
      const prop = schemaOf(catalog, input.name);
      if (!prop) continue;
      if (prop.default !== undefined && prop.default !== null && input.value === "") input.value = prop.default;
      const range = rangeOf(prop);
      if (range.min !== undefined) input.min = range.min;
      if (range.max !== undefined) input.max = range.max;
      const help = $(`#${input.id}-help`);
      if (help) help.textContent = [prop.description, range.text].filter(Boolean).join(" ");
    }
  }

  function isObject(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v);
  }

  function deepMerge(base, extra) {
    for (const [k, v] of Object.entries(extra)) {
      if (isObject(v) && isObject(base[k])) deepMerge(base[k], v);
      else base[k] = v;
    }
    return base;
  }

  function parseJSONField(textarea, what) {
    const text = textarea.value.trim();
    if (!text) return null;
    let value;
    try { value = JSON.parse(text); } catch (e) {
      throw Object.assign(new Error(`${what}: not valid JSON (${e.message}).`), { field: textarea });
    }
    if (!isObject(value)) throw Object.assign(new Error(`${what}: expected a JSON object.`), { field: textarea });
    return value;
  }

  /** The CompressionSpec from the form: the fields, the input spec, then the advanced JSON on top. */
  function buildSpec(form) {
    const spec = {};
    for (const field of form.elements) {
      if (!field.name || !field.name.includes(".") || field.disabled) continue;
      const raw = field.value.trim();
      if (raw === "") continue;
      const [section, key] = field.name.split(".");
      const value = field.type === "number" ? Number(raw) : raw;
      (spec[section] = spec[section] || {})[key] = value;
    }
    const inputs = parseJSONField($("#inputs"), "Input spec");
    if (inputs) spec.inputs = inputs;
    const extra = parseJSONField($("#spec-extra"), "Extra spec");
    return extra ? deepMerge(spec, extra) : spec;
  }

  /** POST the form with XMLHttpRequest (for upload progress). Resolves {status, body}. */
  function postForm(data, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/jobs");
      xhr.setRequestHeader("Accept", "application/json");
      const key = currentKey();
      if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
      xhr.upload.addEventListener("progress", (ev) => ev.lengthComputable && onProgress(ev.loaded, ev.total));
      xhr.addEventListener("load", () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
        resolve({ status: xhr.status, statusText: xhr.statusText, body });
      });
      xhr.addEventListener("error", () => reject(new Error("The upload failed: the server could not be reached.")));
      xhr.addEventListener("abort", () => reject(new Error("The upload was aborted.")));
      xhr.send(data);
    });
  }

  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    const units = ["KiB", "MiB", "GiB"];
    let i = -1;
    do { n /= 1024; i += 1; } while (n >= 1024 && i < units.length - 1);
    return `${n.toFixed(1)} ${units[i]}`;
  }

  async function initSubmit() {
    const form = $("#submit-form");
    const errorBox = $("#form-error");
    const button = $("#submit-button");
    const method = $("#prune-method");
    const criterion = $("#prune-criterion");
    const preview = $("#spec-preview");

    const syncCriterion = () => {
      // Criteria rank channels: they apply to channel pruning only.
      criterion.disabled = method.value !== "" && method.value !== "channel";
    };
    const updatePreview = () => {
      try {
        preview.textContent = JSON.stringify(buildSpec(form), null, 2);
        preview.classList.remove("invalid");
      } catch (e) {
        preview.textContent = e.message;
        preview.classList.add("invalid");
      }
    };
    method.addEventListener("change", syncCriterion);
    form.addEventListener("input", updatePreview);
    form.addEventListener("change", updatePreview);

    try {
      const res = await fetch("/v1/catalog", { headers: { Accept: "application/json" } });
      if (!res.ok) throw new Error((await problem(res)).detail);
      applyCatalog(form, await res.json());
    } catch (e) {
      const box = $("#catalog-error");
      box.textContent = `The choices could not be loaded (${e.message}); the server's defaults apply.`;
      box.hidden = false;
    }
    syncCriterion();
    updatePreview();
    form.dataset.ready = "true";
    ensureKey(); // ask for a key now rather than after a long upload

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      errorBox.hidden = true;
      if (!form.checkValidity()) { form.reportValidity(); return; }
      let spec;
      try { spec = buildSpec(form); } catch (e) {
        showProblem(errorBox, { title: "The spec is not valid JSON", detail: e.message, code: "", status: 0 });
        (e.field || errorBox).focus();
        return;
      }
      const data = new FormData();
      data.append("spec", JSON.stringify(spec));
      data.append("model", $("#model").files[0]);
      const cal = $("#calibration").files[0];
      if (cal) data.append("calibration", cal);

      const upload = $("#upload");
      const bar = $("#upload-progress");
      const text = $("#upload-text");
      button.disabled = true;
      form.setAttribute("aria-busy", "true");
      upload.hidden = false;
      bar.value = 0;
      text.textContent = "Uploading…";
      try {
        for (;;) {
          const r = await postForm(data, (loaded, total) => {
            bar.value = total ? loaded / total : 0;
            text.textContent = `Uploading ${fmtBytes(loaded)} of ${fmtBytes(total)}`;
          });
          if (r.status === 401) {
            text.textContent = "";
            const detail = (r.body && r.body.detail) || "This service needs an API key.";
            await askForKey(detail);
            continue;
          }
          if (r.status === 202 && r.body && r.body.id) {
            text.textContent = "Submitted. Opening the job…";
            location.assign(`/jobs/${encodeURIComponent(r.body.id)}`);
            return;
          }
          const p = r.body && (r.body.detail || r.body.title)
            ? { status: r.status, code: r.body.code || "", title: r.body.title || r.statusText, detail: String(r.body.detail || r.body.title), errors: r.body.errors || [] }
            : { status: r.status, code: "", title: r.statusText || "Error", detail: `The server answered HTTP ${r.status}.`, errors: [] };
          showProblem(errorBox, p);
          break;
        }
      } catch (e) {
        showProblem(errorBox, { title: "Not submitted", detail: e.message, code: "", status: 0 });
      } finally {
        button.disabled = false;
        form.removeAttribute("aria-busy");
        upload.hidden = true;
      }
      errorBox.focus();
    });
  }

  // --- page: job list -----------------------------------------------------------------------------
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

  async function initJobs() {
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

  // --- page: one job ------------------------------------------------------------------------------
  function setText(id, text) {
    const node = document.getElementById(id);
    if (node.textContent !== text) node.textContent = text;
  }

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
      return el("li", {}, link, el("span", { class: "muted", text: ` ${ARTIFACT_INFO[name] || ""}` }));
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

  async function showReport(frame, url) {
    const res = await api(localPath(url));
    if (!res.ok) throw new Error((await problem(res)).detail);
    // srcdoc in a sandboxed frame (no scripts, opaque origin): the report cannot reach this page.
    frame.srcdoc = await res.text();
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

  async function initJob() {
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

  // --- page: report on its own ------------------------------------------------------------------
  async function initReport() {
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

  const PAGES = { submit: initSubmit, jobs: initJobs, job: initJob, report: initReport };

  document.addEventListener("DOMContentLoaded", () => {
    initKeyForm();
    const init = PAGES[document.body.dataset.page];
    if (init) init().catch((e) => console.error("gancompress:", e));
  });
})();
