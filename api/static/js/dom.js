// A tiny element builder. Text always goes in as text nodes, never as HTML, so job names and
// evidence from the API cannot inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) return String(value);
    if (Number.isInteger(value) && Math.abs(value) < 1e7) return String(value);
    const a = Math.abs(value);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? value.toExponential(2) : value.toFixed(digits);
  }
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

export function ago(stamp) {
  if (!stamp) return "–";
  const seconds = (Date.now() - Date.parse(stamp)) / 1000;
  return seconds < 5 ? "just now" : `${duration(seconds)} ago`;
}

export function badge(text, kind = text) {
  if (!text) return h("span", { class: "muted" }, "–");
  return h("span", { class: `badge ${String(kind).replace(/[^\w-]/g, "_")}` }, text);
}

// Verdicts: good_fit is fine, diverged is an error, the rest deserve attention.
export function verdictBadge(verdict) {
  if (!verdict) return h("span", { class: "muted" }, "–");
  const kind = verdict === "good_fit" ? "good_fit" : verdict === "diverged" ? "diverged" : "verdict-warn";
  return h("span", { class: `badge ${kind}`, "data-verdict": verdict }, verdict);
}

export const FINISHED = ["succeeded", "failed", "cancelled"];

// epoch/epochs of a job, or done/total of a study; the bar shows the fraction.
export function progressOf(job) {
  const p = job.progress || {};
  if (p.total !== undefined && p.epochs === undefined) return { at: p.done || 0, of: p.total || 1, unit: "" };
  const of = p.epochs || (job.spec && job.spec.epochs) || 1;
  return { at: p.epoch || 0, of, unit: "epoch " };
}

export function progressBar(job) {
  const { at, of, unit } = progressOf(job);
  const fraction = job.status === "succeeded" ? 1 : Math.min(1, at / of);
  const state = job.status === "succeeded" ? "done" : job.status === "failed" ? "failed" : "";
  return h(
    "div",
    { class: "progress", "data-testid": "progress" },
    h("div", { class: `bar ${state}` }, h("span", { style: { width: `${(100 * fraction).toFixed(1)}%` } })),
    h("span", { class: "label" }, unit, h("span", { class: "epoch", "data-testid": "epoch" }, String(at)), `/${of}`),
  );
}
