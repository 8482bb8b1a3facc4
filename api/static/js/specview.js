// The parts of a JobSpec that apply to it, for display: the same rules as saddle/specview.py
// (`saddle show`). A stored spec carries every field with its default, so an MLP has `channels`
// (cnn only) and adam has `momentum` (sgd and rmsprop only); shown as they are, they suggest
// settings the run never used.

const OPTIMIZER_FIELDS = {
  sgd: ["lr", "momentum", "nesterov", "weight_decay"],
  adam: ["lr", "betas", "eps", "weight_decay"],
  adamw: ["lr", "betas", "eps", "weight_decay"],
  rmsprop: ["lr", "momentum", "eps", "weight_decay"],
  adagrad: ["lr", "eps", "weight_decay"],
};

function pick(obj, keys) {
  return Object.fromEntries(keys.filter((k) => k in obj).map((k) => [k, obj[k]]));
}

// Stored specs come back with their keys in the database's order; these read best first.
const MODEL_ORDER = ["arch", "hidden", "channels", "activation", "norm", "norm_position", "dropout", "init"];

export function modelView(model = {}) {
  const arch = model.arch || "mlp";
  const ordered = [...MODEL_ORDER, ...Object.keys(model).filter((k) => !MODEL_ORDER.includes(k))];
  const keep = pick(model, arch === "linear" ? ["arch", "init"] : ordered);
  if (arch !== "cnn") delete keep.channels;
  if ((keep.norm || "none") === "none") delete keep.norm_position;
  const init = { ...(keep.init || {}) };
  if (init.weights !== "normal") delete init.std;
  if (init.bias === null || init.bias === undefined) delete init.bias;
  if (!Object.keys(init).length || (Object.keys(init).length === 1 && init.weights === "default")) delete keep.init;
  else keep.init = init;
  return keep;
}

export function optimizerView(optimizer = {}) {
  const name = optimizer.name || "sgd";
  return { name, ...pick(optimizer, OPTIMIZER_FIELDS[name] || Object.keys(optimizer)) };
}

// "mlp hidden [64, 64] relu dropout 0.1": the applicable model fields in one line.
export function describeModel(model) {
  const view = modelView(model);
  const parts = [view.arch];
  for (const [key, value] of Object.entries(view)) {
    if (key === "arch") continue;
    parts.push(`${key} ${typeof value === "object" ? JSON.stringify(value) : value}`);
  }
  return parts.join(" · ");
}

export function describeOptimizer(optimizer) {
  const view = optimizerView(optimizer);
  return [view.name, ...Object.entries(view).filter(([k]) => k !== "name").map(([k, v]) => `${k} ${Array.isArray(v) ? v.join("/") : v}`)].join(" · ");
}
