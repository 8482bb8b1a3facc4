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

export class Chart {
  // opts: {title, xLabel, yLabel, scale, xScale, xValues (axis formatter), points (draw markers only)}
  constructor(container, opts) {
    this.opts = opts;
    this.plot = null;
    this.key = "";
    this.body = h("div", { class: "plot" });
    this.el = h("div", { class: "chart", "data-chart": opts.id || opts.title }, h("h3", {}, opts.title), this.body);
    container.append(this.el);
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: HEIGHT });
    });
    this.resize.observe(this.el);
    this.empty();
  }

  width() {
    return Math.max(260, this.body.clientWidth || this.el.clientWidth - 24);
  }

  empty(text = "no data yet") {
    this.destroyPlot();
    replace(this.body, h("div", { class: "empty" }, text));
  }

  // series: [{label, x: number[], y: number[], color?, dash?, points?}] (x ascending)
  update(series, emptyText) {
    const { scale = "linear" } = this.opts;
    const shown = series.filter((s) => s.x.length && s.y.some((v) => v !== null && Number.isFinite(v)));
    if (!shown.length) return this.empty(emptyText);
    const data = uPlot.join(shown.map((s) => [s.x, cleanY(s.y, scale)]));
    this.linthresh = scale === "asinh" ? linthreshOf(shown) : 1;
    const key = `${shown.map((s) => s.label).join("|")}|${this.linthresh}`;
    if (this.plot && key === this.key) {
      this.plot.setData(data);
      return;
    }
    this.destroyPlot();
    replace(this.body);
    this.key = key;
    this.plot = new uPlot(this.options(shown), data, this.body);
  }

  options(shown) {
    const { xLabel = "epoch", yLabel = "", scale = "linear", xScale = {}, xValues, points } = this.opts;
    return {
      width: this.width(),
      height: HEIGHT,
      scales: { x: { time: false, ...xScale }, y: yScale(scale, this.linthresh) },
      axes: [
        { label: xLabel, labelSize: 20, size: 36, ...(xValues ? { values: xValues, splits: this.opts.xSplits } : { values: (_, ticks) => ticks.map(tick) }) },
        { label: yLabel, labelSize: 20, size: 60, values: (_, ticks) => ticks.map(tick) },
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
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
