// Charts on uPlot (vendored under /static/vendor, MIT). One class keeps a uPlot instance per chart
// and only swaps its data while the set of series is unchanged, so live updates do not flicker.

import uPlot from "../vendor/uPlot.esm.js";
import { fmt, h, replace } from "./dom.js";

export const SPLIT_COLORS = { train: "#2f6fdb", val: "#dd6b20", test: "#2f855a" };
const PALETTE = ["#2f6fdb", "#dd6b20", "#2f855a", "#9f3ab5", "#c53030", "#00838f", "#8d6e63", "#5c6bc0", "#a0a000", "#e91e63"];
export const color = (i) => PALETTE[i % PALETTE.length];

const HEIGHT = 240;

// scale: "linear" | "log" (non-positive values dropped) | "asinh" (signed, spans decades: eigenvalues)
function yScale(scale, linthresh) {
  if (scale === "log") return { distr: 3 };
  if (scale === "asinh") return { distr: 4, asinh: linthresh };
  return {};
}

// asinh is linear within ±linthresh and logarithmic beyond: a few hundredths of the largest
// magnitude keeps small eigenvalues' signs visible without a tick for every decade down to zero.
function linthreshOf(series) {
  const peak = Math.max(0, ...series.flatMap((s) => s.y.filter((v) => v !== null && Number.isFinite(v)).map(Math.abs)));
  if (!peak) return 1;
  return Number((peak / 200).toPrecision(1));
}

// Axis ticks: 3 significant digits without trailing zeros, exponents only for tiny or huge values.
export function tick(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(0);
  return String(Number(v.toPrecision(3)));
}

function cleanY(values, scale) {
  return values.map((v) => (v === null || v === undefined || !Number.isFinite(v) || (scale === "log" && v <= 0) ? null : v));
}

// A remembered linear/log choice per chart (localStorage), for charts built with `toggle: true`.
const SCALE_KEY = (id) => `saddle.scale.${id}`;

