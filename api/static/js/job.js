// One job: header with live progress, training curves, Hessian spectra, diagnosis cards and the
// Remedy button. While the job runs everything refreshes every 2 s; once it has finished (and its
// diagnosis is in) polling stops.

import { api, ApiError } from "./api.js";
import { Chart, color, SPLIT_COLORS } from "./charts.js";
import { ago, badge, duration, FINISHED, fmt, h, progressBar, replace, verdictBadge } from "./dom.js";
import { describeModel, describeOptimizer } from "./specview.js";

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

// Where the curves should show what the diagnosis says: the best epoch (model selection) and every
// epoch the verdict's evidence names (best_epoch, epoch, spectrum_epoch), with its numbers.
const EPOCH_KEYS = ["best_epoch", "epoch", "spectrum_epoch"];

export function epochMarkers(job, diagnoses) {
  const marks = [];
  const best = job.summary?.best_epoch;
  if (best !== undefined && best !== null && best >= 0) {
    marks.push({ x: best, kind: "best", color: "#2f855a", label: `best epoch ${best} (val loss ${fmt(job.summary.best_val_loss)})` });
  }
  const verdict = diagnoses.find((d) => d.kind === "verdict");
  for (const [key, value] of Object.entries(verdict?.evidence || {})) {
    if (!EPOCH_KEYS.includes(key) || typeof value !== "number" || (key === "best_epoch" && value === best)) continue;
    marks.push({ x: value, kind: "verdict", color: "#c53030", label: `${verdict.code}: ${key} ${fmt(value)}` });
  }
  const ev = verdict?.evidence || {};
  if (verdict && typeof ev.best_val_loss === "number" && typeof ev.final_val_loss === "number" && ev.best_val_loss > 0) {
    const rise = (ev.final_val_loss - ev.best_val_loss) / ev.best_val_loss;
    marks.push({ x: ev.best_epoch ?? best, kind: "verdict", color: "#c53030", label: `${verdict.code}: val loss ${fmt(ev.best_val_loss)} → ${fmt(ev.final_val_loss)} (${rise >= 0 ? "+" : ""}${(100 * rise).toFixed(0)}% since its best)` });
  }
  return marks;
}

// Epoch axes span the job: its planned epochs while it runs, the epochs it ran once it has ended.
function epochRange(job) {
  const planned = job.progress?.epochs || job.spec?.epochs || 1;
  const ran = job.progress?.epoch || 0;
  return [0, Math.max(1, FINISHED.includes(job.status) && ran > 0 ? ran : planned)];
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

// onRemedy is offered only for the codes the API accepts one at a time (the job's remedy.findings).
export function diagnosisCard(d, { onRemedy, remedyCodes = [] } = {}) {
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
    patch && onRemedy && remedyCodes.includes(d.code) ? h("button", { type: "button", "data-remedy": d.code, onclick: () => onRemedy([d.code]) }, "Apply this fix") : null,
  );
}

