// One job: header with live progress, training curves, Hessian spectra, diagnosis cards and the
// Remedy button. While the job runs everything refreshes every 2 s; once it has finished (and its
// diagnosis is in) polling stops.

import { api, ApiError } from "./api.js";
import { Chart, color, SPLIT_COLORS } from "./charts.js";
import { ago, badge, duration, FINISHED, fmt, h, progressBar, replace, verdictBadge } from "./dom.js";

const SPLITS = ["train", "val", "test"];

function byName(series) {
  return Object.fromEntries(series.map((s) => [s.name, s]));
}

function line(s, label, colorValue, extra = {}) {
  return { label, x: s.epochs, y: s.values, color: colorValue, ...extra };
}

function facts(pairs) {
  return h(
    "div",
    { class: "facts" },
    pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => h("div", {}, h("b", {}, k), v)),
  );
}

// Evidence is a flat-ish dict of numbers; nested values are shown as compact JSON.
function evidenceTable(evidence) {
  const entries = Object.entries(evidence || {});
  if (!entries.length) return null;
  return h(
    "table",
    { class: "evidence" },
    h(
      "tbody",
      {},
      entries.map(([k, v]) => {
        let text = fmt(v);
        if (text.length > 160) text = `${text.slice(0, 157)}…`;
        return h("tr", {}, h("td", {}, k), h("td", { class: "mono" }, text));
      }),
    ),
  );
}

export function diagnosisCard(d, { onRemedy } = {}) {
  const patch = d.patch && Object.keys(d.patch).length ? d.patch : null;
  return h(
    "article",
    { class: `card ${d.kind === "verdict" ? "verdict" : ""} sev-${d.severity || "info"}`, "data-code": d.code, "data-kind": d.kind || "finding" },
    h(
      "div",
      { class: "row" },
      h("span", { class: "code" }, d.code),
      badge(d.kind || "finding", "queued"),
      d.severity ? badge(d.severity) : null,
      d.confidence !== undefined ? h("span", { class: "muted" }, `confidence ${fmt(d.confidence, 2)}`) : null,
      d.provisional ? badge("provisional", "running") : null,
    ),
    d.recommendation ? h("p", { class: "recommendation" }, d.recommendation) : null,
    evidenceTable(d.evidence),
    patch ? h("div", {}, h("b", {}, "Patch "), h("span", { class: "muted" }, "(JSON merge patch of the spec)"), h("pre", { class: "patch" }, JSON.stringify(patch, null, 2))) : null,
    patch && onRemedy ? h("button", { type: "button", "data-remedy": d.code, onclick: () => onRemedy([d.code]) }, "Apply this fix") : null,
  );
}

