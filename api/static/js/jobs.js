// The job list: status, live progress and verdict badges, refreshed every 2 s. Filters and the page
// cursor live in the URL (#/?status=running&verdict=overfitting) so a view can be shared.

import { api } from "./api.js";
import { ago, badge, duration, FINISHED, fmt, h, progressBar, replace, verdictBadge } from "./dom.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const VERDICTS = ["good_fit", "underfitting.model_bias", "underfitting.optimization", "overfitting", "mismatch", "diverged"];
const PAGE = 50;

function select(name, values, current, label) {
  return h(
    "select",
    {
      name,
      "aria-label": label,
      onchange: (e) => go({ [name]: e.target.value, cursor: "" }),
    },
    h("option", { value: "" }, `any ${label}`),
    values.map((v) => h("option", { value: v, selected: v === current }, v)),
  );
}

let lastParams = {};
function go(changes) {
  const params = new URLSearchParams(Object.entries({ ...lastParams, ...changes }).filter(([, v]) => v));
  window.location.hash = `#/?${params}`;
}

function timing(job) {
  const p = job.progress || {};
  if (job.status === "running" && p.eta_seconds) return `ETA ${duration(p.eta_seconds)}`;
  if (job.started_at && job.finished_at) return duration((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000);
  return "";
}

function row(job) {
  const p = job.progress || {};
  const open = () => (window.location.hash = `#/jobs/${job.id}`);
  return h(
    "tr",
    { class: "clickable", "data-job-id": job.id, "data-status": job.status, onclick: open },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.name || "(unnamed)")),
    h("td", { class: "mono muted", title: job.id }, job.id.slice(0, 8)),
    h("td", {}, job.kind),
    h("td", {}, badge(job.status)),
    h("td", {}, progressBar(job)),
    h("td", { class: "num" }, fmt(p.train_loss)),
    h("td", { class: "num" }, fmt(p.val_loss)),
    h("td", {}, verdictBadge(job.verdict)),
    h("td", { class: "muted", title: job.created_at }, ago(job.created_at)),
    h("td", { class: "muted" }, timing(job)),
  );
}

export function jobsView(el, params, ctx) {
  lastParams = { status: params.status || "", verdict: params.verdict || "", cursor: params.cursor || "" };
  const tbody = h("tbody", { "data-testid": "jobs" });
  const counts = h("span", { class: "muted" });
  const pager = h("div", { class: "row pager" });
  el.append(
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "row" },
        h("h1", {}, "Jobs"),
        counts,
        h("span", { class: "spacer" }),
        select("status", STATUSES, lastParams.status, "status"),
        select("verdict", VERDICTS, lastParams.verdict, "verdict"),
      ),
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Name", "ID", "Kind", "Status", "Progress"].map((t) => h("th", {}, t)),
            h("th", { class: "num" }, "Train loss"),
            h("th", { class: "num" }, "Val loss"),
            ["Verdict", "Created", "Time"].map((t) => h("th", {}, t)),
          ),
        ),
        tbody,
      ),
      pager,
    ),
  );

  ctx.every(2000, async () => {
    const page = await api("/v1/jobs", {
      params: { status: lastParams.status, verdict: lastParams.verdict, cursor: lastParams.cursor, limit: PAGE },
    });
    if (!ctx.alive) return false;
    replace(tbody, page.items.length ? page.items.map(row) : h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No jobs yet. Submit one with saddle submit SPEC.yaml.")));
    const active = page.items.filter((j) => !FINISHED.includes(j.status)).length;
    replace(counts, `${page.items.length}${page.next_cursor ? "+" : ""} shown${active ? `, ${active} active` : ""}`);
    replace(
      pager,
      lastParams.cursor ? h("a", { href: "#/", onclick: (e) => { e.preventDefault(); go({ cursor: "" }); } }, "← newest") : null,
      page.next_cursor ? h("a", { href: "#/", onclick: (e) => { e.preventDefault(); go({ cursor: page.next_cursor }); } }, "older →") : null,
    );
  });
}
