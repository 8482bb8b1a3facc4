// Sweeps: the list, and one sweep's trials with a scatter of the objective against a parameter and
// the cross-run studies (batch size: sharpness, test loss and time per epoch; depth: losses). A
// server without /v1/sweeps gets a note instead of an error.

import { api, ApiError } from "./api.js";
import { Chart, color, SPLIT_COLORS } from "./charts.js";
import { ago, badge, fmt, h, replace, verdictBadge } from "./dom.js";
import { diagnosisCard } from "./job.js";

function missing(el, err) {
  if (err instanceof ApiError && err.routeMissing) {
    replace(el, h("div", { class: "banner note", "data-testid": "no-sweeps" }, "This server has no sweeps API (/v1/sweeps); jobs work as usual."));
    return true;
  }
  return false;
}

function progressText(p) {
  if (!p) return "–";
  return `${p.done}/${p.total} done · ${p.running} running · ${p.queued} queued${p.failed ? ` · ${p.failed} failed` : ""}${p.pruned ? ` · ${p.pruned} pruned` : ""}`;
}

export function sweepsView(el, _params, ctx) {
  const body = h("section", { class: "panel" }, h("p", { class: "muted" }, "Loading…"));
  el.append(body);
  ctx.every(3000, async () => {
    let page;
    try {
      page = await api("/v1/sweeps", { params: { limit: 100 } });
    } catch (err) {
      if (missing(body, err)) return false;
      throw err;
    }
    if (!ctx.alive) return false;
    replace(
      body,
      h("h1", {}, "Sweeps"),
      page.items.length
        ? h(
            "table",
            {},
            h("thead", {}, h("tr", {}, ["Name", "Kind", "Status", "Algorithm", "Progress", "Best job", "Created"].map((t) => h("th", {}, t)))),
            h(
              "tbody",
              {},
              page.items.map((s) =>
                h(
                  "tr",
                  { class: "clickable", "data-sweep-id": s.id, onclick: () => (window.location.hash = `#/sweeps/${s.id}`) },
                  h("td", {}, h("a", { href: `#/sweeps/${s.id}` }, s.name || s.id.slice(0, 8))),
                  h("td", {}, s.kind),
                  h("td", {}, badge(s.status)),
                  h("td", {}, s.algorithm || "–"),
                  h("td", {}, progressText(s.progress)),
                  h("td", {}, s.best_job_id ? h("a", { href: `#/jobs/${s.best_job_id}` }, s.best_job_id.slice(0, 8)) : "–"),
                  h("td", { class: "muted" }, ago(s.created_at)),
                ),
              ),
            ),
          )
        : h("p", { class: "muted" }, "No sweeps yet. Create one with saddle sweep create FILE.yaml."),
    );
  });
}

// A parameter's values as x coordinates: numbers as they are, anything else (lists such as
// model.hidden, strings) as category indices labelled with their JSON.
function axisFor(values, type) {
  if (values.every((v) => typeof v === "number")) {
    // Log x for log-uniform spaces and for positive grids spanning decades (batch sizes 4…512).
    const spansDecades = values.length && Math.min(...values) > 0 && Math.max(...values) / Math.min(...values) >= 20;
    return { x: values, xScale: type === "loguniform" || spansDecades ? { distr: 3 } : {} };
  }
  const labels = [...new Set(values.map((v) => JSON.stringify(v)))];
  return {
    x: values.map((v) => labels.indexOf(JSON.stringify(v))),
    xScale: { range: [-0.5, labels.length - 0.5] },
    xValues: (_, ticks) => ticks.map((t) => (Number.isInteger(t) && labels[t] !== undefined ? labels[t] : "")),
    xSplits: () => labels.map((_, i) => i),
  };
}

function sortedByX(x, y) {
  const order = x.map((_, i) => i).sort((a, b) => x[a] - x[b]);
  return { x: order.map((i) => x[i]), y: order.map((i) => y[i]) };
}

function rowsTable(rows) {
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, keys.map((k) => h("th", {}, k.replace(/_/g, " "))))),
    h(
      "tbody",
      {},
      rows.map((r) =>
        h(
          "tr",
          {},
          keys.map((k) =>
            h("td", { class: typeof r[k] === "number" ? "num" : "" }, k === "job_id" && r[k] ? h("a", { href: `#/jobs/${r[k]}` }, r[k].slice(0, 8)) : k === "verdict" ? verdictBadge(r[k]) : fmt(r[k])),
          ),
        ),
      ),
    ),
  );
}

// A study's comparison table as plots against its varied quantity: batch size or depth.
function studyCharts(container, table) {
  const xKey = ["batch_size", "depth", "lr"].find((k) => table.some((r) => typeof r[k] === "number"));
  if (!xKey) return [];
  const rows = table.filter((r) => typeof r[xKey] === "number").sort((a, b) => a[xKey] - b[xKey]);
  const x = rows.map((r) => r[xKey]);
  const groups = [
    ["losses", "loss", ["train_loss", "val_loss", "test_loss"], "log"],
    ["sharpness", "λ max", ["lambda_max"], "linear"],
    ["time per epoch", "seconds", ["seconds_per_epoch"], "log"],
  ];
  const box = h("div", { class: "charts" });
  container.append(box);
  const charts = [];
  for (const [title, yLabel, keys, scale] of groups) {
    const present = keys.filter((k) => rows.some((r) => typeof r[k] === "number"));
    if (!present.length) continue;
    const chart = new Chart(box, { id: `study-${title}`, title: `${title} vs ${xKey.replace("_", " ")}`, xLabel: xKey.replace("_", " "), yLabel, scale, xScale: xKey === "depth" ? {} : { distr: 3 } });
    charts.push(chart);
    chart.update(present.map((k, i) => ({ label: k.replace("_", " "), x, y: rows.map((r) => r[k] ?? null), points: true, color: SPLIT_COLORS[k.split("_")[0]] || color(i + 3) })));
  }
  return charts;
}

