/* DOM helpers shared by every page: element creation, problem boxes, badges. */

import { fmtTime } from "./format.js";

export const $ = (sel, root = document) => root.querySelector(sel);

/** Create an element: el("a", {href: "/", class: "x", dataset: {testid: "y"}}, "text", child). */
export function el(tag, attrs = {}, ...children) {
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

/** Set an element's text (by id) only when it changed, so observers see real changes only. */
export function setText(id, text) {
  const node = document.getElementById(id);
  if (node.textContent !== text) node.textContent = text;
}

/** Show a problem ({title, detail, code, status, errors}, see api.js problem()) in ``box``. */
export function showProblem(box, p) {
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

export function timeEl(iso) {
  return iso ? el("time", { datetime: iso, title: iso, text: fmtTime(iso) }) : document.createTextNode("—");
}

export function badge(state, testid) {
  return el("span", { class: `badge state-${state}`, dataset: { state, testid }, text: state });
}