export function jobView(el, { id }, ctx) {
  const banner = h("div");
  const header = h("section", { class: "panel", "data-testid": "job-header" });
  const chartsEl = h("div", { class: "charts" });
  const studyEl = h("div");
  const spectraEl = h("div", { class: "charts" });
  const spectraTable = h("div");
  const diagEl = h("div", { class: "cards", "data-testid": "diagnoses" });
  const remediesEl = h("div");
  el.append(
    banner,
    header,
    studyEl,
    h("h2", {}, "Training"),
    chartsEl,
    h("h2", { style: { marginTop: "18px" } }, "Hessian spectra"),
    spectraEl,
    spectraTable,
    h("h2", { style: { marginTop: "18px" } }, "Diagnosis"),
    diagEl,
    remediesEl,
  );

  const charts = {
    loss: new Chart(chartsEl, { id: "loss", title: "Loss", yLabel: "loss", scale: "log" }),
    accuracy: new Chart(chartsEl, { id: "accuracy", title: "Accuracy", yLabel: "accuracy" }),
    lr: new Chart(chartsEl, { id: "lr", title: "Learning rate", yLabel: "lr" }),
    grad: new Chart(chartsEl, { id: "grad", title: "Gradient norms", yLabel: "‖g‖", scale: "log" }),
    eig: new Chart(spectraEl, { id: "eigenvalues", title: "Top and bottom eigenvalues over epochs", yLabel: "λ", scale: "asinh" }),
    density: new Chart(spectraEl, { id: "density", title: "Spectral density", xLabel: "eigenvalue λ", yLabel: "density", scale: "log" }),
  };
  ctx.onLeave(() => Object.values(charts).forEach((c) => c.destroy()));

  let job = null;
  let densityEpoch = null;
  let spectra = [];
  let ticks = 0;
  let settled = 0;

  async function remedy(findings) {
    replace(banner);
    for (const b of el.querySelectorAll("[data-remedy], [data-testid=remedy]")) b.disabled = true;
    try {
      const result = await api(`/v1/jobs/${id}/remedy`, { method: "POST", body: findings ? { findings } : undefined });
      window.location.hash = `#/jobs/${result.job.id}`;
    } catch (err) {
      replace(banner, h("div", { class: "banner error", role: "alert" }, err instanceof ApiError ? `Remedy refused: ${err.detail}` : String(err)));
      for (const b of el.querySelectorAll("[data-remedy], [data-testid=remedy]")) b.disabled = false;
    }
  }

  async function cancel() {
    try {
      job = await api(`/v1/jobs/${id}/cancel`, { method: "POST" });
      renderHeader([]);
    } catch (err) {
      replace(banner, h("div", { class: "banner error" }, `Cancel refused: ${err.detail || err}`));
    }
  }

  function renderHeader(diagnoses) {
    const p = job.progress || {};
    const s = job.summary || {};
    const finished = FINISHED.includes(job.status);
    const fixable = finished && diagnoses.some((d) => !d.provisional && d.patch && Object.keys(d.patch).length);
    replace(
      header,
      h(
        "div",
        { class: "row" },
        h("h1", {}, job.name || "(unnamed)"),
        h("span", { class: "mono muted" }, job.id),
        badge(job.status),
        verdictBadge(job.verdict),
        h("span", { class: "spacer" }),
        finished ? null : h("button", { type: "button", class: "danger", onclick: cancel, disabled: job.cancel_requested }, job.cancel_requested ? "Cancelling…" : "Cancel"),
        fixable
          ? h("button", { type: "button", class: "primary", "data-testid": "remedy", title: "resubmit with the verdict's fix (and error-level findings' fixes)", onclick: () => remedy(null) }, "Remedy")
          : null,
      ),
      h("div", { class: "row", style: { marginTop: "8px" } }, progressBar(job), job.status === "running" && p.eta_seconds ? h("span", { class: "muted" }, `ETA ${duration(p.eta_seconds)}`) : null),
      facts([
        ["kind", job.kind],
        ["dataset", job.spec?.data?.dataset],
        ["model", job.spec?.model ? `${job.spec.model.arch} ${JSON.stringify(job.spec.model.hidden || [])}` : null],
        ["optimizer", job.spec?.optimizer ? `${job.spec.optimizer.name} lr ${fmt(job.spec.optimizer.lr)}` : null],
        ["batch size", job.spec?.batch_size],
        ["train loss", fmt(p.train_loss)],
        ["val loss", fmt(p.val_loss)],
        ["test loss", fmt(p.test_loss)],
        ["val accuracy", p.val_accuracy !== undefined ? fmt(p.val_accuracy, 3) : null],
        ["best epoch", s.best_epoch !== undefined && s.best_epoch !== null && s.best_epoch >= 0 ? `${s.best_epoch} (val ${fmt(s.best_val_loss)})` : null],
        ["parameters", s.n_parameters],
        ["device", job.device],
        ["attempts", job.attempts],
        ["created", ago(job.created_at)],
        ["ran for", job.started_at ? duration(((job.finished_at ? Date.parse(job.finished_at) : Date.now()) - Date.parse(job.started_at)) / 1000) : null],
        ["remedy of", job.parent_id ? h("a", { href: `#/jobs/${job.parent_id}` }, job.parent_id.slice(0, 8)) : null],
        ["sweep", job.sweep_id ? h("a", { href: `#/sweeps/${job.sweep_id}` }, job.sweep_id.slice(0, 8)) : null],
      ]),
      job.error ? h("pre", { class: "banner error", "data-testid": "job-error" }, job.error.trim().split("\n").slice(-6).join("\n")) : null,
    );
  }

  // The first read lists every series (to learn the per-layer grad/* names); later reads while the
  // job runs ask only for the charted ones, not the per-update batch losses and timings.
  let charted = null;
  const CHARTED = /^((train|val|test)\/(loss|accuracy)|train\/lr|train\/grad_norm|grad\/.*)$/;

  async function loadMetrics() {
    const { series } = await api(`/v1/jobs/${id}/metrics`, { params: { max_points: 1000, name: charted } });
    if (charted === null || series.some((s) => !charted.includes(s.name))) {
      const names = series.map((s) => s.name).filter((n) => CHARTED.test(n));
      // Until the first epoch has ended some series do not exist yet: keep reading them all.
      charted = names.some((n) => n.startsWith("grad/")) ? names : null;
    }
    const m = byName(series);
    const splitLines = (metric) => SPLITS.filter((sp) => m[`${sp}/${metric}`]).map((sp) => line(m[`${sp}/${metric}`], sp, SPLIT_COLORS[sp]));
    charts.loss.update(splitLines("loss"));
    charts.accuracy.update(splitLines("accuracy"), job.summary?.data?.task === "regression" ? "regression: no accuracy" : "no data yet");
    charts.lr.update(m["train/lr"] ? [line(m["train/lr"], "lr (per update)", color(3))] : []);
    const layers = series.filter((s) => s.name.startsWith("grad/"));
    charts.grad.update([
      ...(m["train/grad_norm"] ? [line(m["train/grad_norm"], "total", "#1d2330")] : []),
      ...layers.map((s, i) => line(s, s.name.slice(5), color(i + 1), { dash: [4, 3] })),
    ]);
  }

  function renderSpectra() {
    spectra.sort((a, b) => a.epoch - b.epoch || a.id - b.id);
    const series = [];
    const k = Math.max(0, ...spectra.map((s) => s.top.length));
    const b = Math.max(0, ...spectra.map((s) => s.bottom.length));
    // One point per epoch: where two spectra share an epoch (periodic and best), the later one wins.
    const perEpoch = [...new Map(spectra.map((s) => [s.epoch, s])).values()];
    for (let i = 0; i < k; i++) {
      const pts = perEpoch.filter((s) => s.top.length > i);
      series.push({ label: `top ${i + 1}`, x: pts.map((s) => s.epoch), y: pts.map((s) => s.top[i]), color: ["#c53030", "#dd6b20", "#b7791f", "#a0a000", "#8d6e63"][i % 5], points: true });
    }
    for (let i = 0; i < b; i++) {
      const pts = perEpoch.filter((s) => s.bottom.length > i);
      series.push({ label: `bottom ${i + 1}`, x: pts.map((s) => s.epoch), y: pts.map((s) => s.bottom[i]), color: ["#2f6fdb", "#5c6bc0", "#00838f"][i % 3], points: true, dash: [5, 3] });
    }
    charts.eig.update(series, "no spectrum yet (analysis.hessian.every_epochs)");

    const withDensity = spectra.filter((s) => s.density && s.density.grid && s.density.grid.length);
    if (withDensity.length) {
      const chosen = withDensity.find((s) => s.id === densityEpoch) || withDensity[withDensity.length - 1];
      const peak = Math.max(...chosen.density.values);
      const picker = h(
        "select",
        { "aria-label": "checkpoint", onchange: (e) => { densityEpoch = Number(e.target.value); renderSpectra(); } },
        withDensity.map((s) => h("option", { value: s.id, selected: s === chosen }, `epoch ${s.epoch} (${s.reason})`)),
      );
      charts.density.update([{ label: `epoch ${chosen.epoch}`, x: chosen.density.grid, y: chosen.density.values.map((v) => (v > peak * 1e-6 ? v : null)), color: "#9f3ab5" }]);
      const title = charts.density.el.querySelector("h3");
      replace(title, "Spectral density ", picker);
    } else {
      charts.density.update([], "no density (analysis.hessian.density: true)");
    }

    replace(
      spectraTable,
      spectra.length
        ? h(
            "section",
            { class: "panel", style: { marginTop: "16px" } },
            h(
              "table",
              { "data-testid": "spectra" },
              h("thead", {}, h("tr", {}, ["epoch", "reason", "critical point", "λ max", "λ min", "trace", "‖g‖", "method", "HVPs"].map((t) => h("th", {}, t)))),
              h(
                "tbody",
                {},
                spectra.map((s) =>
                  h(
                    "tr",
                    {},
                    h("td", {}, s.epoch),
                    h("td", {}, s.reason),
                    h("td", {}, badge(s.critical_point?.class || "–", s.critical_point?.class === "saddle" ? "warning" : "queued")),
                    h("td", { class: "num" }, fmt(s.top[0])),
                    h("td", { class: "num" }, fmt(s.bottom[0])),
                    h("td", { class: "num" }, fmt(s.trace)),
                    h("td", { class: "num" }, fmt(s.grad_norm)),
                    h("td", {}, s.method),
                    h("td", { class: "num" }, s.hvps),
                  ),
                ),
              ),
            ),
          )
        : null,
    );
  }

  function renderStudy() {
    const rows = job.summary?.batch_size_timing;
    if (job.kind !== "study" || !Array.isArray(rows) || !rows.length) return;
    if (!studyEl.childElementCount) {
      const box = h("div", { class: "charts" });
      studyEl.append(h("h2", {}, "Batch-size timing"), box);
      const chart = new Chart(box, { id: "batch-timing", title: "Time per epoch and per update vs batch size", xLabel: "batch size", yLabel: "seconds / ms", scale: "log", xScale: { distr: 3 } });
      ctx.onLeave(() => chart.destroy());
      const x = rows.map((r) => r.batch_size);
      chart.update([
        { label: "s / epoch", x, y: rows.map((r) => r.seconds_per_epoch), points: true, color: color(0) },
        { label: "ms / update", x, y: rows.map((r) => r.ms_per_update), points: true, color: color(1) },
      ]);
    }
  }

  function renderDiagnoses(diagnoses) {
    const finished = FINISHED.includes(job.status);
    if (!diagnoses.length) {
      replace(diagEl, h("p", { class: "muted" }, finished ? "No diagnosis for this job." : "The diagnosis comes when the job finishes."));
      return;
    }
    replace(diagEl, diagnoses.map((d) => diagnosisCard(d, { onRemedy: finished && !d.provisional ? remedy : null })));
  }

  async function loadRemedies() {
    const result = await api(`/v1/jobs/${id}/remedies`);
    const items = result.remedies || [];
    replace(
      remediesEl,
      items.length
        ? h(
            "section",
            { class: "panel", style: { marginTop: "16px" } },
            h("h2", {}, "Remedies of this job"),
            h("ul", {}, items.map((r) => h("li", {}, h("a", { href: `#/jobs/${r.id}` }, r.id.slice(0, 8)), " ", badge(r.status), " ", verdictBadge(r.verdict), r.val_loss !== undefined ? ` val loss ${fmt(r.val_loss)}` : ""))),
          )
        : null,
    );
  }

  ctx.every(2000, async () => {
    const previous = job;
    job = await api(`/v1/jobs/${id}`);
    if (!ctx.alive) return false;
    const finished = FINISHED.includes(job.status);
    const first = previous === null;
    const changed = first || previous.status !== job.status || previous.progress?.epoch !== job.progress?.epoch || previous.progress?.done !== job.progress?.done;
    if (first || changed || (finished && settled < 3)) {
      await loadMetrics();
      if (first || ticks % 3 === 0 || finished) spectra = await api(`/v1/jobs/${id}/spectra`);
      renderSpectra();
    }
    const diagnoses = await api(`/v1/jobs/${id}/diagnoses`);
    if (!ctx.alive) return false;
    renderHeader(diagnoses);
    renderStudy();
    renderDiagnoses(diagnoses);
    ticks += 1;
    if (!finished) return true;
    if (settled === 0) await loadRemedies();
    // After the status turns final the worker may still be writing the diagnosis: look a few more times.
    settled += 1;
    return settled < 3 || (!diagnoses.length && job.status === "succeeded" && settled < 10);
  });
}
