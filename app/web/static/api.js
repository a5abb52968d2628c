/* Every call to the JSON API goes through api(): it sends the API key kept in localStorage as
 * "Authorization: Bearer", and when the API answers 401 it shows the key form, waits for a key and
 * retries. Errors are RFC 9457 problem+json; problem() reads them into {status, code, title,
 * detail, errors}. */

import { $ } from "./dom.js";

const KEY = "gancompress.apiKey";

// --- the API key ---------------------------------------------------------------------------
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
export const currentKey = () => keyStore.get() || memoryKey;
let keyWaiters = [];

function showKeyStatus() {
  const status = $("[data-testid=apikey-status]");
  if (status) status.hidden = !currentKey();
}

/** Show the key form with the server's reason; resolves once a key was entered. */
export function askForKey(reason) {
  const panel = $("#auth");
  $("#auth-reason").textContent = reason || "Enter an API key to continue.";
  if (panel.hidden) {
    panel.hidden = false;
    $("#api-key").focus();
  }
  return new Promise((resolve) => keyWaiters.push(resolve));
}

export function initKeyForm() {
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
export async function api(path, options = {}) {
  for (;;) {
    const headers = authHeaders({ Accept: "application/json", ...(options.headers || {}) });
    const res = await fetch(path, { ...options, headers, cache: "no-store", credentials: "same-origin" });
    if (res.status !== 401) return res;
    const p = await problem(res);
    await askForKey(currentKey() ? `The server refused the key: ${p.detail}.` : p.detail);
  }
}

/** When the service has keys and none is stored, ask before the first call (no 401 round trip). */
export async function ensureKey() {
  if (currentKey()) return;
  try {
    const res = await fetch("/healthz", { cache: "no-store", headers: { Accept: "application/json" } });
    if (res.ok && (await res.json()).auth) await askForKey("This service needs an API key.");
  } catch { /* the API call that follows reports the problem */ }
}

/** The problem+json of a failed response, or a stand-in when the body is something else. */
export async function problem(res) {
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

/** The path of an API URL: the API builds absolute URLs from the Host it saw, which behind a
 * proxy may not be the one the browser used; the UI and the API are always the same app. */
export function localPath(url) {
  const u = new URL(url, location.href);
  return u.pathname + u.search;
}

/** An object URL for an API resource fetched with the key (for <img> and downloads). */
export async function blobURL(path) {
  const res = await api(path);
  if (!res.ok) throw new Error((await problem(res)).detail);
  return URL.createObjectURL(await res.blob());
}

/** POST the form with XMLHttpRequest (for upload progress). Resolves {status, body}. */
export function postForm(data, onProgress) {
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