export function jobView(el, { id }, ctx) {
  const banner = h("div");
  const errorEl = h("div");
  const header = h("section", { class: "panel", "data-testid": "job-header" });
  const chartsEl = h("div", { class: "charts" });
  const studyEl = h("div");
  const spectraEl = h("div", { class: "charts" });
  const spectraTable = h("div");
  const diagEl = h("div", { class: "cards", "data-testid": "diagnoses" });
  const remediesEl = h("div");
  el.append(
    banner,
    errorEl,
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
    // Linear by default: a log axis flattens a validation loss that rises by a fifth.
    loss: new Chart(chartsEl, { id: "loss", title: "Loss", yLabel: "loss", scale: "linear", toggle: true }),
    accuracy: new Chart(chartsEl, { id: "accuracy", title: "Accuracy", yLabel: "accuracy" }),
    lr: new Chart(chartsEl, { id: "lr", title: "Learning rate", yLabel: "lr" }),
    grad: new Chart(chartsEl, { id: "grad", title: "Gradient norms", yLabel: "‖g‖", scale: "log", toggle: true }),
    eig: new Chart(spectraEl, { id: "eigenvalues", title: "Top and bottom eigenvalues over epochs", yLabel: "λ", scale: "asinh" }),
    density: new Chart(spectraEl, { id: "density", title: "Spectral density", xLabel: "eigenvalue λ", yLabel: "density", scale: "log" }),
  };
  ctx.onLeave(() => Object.values(charts).forEach((c) => c.destroy()));

  let job = null;
  let diagnoses = [];
  let confirmingCancel = false;
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
    confirmingCancel = false;
    try {
      job = { ...job, ...(await api(`/v1/jobs/${id}/cancel`, { method: "POST" })) };
      renderHeader();
    } catch (err) {
      replace(banner, h("div", { class: "banner error" }, `Cancel refused: ${err.detail || err}`));
    }
  }

  // Cancel asks first: one stray click must not end a run of hours.
  function cancelControls() {
    if (FINISHED.includes(job.status)) return null;
    if (job.cancel_requested) return h("button", { type: "button", class: "danger", disabled: true }, "Cancelling…");
    if (!confirmingCancel) {
      return h("button", { type: "button", class: "danger", "data-testid": "cancel", onclick: () => { confirmingCancel = true; renderHeader(); } }, "Cancel");
    }
    return h(
      "span",
      { class: "confirm", "data-testid": "cancel-confirmation" },
      "Stop this job? ",
      h("button", { type: "button", class: "danger", "data-testid": "cancel-confirm", onclick: cancel }, "Yes, cancel it"),
      h("button", { type: "button", "data-testid": "cancel-keep", onclick: () => { confirmingCancel = false; renderHeader(); } }, "Keep running"),
    );
  }

  // A failed job's reason goes first, above everything else on the page.
  function renderError() {
    const failed = job.status === "failed" && job.error;
    replace(errorEl, failed ? h("pre", { class: "banner error", role: "alert", "data-testid": "job-error" }, job.error.trim().split("\n").slice(-6).join("\n")) : null);
  }

  function renderHeader() {
    const p = job.progress || {};
    const s = job.summary || {};
    const offer = job.remedy || {};
    renderError();
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
        cancelControls(),
        // Only what POST .../remedy would accept (the job's remedy offer) gets a button.
        offer.available
          ? h("button", { type: "button", class: "primary", "data-testid": "remedy", title: `resubmit with the fixes of ${offer.applies.join(", ")}`, onclick: () => remedy(null) }, "Remedy")
          : null,
      ),
      h("div", { class: "row", style: { marginTop: "8px" } }, progressBar(job), job.status === "running" && p.eta_seconds ? h("span", { class: "muted" }, `ETA ${duration(p.eta_seconds)}`) : null),
      facts([
        ["kind", job.kind],
        ["dataset", job.spec?.data?.dataset],
        ["model", job.spec?.model ? h("span", { "data-testid": "model" }, describeModel(job.spec.model)) : null],
        ["optimizer", job.spec?.optimizer ? describeOptimizer(job.spec.optimizer) : null],
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
      job.error && job.status !== "failed" ? h("p", { class: "muted", "data-testid": "job-note" }, job.error.trim().split("\n")[0]) : null,
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
    const extra = { xRange: epochRange(job), markers: epochMarkers(job, diagnoses) };
    const none = noDataText();
    charts.loss.update(splitLines("loss"), none, extra);
    charts.accuracy.update(splitLines("accuracy"), job.summary?.data?.task === "regression" ? "regression: no accuracy" : none, extra);
    charts.lr.update(m["train/lr"] ? [line(m["train/lr"], "lr (per update)", color(3))] : [], none, { xRange: extra.xRange });
    const layers = series.filter((s) => s.name.startsWith("grad/"));
    charts.grad.update(
      [
        ...(m["train/grad_norm"] ? [line(m["train/grad_norm"], "total", "#1d2330")] : []),
        ...layers.map((s, i) => line(s, s.name.slice(5), color(i + 1), { dash: [4, 3] })),
      ],
      none,
      extra,
    );
  }

  // Why a chart is empty: not yet, or never (the job ended before it logged anything).
  function noDataText() {
    if (job.status === "failed") return "no data: the job failed before logging any (the error is above)";
    if (FINISHED.includes(job.status)) return `no data: the job was ${job.status} before logging any`;
    return "no data yet";
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
    const noSpectrum = FINISHED.includes(job.status) ? "no spectrum (analysis.hessian.enabled, every_epochs)" : "no spectrum yet (analysis.hessian.every_epochs)";
    charts.eig.update(series, noSpectrum, { xRange: epochRange(job), markers: epochMarkers(job, diagnoses) });

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

  function renderDiagnoses() {
    const finished = FINISHED.includes(job.status);
    if (!diagnoses.length) {
      replace(diagEl, h("p", { class: "muted" }, finished ? "No diagnosis for this job." : "The diagnosis comes when the job finishes."));
      return;
    }
    const remedyCodes = job.remedy?.findings || [];
    replace(diagEl, diagnoses.map((d) => diagnosisCard(d, { onRemedy: finished && !d.provisional ? remedy : null, remedyCodes })));
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
    diagnoses = await api(`/v1/jobs/${id}/diagnoses`); // first: the charts mark the verdict's evidence
    if (!ctx.alive) return false;
    if (first || changed || (finished && settled < 3)) {
      await loadMetrics();
      if (first || ticks % 3 === 0 || finished) spectra = await api(`/v1/jobs/${id}/spectra`);
      renderSpectra();
    }
    if (!ctx.alive) return false;
    renderHeader();
    renderStudy();
    renderDiagnoses();
    ticks += 1;
    if (!finished) return true;
    if (settled === 0) await loadRemedies();
    // After the status turns final the worker may still be writing the diagnosis: look a few more times.
    settled += 1;
    return settled < 3 || (!diagnoses.length && job.status === "succeeded" && settled < 10);
  });
}
