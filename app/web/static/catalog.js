/* The submit form from GET /v1/catalog: choices, descriptions, defaults, bounds and which
 * parameters apply to which pruning method all come from the server, so the form cannot drift
 * from the spec the API validates. */

import { $, el } from "./dom.js";

// The spec's sections and their pydantic model names in the catalogue's JSON schema ($defs).
const SPEC_DEFS = {
  prune: "PruneSpec", distill: "DistillSpec", export: "ExportSpec", gates: "Gates", target: "TargetSpec",
};

/** The JSON schema of a form field named "section.field" (e.g. "prune.ratio"). */
export function schemaOf(catalog, name) {
  const [section, field] = name.split(".");
  const def = catalog.spec && catalog.spec.$defs && catalog.spec.$defs[SPEC_DEFS[section]];
  return def && def.properties ? def.properties[field] : undefined;
}

/** {min, max, text} of a number property (pydantic puts bounds inside anyOf when it is optional). */
export function rangeOf(prop) {
  const p = (prop.anyOf || []).find((x) => x.type === "number" || x.type === "integer") || prop;
  const parts = [];
  if (p.minimum !== undefined) parts.push(`≥ ${p.minimum}`);
  if (p.exclusiveMinimum !== undefined) parts.push(`> ${p.exclusiveMinimum}`);
  if (p.maximum !== undefined) parts.push(`≤ ${p.maximum}`);
  if (p.exclusiveMaximum !== undefined) parts.push(`< ${p.exclusiveMaximum}`);
  return { min: p.minimum, max: p.maximum, text: parts.length ? `(${parts.join(", ")})` : "" };
}

/** Fill the form from the catalogue: the options of every select[data-catalog] (with the
 * description of the chosen one as its help text), and the defaults, bounds and help of every
 * number field from the spec's schema. */
export function applyCatalog(form, catalog) {
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
  for (const select of form.querySelectorAll("select[data-enum]")) {
    // An optional enum field (e.g. prune.mode): its values from the schema's $defs, "" for null.
    const defs = (catalog.spec && catalog.spec.$defs) || {};
    const values = (defs[select.dataset.enum] || {}).enum || [];
    const prop = schemaOf(catalog, select.name) || {};
    select.replaceChildren(
      el("option", { value: "", text: select.dataset.empty || "default" }),
      ...values.map((v) => el("option", { value: v, text: v })),
    );
    select.value = prop.default === null || prop.default === undefined ? "" : prop.default;
    const help = $(`#${select.id}-help`);
    if (help) help.textContent = prop.description || "";
  }
  for (const input of form.querySelectorAll("input[type=number], input[type=checkbox]")) {
    const prop = schemaOf(catalog, input.name);
    if (!prop) continue;
    const help = $(`#${input.id}-help`);
    if (input.type === "checkbox") {
      if (typeof prop.default === "boolean") input.checked = prop.default;
      if (help) help.textContent = prop.description || "";
      continue;
    }
    if (prop.default !== undefined && prop.default !== null && input.value === "") input.value = prop.default;
    const range = rangeOf(prop);
    if (range.min !== undefined) input.min = range.min;
    if (range.max !== undefined) input.max = range.max;
    if (help) help.textContent = [prop.description, range.text].filter(Boolean).join(" ");
  }
}

/** Disable the prune.* fields that the chosen method does not take (each method in the catalogue
 * lists its parameters), so the form never sends one the API would refuse or ignore. */
export function syncPruneFields(form, catalog) {
  const method = form.elements["prune.method"];
  const item = (catalog.prune_methods || []).find((m) => m.name === method.value);
  const props = item && item.parameters && item.parameters.properties;
  for (const field of form.elements) {
    if (!field.name || !field.name.startsWith("prune.") || field === method) continue;
    field.disabled = Boolean(props) && !(field.name.slice("prune.".length) in props);
  }
}
