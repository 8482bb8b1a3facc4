// Entry point: the token, hash routes (#/, #/jobs/ID, #/sweeps, #/sweeps/ID) and polling that
// stops when a view is left and pauses while the tab is hidden.

import { api, ApiError, token } from "./api.js";
import { h, replace } from "./dom.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { sweepsView, sweepView } from "./sweeps.js";

const view = document.getElementById("view");
const session = document.getElementById("session");
let mounted = null;

const ROUTES = [
  [/^#\/jobs\/([0-9a-f]+)$/, jobView, "jobs"],
  [/^#\/sweeps\/([0-9a-f]+)$/, sweepView, "sweeps"],
  [/^#\/sweeps$/, sweepsView, "sweeps"],
  [/^(#\/?)?$/, jobsView, "jobs"],
];

// What a view gets: `every(ms, fn)` runs fn now and then ms after each run ends (no overlap)
// until fn returns false or the view is left; errors show in a banner and polling goes on.
class Context {
  constructor(el) {
    this.el = el;
    this.alive = true;
    this.timers = new Set();
    this.cleanups = [];
  }

  every(ms, fn) {
    const tick = async () => {
      if (!this.alive) return;
      if (document.hidden) return this.later(tick, ms);
      let again = true;
      try {
        again = (await fn()) !== false;
        this.clearError();
      } catch (err) {
        if (!this.alive) return;
        this.showError(err);
        if (err instanceof ApiError && err.status === 404) again = false; // gone: asking again will not help
      }
      if (again) this.later(tick, ms);
    };
    tick();
  }

  later(fn, ms) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  onLeave(fn) {
    this.cleanups.push(fn);
  }

  showError(err) {
    if (err instanceof ApiError && err.status === 401) return; // the token form takes over
    const text = err instanceof ApiError ? `The API refused: ${err.detail} (HTTP ${err.status})` : `Cannot reach the API: ${err.message}`;
    let banner = this.el.querySelector(":scope > .banner.error.poll");
    if (!banner) {
      banner = h("div", { class: "banner error poll", role: "alert" });
      this.el.prepend(banner);
    }
    replace(banner, text);
  }

  clearError() {
    const banner = this.el.querySelector(":scope > .banner.error.poll");
    if (banner) banner.remove();
  }

  stop() {
    this.alive = false;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const fn of this.cleanups) fn();
  }
}

function route() {
  if (mounted) mounted.stop();
  mounted = null;
  renderSession();
  if (!token.get()) return tokenForm();
  const [path, query] = window.location.hash.split("?");
  const params = Object.fromEntries(new URLSearchParams(query || ""));
  for (const [pattern, render, nav] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
    replace(view);
    mounted = new Context(view);
    render(view, { id: match[1], ...params }, mounted);
    return;
  }
  replace(view, h("div", { class: "banner error" }, "No such page. "), h("a", { href: "#/" }, "All jobs"));
}

function renderSession() {
  const current = token.get();
  if (!current) return replace(session);
  replace(
    session,
    h("span", { class: "muted", title: "kept in this browser's localStorage" }, `token …${current.slice(-4)}`),
    h("button", { type: "button", onclick: () => { token.clear(); route(); } }, "Sign out"),
  );
}

function tokenForm(message) {
  renderSession();
  if (mounted) mounted.stop();
  mounted = null;
  const input = h("input", {
    class: "token mono", type: "password", name: "token", autocomplete: "off", placeholder: "sdl_…", "data-testid": "token-input",
  });
  const status = h("p", { class: message ? "error" : "muted" }, message || "");
  const form = h(
    "form",
    {
      class: "panel",
      onsubmit: async (event) => {
        event.preventDefault();
        const value = input.value.trim();
        if (!value) return;
        token.set(value);
        try {
          await api("/v1/jobs", { params: { limit: 1 } }); // check it before showing anything
          route();
        } catch (err) {
          token.clear();
          replace(status, err instanceof ApiError && err.status === 401 ? `The API refused this token: ${err.detail}.` : `Cannot check the token: ${err.message}`);
          status.className = "error";
        }
      },
    },
    h("h1", {}, "Sign in with an API token"),
    h(
      "p",
      { class: "muted" },
      "Create one with ", h("code", {}, "saddle token create --project NAME"),
      ". It stays in this browser (localStorage) and is sent only to this server, as the bearer token of its API calls.",
    ),
    h("div", { class: "row" }, input, h("button", { class: "primary", type: "submit", "data-testid": "token-save" }, "Save")),
    status,
  );
  replace(view, form);
  input.focus();
}

// The API says why (a token it does not know, or a revoked one); the form repeats its words.
window.addEventListener("saddle:unauthorized", (event) => {
  token.clear();
  tokenForm(`The API refused the stored token: ${event.detail}. Paste a valid one.`);
});
window.addEventListener("hashchange", route);
route();
