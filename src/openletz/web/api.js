// The API as the page uses it: the key kept in this browser, and calls that
// turn any error into an ApiError carrying the server's own message.

const KEY_NAME = "openletz.apiKey";

export class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export const key = {
  get() {
    try {
      return localStorage.getItem(KEY_NAME);
    } catch {
      return null; // storage disabled: the page asks again
    }
  },
  set(value) {
    localStorage.setItem(KEY_NAME, value);
  },
  forget() {
    localStorage.removeItem(KEY_NAME);
  },
};

function retryAfterSeconds(response) {
  const value = response.headers.get("Retry-After");
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const when = Date.parse(value); // an HTTP date
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

export async function call(method, path, { body, apiKey = key.get(), signal } = {}) {
  const headers = { Accept: "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The server cannot be reached. Is openletz still running?");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON: a proxy's error page, say
  }
  if (!response.ok) {
    const message =
      (data && (data.message || data.error)) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, retryAfterSeconds(response));
  }
  return data;
}

export const api = {
  health: () => call("GET", "/health", { apiKey: null }),
  check: (apiKey) => call("GET", "/images?limit=1", { apiKey }),
  create: (fields) => call("POST", "/images", { body: fields }),
  get: (id, signal) => call("GET", `/images/${encodeURIComponent(id)}`, { signal }),
  mine: (page, limit) =>
    call("GET", `/images?page=${page}&limit=${limit}&sortBy=createdAt&sortOrder=DESC`),
  public: (page, limit) => call("GET", `/public/images?page=${page}&limit=${limit}`),
  interrupt: (id) => call("PUT", `/images/${encodeURIComponent(id)}/interruption`),
  setPrivacy: (id, privacy) =>
    call("PUT", `/images/${encodeURIComponent(id)}/privacy`, { body: { privacy } }),
  remove: (id) => call("DELETE", `/images/${encodeURIComponent(id)}`),
};

export const TERMINAL = new Set(["ready", "failed", "interrupted"]);
