/* The submit page: the form becomes a CompressionSpec (fields, input spec, then the advanced JSON
 * on top), previewed live, and is posted with the model (and calibration) as multipart with
 * upload progress; a 401 asks for a key and posts again, a problem is shown on the form. */

import { askForKey, ensureKey, postForm, problem } from "./api.js";
import { applyCatalog, syncPruneFields } from "./catalog.js";
import { $, showProblem } from "./dom.js";
import { fmtBytes } from "./format.js";

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
  const checks = [];
  for (const field of form.elements) {
    if (!field.name || !field.name.includes(".") || field.disabled) continue;
    if (field.type === "checkbox") { checks.push(field); continue; }
    const raw = field.value.trim();
    if (raw === "") continue;
    const [section, key] = field.name.split(".");
    const value = field.type === "number" ? Number(raw) : raw;
    (spec[section] = spec[section] || {})[key] = value;
  }
  for (const box of checks) { // a box marked data-with-section only counts when its section is set
    const [section, key] = box.name.split(".");
    if (box.dataset.withSection !== undefined && !spec[section]) continue;
    (spec[section] = spec[section] || {})[key] = box.checked;
  }
  const inputs = parseJSONField($("#inputs"), "Input spec");
  if (inputs) spec.inputs = inputs;
  const extra = parseJSONField($("#spec-extra"), "Extra spec");
  return extra ? deepMerge(spec, extra) : spec;
}

/** The submit page: the form, a live preview of the spec, the upload with progress. */
export async function initSubmit() {
  const form = $("#submit-form");
  const errorBox = $("#form-error");
  const button = $("#submit-button");
  const method = $("#prune-method");
  const preview = $("#spec-preview");
  let catalog = {};

  const syncMethod = () => syncPruneFields(form, catalog);
  const updatePreview = () => {
    try {
      preview.textContent = JSON.stringify(buildSpec(form), null, 2);
      preview.classList.remove("invalid");
    } catch (e) {
      preview.textContent = e.message;
      preview.classList.add("invalid");
    }
  };
  method.addEventListener("change", syncMethod);
  form.addEventListener("input", updatePreview);
  form.addEventListener("change", updatePreview);

  try {
    const res = await fetch("/v1/catalog", { headers: { Accept: "application/json" } });
    if (!res.ok) throw new Error((await problem(res)).detail);
    catalog = await res.json();
    applyCatalog(form, catalog);
  } catch (e) {
    const box = $("#catalog-error");
    box.textContent = `The choices could not be loaded (${e.message}); the server's defaults apply.`;
    box.hidden = false;
  }
  syncMethod();
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