export class Chart {
  // opts: {title, xLabel, yLabel, scale, toggle (linear/log buttons, remembered), xScale,
  // xValues (axis formatter), points (draw markers only)}
  constructor(container, opts) {
    this.opts = opts;
    this.plot = null;
    this.key = "";
    this.series = [];
    this.extra = {};
    this.scale = (opts.toggle && localStorage.getItem(SCALE_KEY(opts.id))) || opts.scale || "linear";
    this.body = h("div", { class: "plot" });
    this.caption = h("div", { class: "markers", "data-testid": "markers" });
    this.title = h("h3", {}, opts.title);
    this.el = h("div", { class: "chart", "data-chart": opts.id || opts.title }, h("div", { class: "chart-head" }, this.title, opts.toggle ? this.toggle() : null), this.body, this.caption);
    this.el.setAttribute("data-scale", this.scale);
    container.append(this.el);
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: HEIGHT });
    });
    this.resize.observe(this.el);
    this.empty();
  }

  toggle() {
    this.toggleEl = h("span", { class: "scale-toggle", role: "group", "aria-label": "y scale" });
    this.renderToggle();
    return this.toggleEl;
  }

  renderToggle() {
    replace(
      this.toggleEl,
      ["linear", "log"].map((s) =>
        h("button", { type: "button", class: s === this.scale ? "active" : "", "data-scale": s, "aria-pressed": String(s === this.scale), onclick: () => this.setScale(s) }, s),
      ),
    );
    if (this.el) this.el.setAttribute("data-scale", this.scale);
  }

  setScale(scale) {
    this.scale = scale;
    localStorage.setItem(SCALE_KEY(this.opts.id), scale);
    this.renderToggle();
    this.key = ""; // rebuild with the other scale
    this.update(this.series, this.emptyText, this.extra);
  }

  width() {
    return Math.max(260, this.body.clientWidth || this.el.clientWidth - 24);
  }

  // An empty chart collapses to one line (title and why it is empty) instead of taking a card's room.
  empty(text = "no data yet") {
    this.destroyPlot();
    this.el.classList.add("collapsed");
    replace(this.caption);
    replace(this.body, h("div", { class: "empty" }, text));
  }

  // series: [{label, x: number[], y: number[], color?, dash?, points?}] (x ascending)
  // extra: {markers: [{x, label, color?, kind?}] vertical lines named under the chart, xRange: [min, max]}
  update(series, emptyText, extra = {}) {
    this.series = series;
    this.emptyText = emptyText;
    this.extra = extra;
    this.el.setAttribute("data-scale", this.scale);
    if (extra.xRange) this.el.setAttribute("data-x-range", extra.xRange.join(","));
    const scale = this.scale;
    const shown = series.filter((s) => s.x.length && s.y.some((v) => v !== null && Number.isFinite(v)));
    if (!shown.length) return this.empty(emptyText);
    this.el.classList.remove("collapsed");
    const data = uPlot.join(shown.map((s) => [s.x, cleanY(s.y, scale)]));
    this.linthresh = scale === "asinh" ? linthreshOf(shown) : 1;
    this.markers = (extra.markers || []).filter((m) => m.x !== null && m.x !== undefined && Number.isFinite(m.x));
    this.renderCaption();
    const key = `${shown.map((s) => s.label).join("|")}|${this.linthresh}|${scale}|${extra.xRange || ""}`;
    if (this.plot && key === this.key) {
      this.plot.setData(data);
      return;
    }
    this.destroyPlot();
    replace(this.body);
    this.key = key;
    this.plot = new uPlot(this.options(shown), data, this.body);
  }

  renderCaption() {
    replace(
      this.caption,
      this.markers.map((m) => h("span", { class: "marker", "data-marker": m.kind || "mark", "data-x": m.x, style: { borderColor: m.color || "#555" } }, m.label)),
    );
  }

  // Vertical dashed lines at the markers' x, drawn over the series.
  drawMarkers(u) {
    const { ctx } = u;
    const top = u.bbox.top;
    const bottom = u.bbox.top + u.bbox.height;
    ctx.save();
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    for (const m of this.markers || []) {
      const x = u.valToPos(m.x, "x", true);
      if (!Number.isFinite(x)) continue;
      ctx.strokeStyle = m.color || "#555";
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, bottom);
      ctx.stroke();
    }
    ctx.restore();
  }

  options(shown) {
    const { xLabel = "epoch", yLabel = "", xScale = {}, xValues, points } = this.opts;
    const xRange = this.extra.xRange;
    return {
      width: this.width(),
      height: HEIGHT,
      scales: { x: { time: false, ...xScale, ...(xRange ? { range: () => xRange } : {}) }, y: yScale(this.scale, this.linthresh) },
      axes: [
        { label: xLabel, labelSize: 20, size: 36, ...(xValues ? { values: xValues, splits: this.opts.xSplits } : { values: (_, ticks) => ticks.map(tick) }) },
        { label: yLabel, labelSize: 20, size: 60, values: (_, ticks) => ticks.map(tick) },
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      hooks: { draw: [(u) => this.drawMarkers(u)] },
      series: [
        { label: xLabel, value: xValues ? (_, v) => (v === null ? "–" : xValues(null, [v])[0]) : (_, v) => fmt(v, 3) },
        ...shown.map((s, i) => {
          const stroke = s.color || color(i);
          const opt = { label: s.label, stroke, width: 1.6, spanGaps: true, value: (_, v) => fmt(v, 4) };
          if (s.dash) opt.dash = s.dash;
          if (points) Object.assign(opt, { paths: () => null, points: { show: true, size: 8, fill: stroke } });
          // Otherwise uPlot draws markers only where they fit: a series of one or two epochs still shows.
          else if (s.points) opt.points = { show: true, size: 6, fill: stroke };
          return opt;
        }),
      ],
    };
  }

  destroyPlot() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.key = "";
  }

  destroy() {
    this.resize.disconnect();
    this.destroyPlot();
    this.el.remove();
  }
}
