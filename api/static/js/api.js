// The REST API with the user's bearer token. The token lives in this browser's localStorage only
// and goes to this origin only (fetch with a same-origin path); the page itself holds no data.

const KEY = "saddle.token";

export const token = {
  get: () => localStorage.getItem(KEY),
  set: (value) => localStorage.setItem(KEY, value.trim()),
  clear: () => localStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(`HTTP ${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }

  // The server has no such route (an older server without /v1/sweeps), not a missing object.
  get routeMissing() {
    return (this.status === 404 || this.status === 405) &&
      (this.detail === "Not Found" || this.detail === "Method Not Allowed");
  }
}

// GET/POST a path of this origin; params: {key: value | [values]} (null/undefined left out).
export async function api(path, { method = "GET", body, params } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value === null || value === undefined || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(key, v);
  }
  const headers = { Authorization: `Bearer ${token.get() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!res.ok) {
    let detail = res.statusText;
    try {
      detail = (await res.json()).detail ?? detail;
    } catch {
      /* not JSON: keep the status text */
    }
    if (res.status === 401) window.dispatchEvent(new CustomEvent("saddle:unauthorized", { detail }));
    throw new ApiError(res.status, detail);
  }
  return res.status === 204 ? null : res.json();
}