export function sweepView(el, { id }, ctx) {
  const header = h("section", { class: "panel", "data-testid": "sweep-header" });
  const scatterBox = h("div", { class: "charts" });
  const trialsEl = h("section", { class: "panel", style: { marginTop: "16px" } });
  const findingsEl = h("div");
  el.append(header, scatterBox, trialsEl, findingsEl);
  let scatter = null;
  let param = null;
  let findingsKey = "";
  let findingCharts = [];
  ctx.onLeave(() => [scatter, ...findingCharts].forEach((c) => c && c.destroy()));

  function renderScatter(sweep, trials) {
    const names = [...new Set(trials.flatMap((t) => Object.keys(t.params || {})))];
    if (!names.length) return;
    // Default to the numeric parameter with the most distinct values: the most telling x axis.
    const spread = (n) => new Set(trials.map((t) => JSON.stringify(t.params?.[n]))).size + (trials.every((t) => typeof t.params?.[n] === "number") ? 1000 : 0);
    if (!names.includes(param)) param = [...names].sort((a, b) => spread(b) - spread(a))[0];
    const done = trials.filter((t) => typeof t.objective === "number" && t.params && param in t.params);
    const space = sweep.config?.space?.[param] || {};
    const axis = axisFor(done.map((t) => t.params[param]), space.type);
    const picker = h(
      "select",
      { "aria-label": "parameter", onchange: (e) => { param = e.target.value; renderScatter(sweep, trials); } },
      names.map((n) => h("option", { value: n, selected: n === param }, n)),
    );
    if (scatter) scatter.destroy();
    const metric = sweep.objective?.metric || "objective";
    scatter = new Chart(scatterBox, { id: "scatter", title: `${metric} (${sweep.objective?.mode || ""}) vs ${param}`, xLabel: param, yLabel: metric, points: true, xScale: axis.xScale, xValues: axis.xValues, xSplits: axis.xSplits });
    replace(scatter.el.querySelector("h3"), `${metric} vs `, picker);
    const { x, y } = sortedByX(axis.x, done.map((t) => t.objective));
    scatter.update([{ label: metric, x, y, color: "#2f6fdb" }], "no finished trial yet");
  }

  ctx.every(3000, async () => {
    let sweep;
    try {
      sweep = await api(`/v1/sweeps/${id}`, { params: { trials_limit: 500 } });
    } catch (err) {
      if (missing(header, err)) return false;
      throw err;
    }
    if (!ctx.alive) return false;
    const trials = sweep.trials || [];
    replace(
      header,
      h("div", { class: "row" }, h("h1", {}, sweep.name || "sweep"), h("span", { class: "mono muted" }, sweep.id), badge(sweep.status), h("span", { class: "muted" }, sweep.kind)),
      h(
        "div",
        { class: "facts" },
        [
          ["algorithm", sweep.algorithm],
          ["objective", `${sweep.objective?.mode || ""} ${sweep.objective?.metric || ""}`],
          ["progress", progressText(sweep.progress)],
          ["concurrency", sweep.max_concurrency],
          ["best", sweep.best ? h("span", {}, `${fmt(sweep.best.value)} `, sweep.best.job_id ? h("a", { href: `#/jobs/${sweep.best.job_id}` }, `trial ${sweep.best.number}`) : `trial ${sweep.best.number}`) : "–"],
          ["created", ago(sweep.created_at)],
        ].map(([k, v]) => h("div", {}, h("b", {}, k), v)),
      ),
      sweep.conclusion ? h("p", { class: "banner note" }, sweep.conclusion) : null,
    );
    renderScatter(sweep, trials);
    const names = [...new Set(trials.flatMap((t) => Object.keys(t.params || {})))];
    replace(
      trialsEl,
      h("h2", {}, `Trials (${trials.length}${sweep.next_trials_after !== null && sweep.next_trials_after !== undefined ? "+" : ""})`),
      h(
        "table",
        { "data-testid": "trials" },
        h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "status"), h("th", { class: "num" }, "objective"), h("th", {}, "verdict"), names.map((n) => h("th", {}, n)), h("th", {}, "job"))),
        h(
          "tbody",
          {},
          trials.map((t) =>
            h(
              "tr",
              { "data-trial": t.number },
              h("td", {}, t.number),
              h("td", {}, badge(t.status)),
              h("td", { class: "num" }, fmt(t.objective)),
              h("td", {}, verdictBadge(t.verdict)),
              names.map((n) => h("td", { class: "mono" }, fmt(t.params?.[n]))),
              h("td", {}, t.job_id ? h("a", { href: `#/jobs/${t.job_id}` }, t.job_id.slice(0, 8)) : h("span", { class: "error", title: t.error || "" }, "no job")),
            ),
          ),
        ),
      ),
    );
    // Findings change rarely; rebuilding their charts on every poll would only flicker.
    const key = JSON.stringify(sweep.findings || []);
    if (key !== findingsKey) {
      findingsKey = key;
      findingCharts.forEach((c) => c.destroy());
      findingCharts = [];
      replace(findingsEl);
      for (const f of sweep.findings || []) {
        const { table, ...rest } = f.evidence || {};
        const section = h("section", { class: "panel", style: { marginTop: "16px" } });
        section.append(diagnosisCard({ ...f, kind: "sweep finding", recommendation: f.conclusion || f.recommendation, evidence: rest }));
        if (Array.isArray(table) && table.length) {
          findingCharts.push(...studyCharts(section, table));
          section.append(rowsTable(table));
        }
        findingsEl.append(section);
      }
    }
    return sweep.status === "running";
  });
}
